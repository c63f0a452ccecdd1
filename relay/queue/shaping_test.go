package queue

import (
	"context"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"sync"
	"testing"
	"time"

	"github.com/smarthost/smarthost/relay/relaytest"
)

func lined(user string, p Priority) *entry {
	return &entry{m: &Message{ID: fmt.Sprint(user, p)}, user: user, prio: p}
}

func TestLineupHighGoesFirst(t *testing.T) {
	var l lineup
	for i := 0; i < 50; i++ {
		l.push(lined("news", PriorityBulk), false)
	}
	for i := 0; i < 3; i++ {
		// Turns taken and handed back meanwhile must not cost the
		// later arrivals their place.
		e := l.pop()
		l.push(e, true)
	}
	for i := 0; i < 3; i++ {
		l.push(lined("app", PriorityHigh), false)
	}
	for i := 0; i < 3; i++ {
		if e := l.pop(); e.prio != PriorityHigh {
			t.Fatalf("turn %d went to %s, want the high ones first", i+1, e.prio)
		}
	}
}

// TestLineupWeights: with all three priorities waiting, of every 21 turns
// high has 16, normal 4 and bulk 1; with only bulk and normal, normal 4 of 5.
func TestLineupWeights(t *testing.T) {
	var l lineup
	for _, p := range []Priority{PriorityBulk, PriorityNormal, PriorityHigh} {
		for i := 0; i < 300; i++ {
			l.push(lined("u", p), false)
		}
	}
	count := map[Priority]int{}
	for i := 0; i < 210; i++ {
		count[l.pop().prio]++
	}
	if count[PriorityHigh] != 160 || count[PriorityNormal] != 40 || count[PriorityBulk] != 10 {
		t.Errorf("210 turns: %v, want high 160, normal 40, bulk 10", count)
	}
	var m lineup
	for _, p := range []Priority{PriorityBulk, PriorityNormal} {
		for i := 0; i < 100; i++ {
			m.push(lined("u", p), false)
		}
	}
	count = map[Priority]int{}
	for i := 0; i < 50; i++ {
		count[m.pop().prio]++
	}
	if count[PriorityNormal] != 40 || count[PriorityBulk] != 10 {
		t.Errorf("50 turns of normal and bulk: %v, want 40 and 10: bulk never starves normal, nor normal bulk", count)
	}
}

func TestLineupUsersTakeTurns(t *testing.T) {
	var l lineup
	for i := 0; i < 100; i++ {
		l.push(lined("a", PriorityNormal), false)
	}
	for i := 0; i < 5; i++ {
		l.push(lined("b", PriorityNormal), false)
	}
	var order string
	for i := 0; i < 10; i++ {
		order += l.pop().user
	}
	if order != "ababababab" {
		t.Errorf("turns %q, want a and b in turn", order)
	}
}

// gate is a shaping Deliverer: it sends while it has tokens and answers
// WaitError otherwise, in one lane; a message's class names its priority.
type gate struct {
	mu     sync.Mutex
	tokens int
	got    []string // class:ID, in the order sent
	fail   error    // the next attempt's outcome, once (a token spent)
	calls  int
	after  time.Duration // the wait it asks for; default 2ms
}

func (g *gate) Lane(m *Message) (string, Priority) {
	p, _ := ParsePriority(m.Class)
	return "up", p
}

func (g *gate) Deliver(_ context.Context, m *Message) []Outcome {
	g.mu.Lock()
	defer g.mu.Unlock()
	g.calls++
	out := make([]Outcome, len(m.Pending()))
	_, p := g.Lane(m)
	for i := range out {
		switch {
		case g.tokens == 0:
			out[i].Err = &WaitError{Lane: "up", Upstream: "up", Reason: "rate", After: max(g.after, 2*time.Millisecond), Priority: p, Width: 2}
		case g.fail != nil:
			// An answer, if a refusal, spends the token: the message
			// waits for the next one, and the attempt it failed is seen.
			out[i].Err, g.fail = g.fail, nil
			g.tokens--
		default:
			g.tokens--
			g.got = append(g.got, m.Class+":"+m.ID)
		}
	}
	return out
}

func (g *gate) give(n int) {
	g.mu.Lock()
	g.tokens += n
	g.mu.Unlock()
}

func (g *gate) sent() []string {
	g.mu.Lock()
	defer g.mu.Unlock()
	return append([]string(nil), g.got...)
}

func enqueueAs(t *testing.T, q *Queue, class, user string) string {
	t.Helper()
	d, err := q.Create()
	if err != nil {
		t.Fatal(err)
	}
	io.WriteString(d, "Subject: s\r\n\r\nbody\r\n")
	id, err := d.Commit(Envelope{From: user + "@x.org", To: []string{"b@y.org"}, Class: class, User: user}, nil)
	if err != nil {
		t.Fatal(err)
	}
	return id
}

func waitingCount(q *Queue) int {
	n := 0
	for _, l := range q.Lanes() {
		n += len(l.IDs)
	}
	return n
}

