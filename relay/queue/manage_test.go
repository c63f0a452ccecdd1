package queue

import (
	"errors"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/smarthost/smarthost/relay/relaytest"
)

// A held message is not attempted, and its time on hold does not count
// towards max_age: released after longer than max_age, a temporary failure
// is deferred, not bounced. Hold survives a restart.
func TestHoldAndRelease(t *testing.T) {
	d := newAnswering()
	d.set("b@y.org", Outcome{Err: errors.New("451 4.3.0 try later"), Upstream: "mx", Reply: "451 4.3.0 try later"})
	clk := relaytest.NewClock(time.Date(2030, 1, 1, 12, 0, 0, 0, time.UTC))
	dir := t.TempDir()
	q, rec, _ := openObserved(t, dir, d, Config{Workers: 1, MaxAge: time.Hour, Now: clk.Now})
	held := enqueueEnv(t, q, Envelope{From: "app@x.org", To: []string{"b@y.org"}, MessageID: "<h@x>"})
	got, err := q.Manage(OpHold, Filter{From: "@X.org"}, "test")
	if err != nil || len(got) != 1 || got[0] != held {
		t.Fatalf("hold: %v %v", got, err)
	}
	if h := rec.of(EventHeld); len(h) != 1 || h[0].By != "test" || h[0].MessageID != "<h@x>" {
		t.Errorf("held events %+v", h)
	}
	q.Close() // the hold is on disk: a restart keeps it
	q, rec, _ = openObserved(t, dir, d, Config{Workers: 1, MaxAge: time.Hour, Now: clk.Now})
	if l := q.List(Filter{State: StateHeld}); len(l) != 1 || l[0].ID != held {
		t.Fatalf("held after restart: %+v", l)
	}
	run(t, q)
	// One worker takes due messages oldest first: were the held one
	// attempted, it would be before this one.
	other := enqueueEnv(t, q, Envelope{From: "app@x.org", To: []string{"c@y.org"}})
	relaytest.Eventually(t, "the other message delivered", inBackground, func() bool { return d.tries("c@y.org") == 1 && q.Len() == 1 })
	if n := d.tries("b@y.org"); n != 0 {
		t.Fatalf("the held message was attempted %d times", n)
	}
	if s := q.Summarize(); s.ByState[StateHeld] != 1 || !s.Oldest.IsZero() || q.Held() != 1 || !q.Oldest().IsZero() {
		t.Errorf("summary %+v: want one held, no oldest (held ones are parked)", s)
	}
	clk.Add(2 * time.Hour) // past max_age, all on hold
	if got, err := q.Manage(OpRelease, Filter{IDs: []string{held}}, "test"); err != nil || len(got) != 1 {
		t.Fatalf("release: %v %v", got, err)
	}
	relaytest.Eventually(t, "an attempt after the release", inBackground, func() bool { return len(rec.of(EventDeferred))+len(rec.of(EventBounced)) == 1 })
	if b := rec.of(EventBounced); len(b) != 0 {
		t.Fatalf("bounced after release: %+v (the time on hold counted)", b)
	}
	relaytest.Eventually(t, "the released message deferred", inBackground, func() bool { return len(q.List(Filter{State: StateDeferred})) == 1 })
	if l := q.List(Filter{IDs: []string{held}}); len(l) != 1 || l[0].HeldFor != 2*time.Hour {
		t.Fatalf("after release: %+v", l)
	}
	if r := rec.of(EventReleased); len(r) != 1 || r[0].ID != held {
		t.Errorf("released events %+v", r)
	}
	if l := q.List(Filter{IDs: []string{other}}); len(l) != 0 {
		t.Errorf("the other message is still queued: %+v", l)
	}
}

