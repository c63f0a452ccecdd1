package main

import (
	"context"
	"fmt"
	"time"

	"github.com/smarthost/smarthost/configs"
	"github.com/smarthost/smarthost/relay/daemon"
)

const handoffUsage = "[--config FILE] [--to NAME] [--timeout 5m]\n\n" +
	"Hands every message in the spool of a stopped relay (queue.dir) to the peers of\n" +
	"queue.handoff.upstreams, or to the upstream --to names; 0 when all are handed off,\n" +
	"1 when some are left (they stay in the spool)."

// queueHandoff is `smarthost queue handoff`: drain, for the spool of a node
// that is gone.
func queueHandoff(c cmdIO, args []string) int {
	fs := c.flags("queue handoff", handoffUsage)
	path := fs.String("config", "", "configuration file")
	to := fs.String("to", "", "hand to this upstream only (default: queue.handoff.upstreams)")
	timeout := fs.Duration("timeout", 5*time.Minute, "how long to keep trying")
	if _, code, done := fs.parse(args); done {
		return code
	}
	f, source, code := fs.config(*path)
	if f == nil {
		return code
	}
	ctx, cancel := context.WithTimeout(context.Background(), *timeout)
	defer cancel()
	log := daemon.NewLogger(configs.Log{Format: "text", Level: "info"}, c.stderr)
	handed, left, err := daemon.Handoff(ctx, f, *to, log)
	if err != nil {
		return fail(c, source, "queue handoff", err)
	}
	fmt.Fprintf(c.stdout, "%d message(s) handed off, %d left\n", handed, left)
	if left > 0 {
		return exitRuntime
	}
	return exitOK
}
