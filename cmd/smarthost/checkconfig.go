package main

import (
	"context"
	"fmt"

	"github.com/smarthost/smarthost/cmd/internal/cmdline"
	"github.com/smarthost/smarthost/configs"
	"github.com/smarthost/smarthost/relay/daemon"
)

func checkConfigCmd(c cmdline.IO, args []string) int {
	fs := c.Flags("check-config", "[--config FILE] [--probe [--resolver HOST[:PORT]]]\n\nChecks everything that can be checked offline and prints every problem with its\nYAML path and line (exit 2); --probe also connects to LDAP, Redis and each upstream,\nand checks each DKIM key's published record as smarthost dkim check does\n(exit 1 if one fails).")
	path := fs.String("config", "", "configuration file")
	probe := fs.Bool("probe", false, "also connect to LDAP, Redis and each upstream, check the DKIM records, and report")
	resolver := resolverFlag(fs)
	if _, code, done := fs.ParseArgs(args); done {
		return code
	}
	stdout := c.Stdout
	f, source, code := fs.ConfigTo(stdout, *path)
	if f == nil {
		return code
	}
	a, probs := daemon.Assemble(f)
	if len(probs) > 0 {
		configs.Print(stdout, source, probs)
		return cmdline.BadConfig
	}
	for _, w := range a.Warnings() {
		fmt.Fprintf(stdout, "warning: %s\n", w)
	}
	fmt.Fprintf(stdout, "%s: configuration is valid\n", configs.SourceName(source))
	if !*probe {
		return cmdline.OK
	}
	if printFindings(stdout, stdout, a.Probe(context.Background(), *resolver)) != cmdline.OK {
		return cmdline.Runtime
	}
	return cmdline.OK
}
