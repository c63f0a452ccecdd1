package main

import (
	"context"
	"time"

	"github.com/smarthost/smarthost/cmd/internal/cmdline"
	"github.com/smarthost/smarthost/relay/daemon"
)

// probeReadyCmd is a healthcheck for images without a shell or curl: it
// exits 0 when URL answers 200.
func probeReadyCmd(c cmdline.IO, args []string) int {
	fs := c.Flags("probe-ready", "URL\n\nExits 0 when URL (a /readyz) answers 200, 1 otherwise: a healthcheck for images without curl.")
	pos, code, done := fs.ParseArgs(args)
	if done || len(pos) != 1 {
		return fs.BadArgs(code, done)
	}
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	return fail(c, "", "probe-ready", daemon.Ready(ctx, pos[0]))
}