// Delete by filter removes what it picks, and says so to the observer;
// bounce returns a message to its sender now, with a DSN.
func TestDeleteAndBounce(t *testing.T) {
	d := newAnswering()
	for _, r := range []string{"a@slow.example", "b@slow.example", "c@other.example"} {
		d.set(r, Outcome{Err: errors.New("421 4.4.2 later"), Upstream: "slow"})
	}
	q, rec, _ := openObserved(t, t.TempDir(), d, Config{Retry: []time.Duration{time.Hour}})
	run(t, q)
	a := enqueueEnv(t, q, Envelope{From: "app@x.org", To: []string{"a@slow.example"}})
	b := enqueueEnv(t, q, Envelope{From: "app@x.org", To: []string{"b@slow.example"}})
	c := enqueueEnv(t, q, Envelope{From: "news@x.org", To: []string{"c@other.example"}, MessageID: "<c@x>"})
	relaytest.Eventually(t, "three deferrals", inBackground, func() bool { return len(q.List(Filter{State: StateDeferred})) == 3 })
	if l := q.List(Filter{Upstream: "slow", To: "*@slow.example"}); len(l) != 2 {
		t.Fatalf("filter by upstream and recipient: %+v", l)
	}
	if _, err := q.Manage(OpDelete, Filter{}, "test"); err == nil {
		t.Fatal("an empty filter deleted everything")
	}
	got, err := q.Manage(OpDelete, Filter{To: "@slow.example"}, "test")
	slices.Sort(got)
	want := []string{a, b}
	slices.Sort(want)
	if err != nil || !slices.Equal(got, want) || q.Len() != 1 {
		t.Fatalf("delete: %v %v, %d left", got, err, q.Len())
	}
	if del := rec.of(EventDeleted); len(del) != 2 {
		t.Errorf("deleted events %+v", del)
	}
	if _, err := q.Manage(OpBounce, Filter{IDs: []string{c}}, "test"); err != nil {
		t.Fatal(err)
	}
	relaytest.Eventually(t, "the bounce sent", inBackground, func() bool { return q.Len() == 0 && d.tries("news@x.org") == 1 })
	bounced := rec.of(EventBounced)
	if len(bounced) != 1 || bounced[0].Reason != BounceAdmin || bounced[0].Status != "5.0.0" || bounced[0].ID != c {
		t.Fatalf("bounced events %+v", bounced)
	}
	if dsn := rec.of(EventDSN); len(dsn) != 1 || dsn[0].ID != c {
		t.Errorf("dsn events %+v", dsn)
	}
}

func TestFilterMatch(t *testing.T) {
	now := time.Now()
	m := &Message{ID: "A", From: "App@X.org", Created: now.Add(-2 * time.Hour), Attempts: 1,
		Recipients: []Recipient{{Addr: "bob@y.org", Status: StatusPending, LastUpstream: "mx"}, {Addr: "c@z.org", Status: StatusSent, LastUpstream: "old"}}}
	for _, c := range []struct {
		f    Filter
		want bool
	}{
		{Filter{}, true},
		{Filter{From: "app@x.org"}, true},
		{Filter{From: "@x.org"}, true},
		{Filter{From: "*@*.org"}, true},
		{Filter{From: "app@x.or"}, false},
		{Filter{From: "<>"}, false},
		{Filter{To: "c@z.org"}, true},
		{Filter{To: "@q.org"}, false},
		{Filter{OlderThan: time.Hour}, true},
		{Filter{OlderThan: 3 * time.Hour}, false},
		{Filter{Upstream: "mx"}, true},
		{Filter{Upstream: "old"}, false}, // that recipient is done
		{Filter{State: StateDeferred}, true},
		{Filter{State: StateHeld}, false},
		{Filter{IDs: []string{"B", "A"}}, true},
		{Filter{IDs: []string{"B"}}, false},
		{Filter{To: "bob@y.org", From: "other@x.org"}, false},
		{Filter{To: "b[o]b@y.org"}, false},
	} {
		if got := c.f.Match(m, m.State(false), now); got != c.want {
			t.Errorf("%+v: %v, want %v", c.f, got, c.want)
		}
	}
	if !(Filter{From: "<>"}).Match(&Message{}, StateActive, now) || !strings.EqualFold(m.State(true), StateActive) {
		t.Error("the null sender, or a busy message's state")
	}
}
