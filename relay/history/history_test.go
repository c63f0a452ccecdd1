package history

import (
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/smarthost/smarthost/relay/queue"
	"github.com/smarthost/smarthost/relay/relaytest"
)

// story is one message's events, as the queue tells them.
func story(id, msgID string, at time.Time, dsnID string) []queue.Event {
	base := queue.Event{ID: id, MessageID: msgID, From: "app@x.org", User: "app1"}
	ev := func(kind string, d time.Duration, f func(*queue.Event)) queue.Event {
		e := base
		e.Kind, e.Time = kind, at.Add(d)
		if f != nil {
			f(&e)
		}
		return e
	}
	out := []queue.Event{
		ev(queue.EventAccepted, 0, func(e *queue.Event) { e.Rcpts, e.Client, e.Size = []string{"Bob@y.org", "gone@y.org"}, "10.0.0.9", 300 }),
		ev(queue.EventSigned, 0, func(e *queue.Event) { e.DKIM = []string{"x.org/s1"} }),
		ev(queue.EventDelivered, time.Second, func(e *queue.Event) {
			e.Rcpt, e.Upstream, e.Reply, e.Status = "Bob@y.org", "mx", "250 2.0.0 Ok: queued as 4ZxYw1", "2.0.0"
		}),
		ev(queue.EventBounced, time.Second, func(e *queue.Event) {
			e.Rcpt, e.Upstream, e.Reply, e.Status = "gone@y.org", "mx", "550 5.1.1 no such user", "5.1.1"
		}),
	}
	if dsnID != "" {
		out = append(out, ev(queue.EventDSN, time.Second, func(e *queue.Event) { e.DSNID, e.Rcpt = dsnID, "app@x.org" }),
			queue.Event{Kind: queue.EventAccepted, Time: at.Add(time.Second), ID: dsnID, Rcpts: []string{"app@x.org"}},
			queue.Event{Kind: queue.EventDelivered, Time: at.Add(2 * time.Second), ID: dsnID, Rcpt: "app@x.org", Upstream: "mx"})
	}
	return out
}

func open(t *testing.T, dir string, clk *relaytest.Clock, cfg Config) *History {
	t.Helper()
	cfg.Dir, cfg.Now = dir, clk.Now
	h, err := Open(cfg)
	if err != nil {
		t.Fatal(err)
	}
	return h
}

// Every event is kept, across a restart, and found by the queue ID, the
// Message-ID (with or without brackets), the sender or a recipient, in any
// case, with the notification sent about the message.
func TestSearchFindsTheWholeStory(t *testing.T) {
	dir := t.TempDir()
	clk := relaytest.NewClock(time.Date(2030, 5, 6, 12, 0, 0, 0, time.UTC))
	h := open(t, dir, clk, Config{})
	for _, e := range story("AAAA0000000000000001", "<reset-1@x.org>", clk.Now(), "DDDD0000000000000001") {
		h.Observe(e)
	}
	for i := 2; i < 50; i++ { // others, which must not be found
		for _, e := range story(fmt.Sprintf("BBBB%016d", i), fmt.Sprintf("<other-%d@x.org>", i), clk.Now(), "") {
			e.From = "other@x.org"
			e.Rcpts, e.Rcpt = nil, strings.Replace(e.Rcpt, "y.org", "z.org", 1)
			h.Observe(e)
		}
	}
	if _, err := Open(Config{Dir: dir}); err == nil {
		t.Fatal("a second writer opened the history")
	}
	if err := h.Close(); err != nil {
		t.Fatal(err)
	}
	h = open(t, dir, clk, Config{}) // a restart
	defer h.Close()
	for _, q := range []string{"AAAA0000000000000001", "aaaa0000000000000001", "<reset-1@x.org>", "reset-1@x.org", "bob@Y.org", "gone@y.org"} {
		got, err := Search(dir, Query{Text: q})
		if err != nil {
			t.Fatal(err)
		}
		if len(got) != 2 || got[1].ID != "AAAA0000000000000001" || len(got[1].Events) != 5 || got[0].ID != "DDDD0000000000000001" || len(got[0].Events) != 2 {
			t.Fatalf("%q: %d stories %+v, want the message's 5 events and its notification's 2", q, len(got), got)
		}
		if r := got[1].Events[2]; r.Reply != "250 2.0.0 Ok: queued as 4ZxYw1" || r.Upstream != "mx" {
			t.Errorf("%q: delivered event %+v", q, r)
		}
	}
	if got, _ := Search(dir, Query{Text: "other@x.org", Limit: 3}); len(got) != 3 {
		t.Errorf("limit 3: %d stories", len(got))
	}
	if got, _ := Search(dir, Query{Text: "nobody@x.org"}); len(got) != 0 {
		t.Errorf("nobody: %+v", got)
	}
	if got, _ := Search(dir, Query{Text: "<reset-1@x.org>", Since: clk.Now().Add(time.Hour)}); len(got) != 0 {
		t.Errorf("since an hour later: %+v", got)
	}
	recent, err := Recent(dir, 3, queue.EventBounced)
	if err != nil || len(recent) != 3 || recent[0].ID != "BBBB0000000000000049" {
		t.Errorf("recent bounces: %+v %v", recent, err)
	}
}

