package main

import (
	"net/http"
	"time"
)

// probeReadyCmd is a healthcheck for images without a shell or curl: it
// exits 0 when URL answers 200.
func probeReadyCmd(c cmdIO, args []string) int {
	fs := c.flags("probe-ready", "URL\n\nExits 0 when URL (a /readyz) answers 200, 1 otherwise: a healthcheck for images without curl.")
	pos, code, done := fs.parse(args)
	if done {
		return code
	}
	stderr := c.stderr
	if len(pos) != 1 {
		fs.Usage()
		return exitBadConfig
	}
	args = pos
	hc := http.Client{Timeout: 5 * time.Second}
	resp, err := hc.Get(args[0])
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
