package main

import (
	"fmt"
	"runtime"
	"runtime/debug"

	"github.com/smarthost/smarthost/dkim"
)

// Set with -ldflags "-X main.version=... -X main.commit=...".
var (
	version = "dev"
	commit  = ""
)

func versionCmd(c cmdIO, args []string) int {
	if _, code, done := c.flags("version", "\n\nPrints the version, the commit, the Go version and the DKIM RSA backend.").parse(args); done {
		return code
	}
	stdout := c.stdout
	rev := commit
	if rev == "" {
		rev = "unknown"
		if bi, ok := debug.ReadBuildInfo(); ok {
			for _, s := range bi.Settings {
				if s.Key == "vcs.revision" {
					rev = s.Value
				}
			}
		}
	}
	fmt.Fprintf(stdout, "smarthost %s\ncommit %s\n%s %s/%s\nDKIM RSA signatures: %s\n", version, rev, runtime.Version(), runtime.GOOS, runtime.GOARCH, dkim.RSABackend)
	return exitOK
}
