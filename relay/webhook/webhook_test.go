package webhook

import (
	"encoding/json"
	"fmt"
	"io"
	"net/http"
	"net/http/httptest"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/smarthost/smarthost/relay/queue"
	"github.com/smarthost/smarthost/relay/relaytest"
)

var secret = []byte("s3cret-of-the-app")

// receiver is a real HTTP server that checks each POST's signature and
// keeps what it got; down makes it answer 503.
type receiver struct {
	srv      *httptest.Server
	mu       sync.Mutex
	got      []Payload
	bad      []string
	down     atomic.Bool
	status   atomic.Int32 // answer this instead of 200, when set
	requests atomic.Int32
}

func newReceiver(t *testing.T) *receiver {
	r := &receiver{}
	r.srv = httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, req *http.Request) {
		r.requests.Add(1)
		if r.down.Load() {
			http.Error(w, "down", http.StatusServiceUnavailable)
			return
		}
		if c := r.status.Load(); c != 0 {
			w.WriteHeader(int(c))
			return
		}
		body, _ := io.ReadAll(req.Body)
		r.mu.Lock()
		defer r.mu.Unlock()
		if err := Verify(secret, body, req.Header.Get(HeaderSignature), time.Now(), 5*time.Minute); err != nil {
			r.bad = append(r.bad, err.Error())
			http.Error(w, err.Error(), http.StatusUnauthorized)
			return
		}
		var p Payload
		if err := json.Unmarshal(body, &p); err != nil || p.ID != req.Header.Get(HeaderEventID) {
			r.bad = append(r.bad, fmt.Sprintf("payload %s: %v", body, err))
		}
		r.got = append(r.got, p)
	}))
	t.Cleanup(r.srv.Close)
	return r
}

func (r *receiver) payloads() []Payload {
	r.mu.Lock()
	defer r.mu.Unlock()
	return append([]Payload(nil), r.got...)
}

// counts counts Config.Count's results.
type counts struct {
	mu sync.Mutex
	n  map[string]int
}

func (c *counts) count(r string) {
	c.mu.Lock()
	defer c.mu.Unlock()
	if c.n == nil {
		c.n = map[string]int{}
	}
	c.n[r]++
}

func (c *counts) get(r string) int {
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.n[r]
}

func open(t *testing.T, dir string, c *counts, hooks ...Hook) *Sender {
	t.Helper()
	s, err := Open(Config{Dir: dir, Hooks: hooks, Backoff: 10 * time.Millisecond, MaxBackoff: 50 * time.Millisecond, Count: c.count})
	if err != nil {
		t.Fatal(err)
	}
	return s
}

func event(kind, id, rcpt string) queue.Event {
	return queue.Event{Kind: kind, Time: time.Now(), ID: id, MessageID: "<" + id + "@x.org>", From: "app@x.org", Rcpt: rcpt,
		User: "app1", Class: "bulk", Upstream: "mx", Reply: "250 2.0.0 Ok: queued as 4ZxYw1", Status: "2.0.0", Attempt: 1}
}

// Each event reaches the receiver once, signed, in order, with what it is
// about; events it did not ask for do not.
func TestPostsSignedEventsInOrder(t *testing.T) {
	r := newReceiver(t)
	c := &counts{}
	s := open(t, t.TempDir(), c, Hook{URL: r.srv.URL, Events: []string{queue.EventDelivered, queue.EventBounced}, Secret: secret, Users: []string{"app1"}})
	defer s.Close()
	s.Observe(event(queue.EventDelivered, "A1", "bob@y.org"))
	s.Observe(event(queue.EventDeferred, "A1", "carol@y.org")) // not asked for
	other := event(queue.EventDelivered, "A2", "bob@y.org")
	other.User = "app2" // another user's
	s.Observe(other)
	b := event(queue.EventBounced, "A1", "gone@y.org")
	b.Reply, b.Status, b.Reason = "550 5.1.1 no such user", "5.1.1", queue.BounceRefused
	s.Observe(b)
	relaytest.Eventually(t, "two events", 10*time.Second, func() bool { return len(r.payloads()) == 2 && c.get(ResultSent) == 2 })
	got := r.payloads()
	if got[0].Event != "delivered" || got[0].Rcpt != "bob@y.org" || got[0].QueueID != "A1" || got[0].MessageID != "<A1@x.org>" ||
		got[0].Reply != "250 2.0.0 Ok: queued as 4ZxYw1" || got[0].Status != "2.0.0" || got[0].Upstream != "mx" || got[0].From != "app@x.org" {
		t.Errorf("first: %+v", got[0])
	}
	if got[1].Event != "bounced" || got[1].Rcpt != "gone@y.org" || got[1].Status != "5.1.1" || got[1].Reason != "refused" {
		t.Errorf("second: %+v", got[1])
	}
	if len(r.bad) > 0 || c.get(ResultSent) != 2 {
		t.Errorf("bad: %v, sent %d", r.bad, c.get(ResultSent))
	}
	if err := Verify([]byte("another secret"), []byte("{}"), Sign(secret, []byte("{}"), time.Now()), time.Now(), time.Minute); err == nil {
		t.Error("a signature with another secret verifies")
	}
	if err := Verify(secret, []byte("{}"), Sign(secret, []byte("{}"), time.Now().Add(-time.Hour)), time.Now(), time.Minute); err == nil {
		t.Error("an hour-old signature verifies")
	}
}

