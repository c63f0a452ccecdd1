package main

import (
	"errors"
	"fmt"
	"io"

	"github.com/smarthost/smarthost/cmd/internal/cmdline"
	"github.com/smarthost/smarthost/configs"
	"github.com/smarthost/smarthost/relay/daemon"
)

// Set by scripts/build.sh with -ldflags "-X main.version=... -X
// main.commit=... -X main.built=...". built is the commit's time, not the
// clock's, so that one commit always gives the same bytes.
var (
	version = "dev"
	commit  = ""
	built   = ""
)

// fail says what went wrong with the configuration at path, or with the
// command (what, if not ""), and returns the exit code: OK when err is nil,
// BadConfig for a mistake in the configuration, Runtime for anything else.
func fail(c cmdline.IO, path, what string, err error) int {
	var probs configs.Problems
	var bad *daemon.ConfigError
	switch {
	case err == nil:
		return cmdline.OK
	case errors.As(err, &probs):
		configs.Print(c.Stderr, path, err)
		return cmdline.BadConfig
	case what != "":
		err = fmt.Errorf("%s: %w", what, err)
	}
	cmdline.Errorf(c.Stderr, "%v", err)
	if errors.As(err, &bad) {
		return cmdline.BadConfig
	}
	return cmdline.Runtime
}

// resolverFlag is --resolver, which dkim check and check-config take.
func resolverFlag(fs cmdline.Flags) *string {
	return fs.String("resolver", "", "DNS server to ask, HOST or HOST:PORT (default: the system's resolver)")
}

// printFindings prints what probes found, a line each, and returns OK,
// Runtime when one failed, or BadConfig when a key file cannot be read
// (said on stderr).
func printFindings(stdout, stderr io.Writer, findings []daemon.Finding) int {
	code := cmdline.OK
	for _, f := range findings {
		if f.Unreadable {
			cmdline.Errorf(stderr, "%s", f)
			code = cmdline.BadConfig
			continue
		}
		fmt.Fprintln(stdout, f)
		if f.Failed {
			code = max(code, cmdline.Runtime)
		}
	}
	return code
}