// TestLanesInTheQueue: messages over the budget wait in their lane without
// an attempt; when the budget gives one turn at a time, the high ones that
// came last go first; the waiting list shows them to `queue list`.
func TestLanesInTheQueue(t *testing.T) {
	dir := t.TempDir()
	g := &gate{}
	q := openQ(t, dir, g, time.Hour)
	run(t, q)
	var bulk []string
	for i := 0; i < 20; i++ {
		bulk = append(bulk, enqueueAs(t, q, "bulk", "news"))
	}
	relaytest.Eventually(t, "20 bulk messages waiting", inBackground, func() bool { return waitingCount(q) == 20 })
	for i := 0; i < 3; i++ {
		enqueueAs(t, q, "high", "app")
	}
	relaytest.Eventually(t, "23 messages waiting", inBackground, func() bool { return waitingCount(q) == 23 })

	sp, err := OpenSpool(dir)
	if err != nil {
		t.Fatal(err)
	}
	var w map[string]Waiting
	relaytest.Eventually(t, "the waiting list for queue list", inBackground, func() bool {
		w, _ = sp.Waiting()
		return len(w) == 23
	})
	if st := w[bulk[0]].State(); st != "waiting for upstream rate (up)" {
		t.Errorf("state %q", st)
	}

	for i := 1; i <= 4; i++ {
		g.give(1)
		relaytest.Eventually(t, fmt.Sprintf("message %d sent", i), inBackground, func() bool { return len(g.sent()) == i })
	}
	high := 0
	for _, s := range g.sent()[:3] {
		if s[:4] == "high" {
			high++
		}
	}
	if high != 3 {
		t.Errorf("first sent: %q, want the 3 high ones", g.sent())
	}
	g.give(100)
	relaytest.Eventually(t, "all sent", inBackground, func() bool { return len(g.sent()) == 23 && q.Len() == 0 })
	for _, id := range bulk {
		if m, _ := sp.find(id); m != nil {
			t.Errorf("%s still in the spool", id)
		}
	}
	relaytest.Eventually(t, "the waiting list gone", inBackground, func() bool {
		_, err := os.Stat(filepath.Join(dir, waitingFile))
		return os.IsNotExist(err)
	})
}

// TestWaitingIsNoAttempt: the time a message waits is no attempt and does
// not count towards max_age: one that waited longer than max_age and then
// meets a temporary failure is retried, not bounced, with one attempt.
func TestWaitingIsNoAttempt(t *testing.T) {
	dir := t.TempDir()
	g := &gate{fail: fmt.Errorf("451 4.3.0 try later")}
	maxAge := 300 * time.Millisecond
	q := openQ(t, dir, g, maxAge)
	run(t, q)
	id := enqueueAs(t, q, "", "app")
	relaytest.Eventually(t, "the message waiting", inBackground, func() bool { return waitingCount(q) == 1 })
	start := time.Now()
	relaytest.Eventually(t, "many turns refused", inBackground, func() bool {
		g.mu.Lock()
		defer g.mu.Unlock()
		return g.calls > 20 && time.Since(start) > maxAge
	})
	m, _, _ := q.sched.lookup(id)
	q.sched.mu.Lock()
	attempts := m.Attempts
	q.sched.mu.Unlock()
	if attempts != 0 {
		t.Fatalf("%d attempts while it waited, want 0", attempts)
	}
	g.give(1)
	relaytest.Eventually(t, "the first attempt", inBackground, func() bool {
		q.sched.mu.Lock()
		defer q.sched.mu.Unlock()
		return m.Attempts == 1
	})
	q.sched.mu.Lock()
	st, waited := m.Recipients[0].Status, m.Waited
	q.sched.mu.Unlock()
	if st != StatusPending || waited < maxAge {
		t.Fatalf("after waiting %s (max_age %s) and a 451: %s, waited %s; want pending", time.Since(start), maxAge, st, waited)
	}
	g.give(1)
	relaytest.Eventually(t, "delivered", inBackground, func() bool { return len(g.sent()) == 1 && q.Len() == 0 })
}

// TestHandoffTakesTheWaiting: a node that hands its queue over sends the
// messages waiting for an upstream's budget to its peers too, at once,
// even those of a lane held for an hour.
func TestHandoffTakesTheWaiting(t *testing.T) {
	g := &gate{after: time.Hour}
	q := openQ(t, t.TempDir(), g, time.Hour)
	run(t, q)
	for i := 0; i < 5; i++ {
		enqueueAs(t, q, "", "app")
	}
	relaytest.Eventually(t, "5 waiting", inBackground, func() bool { return waitingCount(q) == 5 })
	peers := newScripted()
	q.Handoff(peers, time.Second)
	relaytest.Eventually(t, "all handed off", inBackground, func() bool { return len(peers.delivered()) == 5 && q.Len() == 0 })
	relaytest.Eventually(t, "no lane left", time.Second, func() bool { return waitingCount(q) == 0 })
}
