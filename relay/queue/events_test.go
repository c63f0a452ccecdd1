package queue

import (
	"context"
	"crypto/tls"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"sync"
	"testing"
	"time"

	"github.com/smarthost/smarthost/relay/relaytest"
)

// recorder is an Observer that keeps every event.
type recorder struct {
	mu     sync.Mutex
	events []Event
}

func (r *recorder) Observe(e Event) {
	r.mu.Lock()
	defer r.mu.Unlock()
	r.events = append(r.events, e)
}

// of returns the events of kind (all with "").
func (r *recorder) of(kind string) []Event {
	r.mu.Lock()
	defer r.mu.Unlock()
	var out []Event
	for _, e := range r.events {
		if kind == "" || e.Kind == kind {
			out = append(out, e)
		}
	}
	return out
}

// answering is a Deliverer that answers each recipient with its outcome
// (by address; default: taken with a Postfix-like reply).
type answering struct {
	mu       sync.Mutex
	outcome  map[string]Outcome
	attempts map[string]int
}

func newAnswering() *answering {
	return &answering{outcome: map[string]Outcome{}, attempts: map[string]int{}}
}

func (a *answering) set(rcpt string, o Outcome) {
	a.mu.Lock()
	defer a.mu.Unlock()
	a.outcome[rcpt] = o
}

func (a *answering) tries(rcpt string) int {
	a.mu.Lock()
	defer a.mu.Unlock()
	return a.attempts[rcpt]
}

func (a *answering) Deliver(_ context.Context, m *Message) []Outcome {
	a.mu.Lock()
	defer a.mu.Unlock()
	var out []Outcome
	for _, r := range m.Pending() {
		a.attempts[r]++
		o, ok := a.outcome[r]
		if !ok {
			o = Outcome{Upstream: "mx", Addr: "192.0.2.7:587", TLS: "TLSv1.3", Reply: "250 2.0.0 Ok: queued as 4ZxYw1", Took: 40 * time.Millisecond}
		}
		out = append(out, o)
	}
	return out
}

// openObserved opens a queue at dir whose JSON log is checked line by line,
// with an observer.
func openObserved(t *testing.T, dir string, d Deliverer, cfg Config) (*Queue, *recorder, *relaytest.LogChecker) {
	t.Helper()
	rec := &recorder{}
	logs := relaytest.NewLogChecker(t)
	cfg.Dir, cfg.Hostname, cfg.Observer = dir, "relay.test", rec
	if cfg.Workers == 0 {
		cfg.Workers = 2
	}
	if cfg.Retry == nil {
		cfg.Retry = []time.Duration{20 * time.Millisecond}
	}
	if cfg.MaxAge == 0 {
		cfg.MaxAge = time.Hour
	}
	if cfg.Rescan == 0 {
		cfg.Rescan = 50 * time.Millisecond
	}
	q, err := Open(cfg, d, slog.New(slog.NewJSONHandler(logs, nil)))
	if err != nil {
		t.Fatal(err)
	}
	return q, rec, logs
}

func enqueueEnv(t *testing.T, q *Queue, env Envelope) string {
	t.Helper()
	d, err := q.Create()
	if err != nil {
		t.Fatal(err)
	}
	io.WriteString(d, "Subject: s\r\nMessage-ID: "+env.MessageID+"\r\n\r\nbody\r\n")
	id, err := d.Commit(env, nil)
	if err != nil {
		t.Fatal(err)
	}
	return id
}