// Events wait while the receiver is down, across a restart, and each
// arrives once when it is back.
func TestOutboxSurvivesRestartAndOutage(t *testing.T) {
	r := newReceiver(t)
	r.down.Store(true)
	dir := t.TempDir()
	c := &counts{}
	s := open(t, dir, c, Hook{URL: r.srv.URL, Secret: secret})
	for i := range 5 {
		s.Observe(event(queue.EventDelivered, fmt.Sprintf("M%d", i), "bob@y.org"))
	}
	relaytest.Eventually(t, "failed posts", 10*time.Second, func() bool { return c.get(ResultFailed) >= 2 })
	s.Close()
	r.down.Store(false)
	s = open(t, dir, c, Hook{URL: r.srv.URL, Secret: secret})
	defer s.Close()
	relaytest.Eventually(t, "the five events", 10*time.Second, func() bool { return len(r.payloads()) >= 5 })
	s.Observe(event(queue.EventDelivered, "M5", "bob@y.org"))
	relaytest.Eventually(t, "the sixth", 10*time.Second, func() bool { return len(r.payloads()) >= 6 })
	for i, p := range r.payloads() {
		if p.QueueID != fmt.Sprintf("M%d", i) {
			t.Fatalf("event %d is %s: want each once, in order: %+v", i, p.QueueID, r.payloads())
		}
	}
	if n := len(r.payloads()); n != 6 {
		t.Fatalf("%d events, want 6", n)
	}
}

// A full outbox drops its oldest events and counts them; a refused event
// is given up, and the rest go on.
func TestFullOutboxDropsOldest(t *testing.T) {
	r := newReceiver(t)
	r.down.Store(true)
	c := &counts{}
	s := open(t, t.TempDir(), c, Hook{URL: r.srv.URL, Secret: secret, MaxQueued: 3})
	defer s.Close()
	for i := range 5 {
		s.Observe(event(queue.EventDelivered, fmt.Sprintf("M%d", i), "bob@y.org"))
	}
	relaytest.Eventually(t, "two dropped", 10*time.Second, func() bool { return c.get(ResultDropped) == 2 })
	r.down.Store(false)
	relaytest.Eventually(t, "the three newest", 10*time.Second, func() bool { return len(r.payloads()) == 3 })
	if got := r.payloads(); got[0].QueueID != "M2" || got[2].QueueID != "M4" {
		t.Errorf("got %+v, want M2, M3, M4", got)
	}
	r.status.Store(http.StatusBadRequest)
	s.Observe(event(queue.EventDelivered, "M5", "bob@y.org"))
	relaytest.Eventually(t, "a refusal", 10*time.Second, func() bool { return c.get(ResultRefused) == 1 })
	r.status.Store(0)
	s.Observe(event(queue.EventDelivered, "M6", "bob@y.org"))
	relaytest.Eventually(t, "the next event after the refused one", 10*time.Second, func() bool {
		got := r.payloads()
		return len(got) == 4 && got[3].QueueID == "M6"
	})
}

// A receiver that never answers holds no one: Observe returns at once
// whatever it does, and with the buffer full drops and counts.
func TestHungReceiverHoldsNothing(t *testing.T) {
	release := make(chan struct{})
	hung := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) { <-release }))
	defer hung.Close()
	defer close(release)
	c := &counts{}
	s := open(t, t.TempDir(), c, Hook{URL: hung.URL, Secret: secret, MaxQueued: 100})
	defer s.Close()
	for i := range 20000 {
		s.Observe(event(queue.EventDelivered, fmt.Sprintf("M%d", i), "bob@y.org"))
	}
	// They went to the outbox, which keeps the newest, while the receiver
	// holds the first POST.
	relaytest.Eventually(t, "drops counted", 10*time.Second, func() bool { return c.get(ResultDropped) >= 20000-100-1 })
	if n := s.hooks[0].box.waiting(); n != 100 {
		t.Errorf("%d events in the outbox, want it full (100)", n)
	}
}
