package main

import (
	"encoding/json"
	"fmt"
	"io"
	"strings"
	"time"

	"github.com/smarthost/smarthost/relay/history"
	"github.com/smarthost/smarthost/relay/queue"
)

const traceUsage = "QUERY [--since 24h] [--json] [--limit N] [--config FILE]\n\n" +
	"The story of each message QUERY names, newest first: a queue ID, a Message-ID\n" +
	"(with or without <>), or a sender or recipient address. Every event from\n" +
	"acceptance to each upstream's reply, and the notifications sent to the\n" +
	"sender, from the history (history.dir), after the message has left the\n" +
	"queue too; it reads the files, whether or not a relay runs.\n" +
	"--json: one JSON object per message per line."

// traceCmd is `smarthost trace`.
func traceCmd(c cmdIO, args []string) int {
	fs := c.flags("trace", traceUsage)
	path := fs.String("config", "", "configuration file")
	since := fs.Duration("since", 0, "only events this recent (default: all the history keeps)")
	asJSON := fs.Bool("json", false, "one JSON object per message per line")
	limit := fs.Int("limit", 100, "the newest this many messages")
	pos, code, done := fs.parse(args)
	if done {
		return code
	}
	if len(pos) != 1 || *since < 0 {
		fs.Usage()
		return exitBadConfig
	}
	f, _, code := fs.config(*path)
	if f == nil {
		return code
	}
	if !f.History.On() {
		errorf(c.stderr, "trace: this relay keeps no history (history.enabled: false)")
		return exitRuntime
	}
	q := history.Query{Text: pos[0], Limit: *limit}
	if *since > 0 {
		q.Since = time.Now().Add(-*since)
	}
	stories, err := history.Search(f.History.Dir, q)
	if err != nil {
		errorf(c.stderr, "trace: %v", err)
		return exitRuntime
	}
	if *asJSON {
		enc := json.NewEncoder(c.stdout)
		enc.SetEscapeHTML(false)
		for _, s := range stories {
			enc.Encode(s)
		}
	} else {
		printStories(c.stdout, stories)
	}
	if len(stories) == 0 {
		errorf(c.stderr, "trace: no message found for %q", pos[0])
		return exitRuntime
	}
	return exitOK
}

// printStories prints each story: a line about the message, then a line
// per event.
func printStories(w io.Writer, stories []history.Story) {
	for i, s := range stories {
		if i > 0 {
			fmt.Fprintln(w)
		}
		first := s.Events[0]
		fmt.Fprintf(w, "%s  %s  from <%s>", s.ID, first.MessageID, first.From)
		if first.User != "" {
			fmt.Fprintf(w, "  user %s", first.User)
		}
		fmt.Fprintln(w)
		for _, e := range s.Events {
			fmt.Fprintf(w, "  %s  %-10s %s\n", e.Time.Local().Format("2006-01-02 15:04:05.000"), e.Kind, eventDetail(e))
		}
	}
}

// eventDetail is what an event says beyond its time and kind.
func eventDetail(e queue.Event) string {
	var parts []string
	add := func(format string, args ...any) { parts = append(parts, fmt.Sprintf(format, args...)) }
	if e.Rcpt != "" {
		add("to=<%s>", e.Rcpt)
	}
	if len(e.Rcpts) > 0 {
		add("to=<%s>", strings.Join(e.Rcpts, ">,<"))
	}
	if e.Client != "" {
		add("client=%s size=%d", e.Client, e.Size)
	}
	if len(e.DKIM) > 0 {
		add("dkim=%s", strings.Join(e.DKIM, ","))
	}
	if e.Upstream != "" {
		add("upstream=%s[%s]", e.Upstream, e.Addr)
	}
	if e.TLS != "" {
		add("tls=%s", e.TLS)
	}
	if e.Attempt > 0 {
		add("attempt=%d delay=%.3g", e.Attempt, e.Delay)
	}
	if e.Status != "" {
		add("dsn=%s", e.Status)
	}
	if e.Reason != "" {
		add("reason=%s", e.Reason)
	}
	if e.DSNID != "" {
		add("notification=%s", e.DSNID)
	}
	if e.By != "" {
		add("by=%q", e.By)
	}
	if e.Reply != "" {
		add("(%s)", strings.ReplaceAll(e.Reply, "\n", " / "))
	} else if e.Error != "" {
		add("(%s)", e.Error)
	}
	return strings.Join(parts, " ")
}