// One line per recipient per attempt, with every field an administrator
// greps for and the upstream's reply as it was sent.
func TestDeliveryLine(t *testing.T) {
	d := newAnswering()
	d.set("later@y.org", Outcome{Err: errors.New("upstream mx: 451 4.7.1 greylisted"), Upstream: "mx", Addr: "192.0.2.7:587",
		TLS: "TLSv1.3", Reply: "451 4.7.1 greylisted", Took: 30 * time.Millisecond})
	d.set("gone@y.org", Outcome{Err: Permanent(errors.New("upstream mx: 550 5.1.1 <gone@y.org>: no such user")), Upstream: "mx",
		Addr: "192.0.2.7:587", TLS: "TLSv1.3", Reply: "550 5.1.1 <gone@y.org>: no such user"})
	q, rec, logs := openObserved(t, t.TempDir(), d, Config{})
	run(t, q)
	id := enqueueEnv(t, q, Envelope{From: "app@x.org", To: []string{"bob@y.org", "later@y.org", "gone@y.org"},
		MessageID: "<reset-1@x.org>", User: "app1", Client: "10.0.0.9"})
	relaytest.Eventually(t, "a deferral", inBackground, func() bool { return len(rec.of(EventDeferred)) >= 1 })
	relaytest.Eventually(t, "the bounce", inBackground, func() bool { return len(rec.of(EventDSN)) == 1 })

	want := map[string]map[string]any{
		"delivered":         {"rcpt": "bob@y.org", "status": "sent", "dsn": "2.0.0", "reply": "250 2.0.0 Ok: queued as 4ZxYw1"},
		"delivery deferred": {"rcpt": "later@y.org", "status": "deferred", "dsn": "4.7.1", "reply": "451 4.7.1 greylisted"},
		"delivery failed":   {"rcpt": "gone@y.org", "status": "bounced", "dsn": "5.1.1", "reply": "550 5.1.1 <gone@y.org>: no such user", "reason": "refused"},
	}
	for msg, fields := range want {
		ls := logs.Lines(t, msg)
		if len(ls) == 0 {
			t.Fatalf("no %q line in\n%s", msg, logs.String())
		}
		l := ls[0]
		for k, v := range map[string]any{"msg_id": id, "message_id": "<reset-1@x.org>", "from": "app@x.org", "user": "app1",
			"upstream": "mx", "upstream_addr": "192.0.2.7:587", "tls": "TLSv1.3", "attempt": jsonNumber(1)} {
			fields[k] = v
		}
		for k, v := range fields {
			if l[k] != v {
				t.Errorf("%s line: %s = %v, want %v\n%v", msg, k, l[k], v, l)
			}
		}
		for _, k := range []string{"delay", "delay_queue", "delay_transfer"} {
			if _, ok := l[k]; !ok {
				t.Errorf("%s line has no %s: %v", msg, k, l)
			}
		}
	}
	if got := logs.Lines(t, "delivered")[0]["delay_transfer"]; got != jsonNumber(0.04) {
		t.Errorf("delay_transfer %v, want the attempt's 0.04", got)
	}
}

// Every event of a message reaches the observer, each with what finds it
// again.
func TestEventsObserved(t *testing.T) {
	d := newAnswering()
	d.set("gone@y.org", Outcome{Err: Permanent(errors.New("550 5.1.1 no such user")), Upstream: "mx", Reply: "550 5.1.1 no such user"})
	q, rec, _ := openObserved(t, t.TempDir(), d, Config{})
	run(t, q)
	id := enqueueEnv(t, q, Envelope{From: "app@x.org", To: []string{"bob@y.org", "gone@y.org"}, MessageID: "<m1@x.org>",
		User: "app1", Client: "10.0.0.9", DKIM: []string{"x.org/s1"}})
	relaytest.Eventually(t, "the bounce delivered", inBackground, func() bool { return q.Len() == 0 && len(rec.of(EventDelivered)) == 2 })
	acc := rec.of(EventAccepted)
	if len(acc) != 2 || acc[0].ID != id || acc[0].Client != "10.0.0.9" || len(acc[0].Rcpts) != 2 || acc[0].Size == 0 {
		t.Fatalf("accepted events %+v", acc)
	}
	if s := rec.of(EventSigned); len(s) != 1 || s[0].DKIM[0] != "x.org/s1" {
		t.Errorf("signed events %+v", s)
	}
	b := rec.of(EventBounced)
	if len(b) != 1 || b[0].Rcpt != "gone@y.org" || b[0].Status != "5.1.1" || b[0].Reason != BounceRefused || b[0].MessageID != "<m1@x.org>" || b[0].User != "app1" {
		t.Errorf("bounced events %+v", b)
	}
	dsn := rec.of(EventDSN)
	if len(dsn) != 1 || dsn[0].ID != id || dsn[0].DSNID == "" || dsn[0].DSNID != acc[1].ID || acc[1].From != "" {
		t.Errorf("dsn event %+v, the report's accepted event %+v", dsn, acc[1])
	}
}

func jsonNumber(n any) json.Number { return json.Number(fmt.Sprint(n)) }

// TLS versions are named as Postfix's log and Received header name them.
func TestTLSVersion(t *testing.T) {
	for v, want := range map[uint16]string{tls.VersionTLS12: "TLSv1.2", tls.VersionTLS13: "TLSv1.3", 0x0305: "0x0305"} {
		if got := TLSVersion(v); got != want {
			t.Errorf("TLSVersion(%#x) = %q, want %q", v, got, want)
		}
	}
}
