package main

import (
	"context"
	"fmt"
	"time"

	"github.com/smarthost/smarthost/cmd/internal/cmdline"
	"github.com/smarthost/smarthost/relay/daemon"
)

const drainUsage = "[--config FILE] [--timeout 10m]\n\n" +
	"Asks the running relay (on its metrics.listen) to stop accepting and hand every queued\n" +
	"message to the peers of queue.handoff.upstreams; returns 0 once its queue is empty\n" +
	"(the relay then exits 0), 1 if that does not happen within --timeout."

func drainCmd(c cmdline.IO, args []string) int {
	fs := c.Flags("drain", drainUsage)
	path := fs.String("config", "", "configuration file of the relay to drain")
	timeout := fs.Duration("timeout", 10*time.Minute, "how long to wait for the queue to empty")
	if _, code, done := fs.ParseArgs(args); done {
		return code
	}
	f, _, code := fs.Config(*path)
	if f == nil {
		return code
	}
	relay, err := daemon.NewAdminClient(f)
	if err != nil {
		return fail(c, "", "drain", err)
	}
	ctx, cancel := context.WithTimeout(context.Background(), *timeout)
	defer cancel()
	answer, err := relay.Drain(ctx)
	if err != nil {
		return fail(c, "", "drain", err)
	}
	fmt.Fprint(c.Stdout, answer)
	return cmdline.OK
}
