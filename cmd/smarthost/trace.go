package main

import (
	"fmt"
	"time"

	"github.com/smarthost/smarthost/cmd/internal/cmdline"
	"github.com/smarthost/smarthost/relay/history"
)

const traceUsage = "QUERY [--since 24h] [--json] [--limit N] [--config FILE]\n\n" +
	"The story of each message QUERY names, newest first: a queue ID, a Message-ID\n" +
	"(with or without <>), or a sender or recipient address. Every event from\n" +
	"acceptance to each upstream's reply, and the notifications sent to the\n" +
	"sender, from the history (history.dir), after the message has left the\n" +
	"queue too; it reads the files, whether or not a relay runs.\n" +
	"--json: one JSON object per message per line."

// traceCmd is `smarthost trace`.
func traceCmd(c cmdline.IO, args []string) int {
	fs := c.Flags("trace", traceUsage)
	path := fs.String("config", "", "configuration file")
	since := fs.Duration("since", 0, "only events this recent (default: all the history keeps)")
	asJSON := fs.Bool("json", false, "one JSON object per message per line")
	limit := fs.Int("limit", 100, "the newest this many messages")
	pos, code, done := fs.ParseArgs(args)
	if done || len(pos) != 1 || *since < 0 {
		return fs.BadArgs(code, done)
	}
	f, _, code := fs.Config(*path)
	if f == nil {
		return code
	}
	if !f.History.On() {
		cmdline.Errorf(c.Stderr, "trace: this relay keeps no history (history.enabled: false)")
		return cmdline.Runtime
	}
	q := history.Query{Text: pos[0], Limit: *limit}
	if *since > 0 {
		q.Since = time.Now().Add(-*since)
	}
	stories, err := history.Search(f.History.Dir, q)
	if err == nil {
		err = history.WriteStories(c.Stdout, stories, *asJSON)
	}
	if err == nil && len(stories) == 0 {
		err = fmt.Errorf("no message found for %q", pos[0])
	}
	return fail(c, "", "trace", err)
}