// Events are written while mail flows: a search finds them without a
// restart.
func TestSearchWhileWriting(t *testing.T) {
	dir := t.TempDir()
	clk := relaytest.NewClock(time.Now())
	h := open(t, dir, clk, Config{})
	defer h.Close()
	for _, e := range story("AAAA0000000000000001", "<m@x>", clk.Now(), "") {
		h.Observe(e)
	}
	relaytest.Eventually(t, "the story found", 10*time.Second, func() bool {
		got, _ := Search(dir, Query{Text: "<m@x>"})
		return len(got) == 1 && len(got[0].Events) == 4
	})
}

// The history keeps MaxAge of events, and no more than MaxSize on disk.
func TestPruning(t *testing.T) {
	dir := t.TempDir()
	clk := relaytest.NewClock(time.Date(2030, 5, 6, 12, 0, 0, 0, time.UTC))
	h := open(t, dir, clk, Config{MaxAge: 24 * time.Hour, MaxSize: 4 << 20})
	for _, e := range story("AAAA0000000000000001", "<old@x>", clk.Now(), "") {
		h.Observe(e)
	}
	h.Close()
	clk.Add(25 * time.Hour)
	h = open(t, dir, clk, Config{MaxAge: 24 * time.Hour, MaxSize: 4 << 20})
	for _, e := range story("AAAA0000000000000002", "<new@x>", clk.Now(), "") {
		h.Observe(e)
	}
	h.Close()
	h = open(t, dir, clk, Config{MaxAge: 24 * time.Hour, MaxSize: 4 << 20})
	if got, _ := Search(dir, Query{Text: "<old@x>"}); len(got) != 0 {
		t.Errorf("a day-old message is still there: %+v", got)
	}
	if got, _ := Search(dir, Query{Text: "<new@x>"}); len(got) != 1 {
		t.Errorf("the new message: %+v", got)
	}
	// Size: 4 MiB, in segments of 128 KiB; far more written.
	pad := strings.Repeat("x", 900)
	for i := range 20000 {
		h.Observe(queue.Event{Kind: queue.EventDeferred, Time: clk.Now(), ID: fmt.Sprintf("CCCC%016d", i), Error: pad})
		if i%1000 == 999 {
			relaytest.Eventually(t, "the writer to catch up", 10*time.Second, func() bool { return h.Written() >= uint64(i+1) })
		}
	}
	h.Close()
	var total int64
	segs, _ := segments(dir)
	for _, s := range segs {
		total += s.size
	}
	if total > 4<<20+128<<10 || len(segs) < 2 {
		t.Errorf("%d bytes in %d segments, want at most 4 MiB and a segment", total, len(segs))
	}
	if _, err := os.Stat(filepath.Join(dir, "lock")); err != nil {
		t.Error(err)
	}
}
