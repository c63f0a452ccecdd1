package main

import (
	"fmt"
	"io"
	"runtime"
	"runtime/debug"

	"github.com/smarthost/smarthost/dkim"
)

// Set with -ldflags "-X main.version=... -X main.commit=...".
var (
	version = "dev"
	commit  = ""
)

func versionCmd(stdout io.Writer) int {
	c := commit
	if c == "" {
		c = "unknown"
		if bi, ok := debug.ReadBuildInfo(); ok {
			for _, s := range bi.Settings {
				if s.Key == "vcs.revision" {
					c = s.Value
				}
			}
		}
	}
	fmt.Fprintf(stdout, "smarthost %s\ncommit %s\n%s %s/%s\nDKIM RSA signatures: %s\n", version, c, runtime.Version(), runtime.GOOS, runtime.GOARCH, dkim.RSABackend)
	return exitOK
}
