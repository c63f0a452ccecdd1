// Command smarthost is an authenticated mail submission relay (RFC 6409).
// This package is the composition root: the only one that knows every other.
package main

import (
	"fmt"
	"io"
	"os"
	"strings"
)

// Exit codes, as docs/cli.md lists them.
const (
	exitOK        = 0
	exitRuntime   = 1
	exitBadConfig = 2
)

const usage = `usage: smarthost COMMAND [flags]

commands:
  serve                             run the relay
  check-config [--probe]            validate a configuration; --probe also connects to backends
  passwd                            read a password, print a bcrypt hash for the users file
  dkim keygen|dns|check             make a key and print its DNS record; print every configured key's;
                                    check that each key's published record verifies its signatures
  queue list|show|retry|delete|handoff
                                    inspect and act on the spool; hand a stopped node's spool to its peers
  drain                             ask the running relay to hand its queue to its peers and exit
  limits show USER                  a user's class, limits, what is left and when it refills
  probe-ready URL                   exit 0 when URL (a /readyz) answers 200: a container healthcheck
  version                           print version, commit and Go version

Every command that reads a configuration takes --config FILE; without it,
$SMARTHOST_CONFIG, else /etc/smarthost/smarthost.yaml if it exists, else
the embedded quickstart (configs/quickstart.yaml).

smarthost COMMAND --help tells more.
`

func main() {
	c := cmdIO{stdin: os.Stdin, stdout: os.Stdout, stderr: os.Stderr, getenv: os.Getenv}
	os.Exit(run(c, os.Args[1:]))
}

func run(c cmdIO, args []string) int {
	if len(args) == 0 {
		fmt.Fprint(c.stderr, usage)
		return exitBadConfig
	}
	cmd, rest := args[0], args[1:]
	switch cmd {
	case "serve":
		return serveCmd(c, rest)
	case "check-config":
		return checkConfigCmd(c, rest)
	case "passwd":
		return passwdCmd(c, rest)
	case "dkim":
		return dispatch(c, "dkim", dkimVerbs, rest)
	case "queue":
		return dispatch(c, "queue", queueVerbs, rest)
	case "limits":
		return dispatch(c, "limits", limitsVerbs, rest)
	case "drain":
		return drainCmd(c, rest)
	case "probe-ready":
		return probeReadyCmd(c, rest)
	case "version", "--version", "-version":
		return versionCmd(c, rest)
	case "help", "-h", "--help", "-help":
		fmt.Fprint(c.stdout, usage)
		return exitOK
	}
	fmt.Fprintf(c.stderr, "smarthost: unknown command %q\n\n%s", cmd, usage)
	return exitBadConfig
}

func errorf(w io.Writer, format string, args ...any) {
	fmt.Fprintf(w, "smarthost: "+strings.TrimSuffix(format, "\n")+"\n", args...)
}
