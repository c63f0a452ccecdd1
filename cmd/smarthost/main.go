// Command smarthost is an authenticated mail submission relay (RFC 6409).
// This package is its command line: a file per command, which parses the
// flags, calls a package (relay/daemon runs the relay) and prints.
package main

import (
	"fmt"
	"os"

	"github.com/smarthost/smarthost/cmd/internal/cmdline"
)

// overview is what smarthost without a command, or with help, prints.
const overview = `usage: smarthost COMMAND [flags]

commands:
  serve                             run the relay
  check-config [--probe]            validate a configuration; --probe also connects to backends
  passwd                            read a password, print a bcrypt hash for the users file
  dkim keygen|dns|check             make a key and print its DNS record; print every configured key's;
                                    check that each key's published record verifies its signatures
  queue list|show|retry|hold|release|delete|bounce|handoff
                                    inspect and act on the queue (by ID or filter); hand a stopped node's spool to its peers
  trace QUERY [--since D] [--json]  the story of a message (queue ID, Message-ID or address) from the history
  drain                             ask the running relay to hand its queue to its peers and exit
  limits show USER | --upstream NAME
                                    a user's class and limits, or an upstream's shared budget: what is left and when it refills
  probe-ready URL                   exit 0 when URL (a /readyz) answers 200: a container healthcheck
  version                           print version, commit and Go version

Every command that reads a configuration takes --config FILE; without it,
$SMARTHOST_CONFIG, else /etc/smarthost/smarthost.yaml if it exists, else
the embedded quickstart (configs/quickstart.yaml).

smarthost COMMAND --help tells more.
`

func main() {
	c := cmdline.IO{Stdin: os.Stdin, Stdout: os.Stdout, Stderr: os.Stderr, Getenv: os.Getenv}
	os.Exit(execute(c, os.Args[1:]))
}

func execute(c cmdline.IO, args []string) int {
	commands := map[string]func(cmdline.IO, []string) int{
		"serve": serveCmd, "check-config": checkConfigCmd, "passwd": passwdCmd, "drain": drainCmd,
		"dkim": cmdline.Verbs("dkim", dkimVerbs), "queue": cmdline.Verbs("queue", queueVerbs), "limits": cmdline.Verbs("limits", limitsVerbs),
		"probe-ready": probeReadyCmd, "trace": traceCmd, "version": versionCmd, "--version": versionCmd, "-version": versionCmd,
	}
	if len(args) == 0 {
		fmt.Fprint(c.Stderr, overview)
		return cmdline.BadConfig
	}
	if cmd, ok := commands[args[0]]; ok {
		return cmd(c, args[1:])
	}
	switch args[0] {
	case "help", "-h", "--help", "-help":
		fmt.Fprint(c.Stdout, overview)
		return cmdline.OK
	}
	fmt.Fprintf(c.Stderr, "smarthost: unknown command %q\n\n%s", args[0], overview)
	return cmdline.BadConfig
}
