package main

import (
	"context"
	"time"

	"github.com/smarthost/smarthost/relay/daemon"
)

// probeReadyCmd is a healthcheck for images without a shell or curl: it
// exits 0 when URL answers 200.
func probeReadyCmd(c cmdIO, args []string) int {
	fs := c.flags("probe-ready", "URL\n\nExits 0 when URL (a /readyz) answers 200, 1 otherwise: a healthcheck for images without curl.")
	pos, code, done := fs.parse(args)
	if done {
		return code
	}
	if len(pos) != 1 {
		fs.Usage()
		return exitBadConfig
	}
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	if err := daemon.Ready(ctx, pos[0]); err != nil {
		errorf(c.stderr, "probe-ready: %v", err)
		return exitRuntime
	}
	return exitOK
}
