// Command smarthost is an authenticated mail submission relay (RFC 6409).
// This package is the composition root: the only one that knows every other.
package main

import (
	"flag"
	"fmt"
	"io"
	"net/http"
	"os"
	"strings"
	"time"
)

// Exit codes of the contract.
const (
	exitOK        = 0
	exitRuntime   = 1
	exitBadConfig = 2
)

const usage = `usage: smarthost COMMAND [flags]

commands:
  serve [--config FILE]             run the relay (no --config: the embedded quickstart)
  check-config --config FILE [--probe]
                                    validate a configuration; --probe also connects to backends
  passwd                            read a password, print a bcrypt hash for the users file
  dkim keygen --domain D --selector S [--algo rsa2048|rsa4096|ed25519] [--out DIR]
  dkim dns --config FILE            print the DNS TXT records of every configured key
  queue list|show ID|retry ID|delete ID --config FILE
  limits show USER --config FILE    a user's class, limits, what is left and when it refills
  probe-ready URL                   exit 0 when URL (a /readyz) answers 200: a container healthcheck
  version                           print version, commit and Go version
`

func main() {
	os.Exit(run(os.Args[1:], os.Stdin, os.Stdout, os.Stderr))
}

func run(args []string, stdin io.Reader, stdout, stderr io.Writer) int {
	if len(args) == 0 {
		fmt.Fprint(stderr, usage)
		return exitBadConfig
	}
	cmd, rest := args[0], args[1:]
	switch cmd {
	case "serve":
		return serveCmd(rest, stderr)
	case "check-config":
		return checkConfigCmd(rest, stdout, stderr)
	case "passwd":
		return passwdCmd(rest, stdin, stdout, stderr)
	case "dkim":
		return dkimCmd(rest, stdout, stderr)
	case "queue":
		return queueCmd(rest, stdout, stderr)
	case "limits":
		return limitsCmd(rest, stdout, stderr)
	case "probe-ready":
		return probeReadyCmd(rest, stderr)
	case "version", "--version", "-version":
		return versionCmd(stdout)
	case "help", "-h", "--help":
		fmt.Fprint(stdout, usage)
		return exitOK
	}
	fmt.Fprintf(stderr, "smarthost: unknown command %q\n\n%s", cmd, usage)
	return exitBadConfig
}

// parseFlags parses flags that may come before or after positional
// arguments ("queue show ID --config F"), which the flag package alone does
// not allow.
func parseFlags(fs *flag.FlagSet, args []string) ([]string, error) {
	var pos []string
	for {
		if err := fs.Parse(args); err != nil {
			return nil, err
		}
		args = fs.Args()
		if len(args) == 0 {
			return pos, nil
		}
		pos = append(pos, args[0])
		args = args[1:]
	}
}

func newFlags(name string, stderr io.Writer) *flag.FlagSet {
	fs := flag.NewFlagSet("smarthost "+name, flag.ContinueOnError)
	fs.SetOutput(stderr)
	return fs
}

func errorf(w io.Writer, format string, args ...any) {
	fmt.Fprintf(w, "smarthost: "+strings.TrimSuffix(format, "\n")+"\n", args...)
}

// probeReadyCmd is a healthcheck for images without a shell or curl: it
// exits 0 when URL answers 200.
func probeReadyCmd(args []string, stderr io.Writer) int {
	if len(args) != 1 {
		errorf(stderr, "usage: smarthost probe-ready URL")
		return exitBadConfig
	}
	c := http.Client{Timeout: 5 * time.Second}
	resp, err := c.Get(args[0])
	if err != nil {
		errorf(stderr, "probe-ready: %v", err)
		return exitRuntime
	}
	resp.Body.Close()
	if resp.StatusCode != http.StatusOK {
		errorf(stderr, "probe-ready: %s", resp.Status)
		return exitRuntime
	}
	return exitOK
}
