package main

import (
	"fmt"
	"runtime"
	"runtime/debug"

	"github.com/smarthost/smarthost/cmd/internal/cmdline"
	"github.com/smarthost/smarthost/dkim"
)

func versionCmd(c cmdline.IO, args []string) int {
	if _, code, done := c.Flags("version", "\n\nPrints the version, the commit and its time, the Go version and the DKIM RSA backend.").ParseArgs(args); done {
		return code
	}
	stdout := c.Stdout
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
	when := built
	if when == "" {
		when = "unknown"
	}
	fmt.Fprintf(stdout, "smarthost %s\ncommit %s\nbuilt %s\n%s %s/%s\nDKIM RSA signatures: %s\n", version, rev, when, runtime.Version(), runtime.GOOS, runtime.GOARCH, dkim.RSABackend)
	return cmdline.OK
}
