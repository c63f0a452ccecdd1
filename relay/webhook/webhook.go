// Package webhook posts what became of messages (delivered, deferred,
// bounced, delayed) to the URLs of the applications that asked, as JSON
// signed with HMAC-SHA256. Events wait in a durable outbox per webhook, a
// file each, so that they survive a restart and a receiver that is down;
// they are posted in order, retried with backoff, and a full outbox drops
// its oldest. Mail never waits for any of it: Observe only hands the event
// to a goroutine of the package, or drops it and counts it.
//
// Where things are: webhook.go (this file) the events and who wants
// them; outbox.go the durable queue; post.go signing and posting.
package webhook

import (
	"context"
	"crypto/rand"
	"crypto/sha256"
	"encoding/hex"
	"encoding/json"
	"fmt"
	"log/slog"
	"net/http"
	"path/filepath"
	"slices"
	"sync"
	"time"

	"github.com/smarthost/smarthost/relay/queue"
)

// The events a webhook may ask for.
var Kinds = []string{queue.EventDelivered, queue.EventDeferred, queue.EventBounced, queue.EventDelayed}

// Hook is one webhook.
type Hook struct {
	URL    string
	Events []string // of Kinds; none: all of them
	Secret []byte   // HMAC-SHA256 key of the signature
	// Users and Classes, when set, limit it to the messages of those
	// users, or of users of those rate-limit classes.
	Users, Classes []string
	MaxQueued      int // events kept waiting at most; default 100000
}

// Config is the webhooks section of the configuration, parsed.
type Config struct {
	Dir   string // the outboxes, a folder per webhook
	Hooks []Hook
	// Timeout bounds each POST; default 10s.
	Timeout time.Duration
	// Backoff is the first wait after a failed POST, doubling up to
	// MaxBackoff; defaults 1s and 5m.
	Backoff, MaxBackoff time.Duration
	// Count is told of each event's fate: sent, failed (to be retried),
	// refused (the receiver said 4xx: given up) or dropped (a full
	// outbox, or the buffer before it). Nil: not counted.
	Count  func(result string)
	Client *http.Client // nil: one with Timeout
	Log    *slog.Logger
}

// Result labels of Config.Count.
const (
	ResultSent    = "sent"
	ResultFailed  = "failed"
	ResultRefused = "refused"
	ResultDropped = "dropped"
)

// Payload is what a webhook receives, as JSON.
type Payload struct {
	ID        string    `json:"id"` // unique per event: a receiver that got it twice can tell
	Event     string    `json:"event"`
	Time      time.Time `json:"time"`
	QueueID   string    `json:"queue_id"`
	MessageID string    `json:"message_id,omitempty"`
	From      string    `json:"from"`
	Rcpt      string    `json:"rcpt"`
	User      string    `json:"user,omitempty"`
	Upstream  string    `json:"upstream,omitempty"`
	Reply     string    `json:"reply,omitempty"` // the upstream's reply as it was sent
	Error     string    `json:"error,omitempty"` // when there was no reply
	Status    string    `json:"dsn,omitempty"`   // the DSN status: 2.0.0, 4.4.1, 5.1.1
	Attempt   int       `json:"attempt,omitempty"`
	Reason    string    `json:"reason,omitempty"` // why it bounced
}

// Sender posts the events to the webhooks.
type Sender struct {
	cfg    Config
	hooks  []*hook
	events chan queue.Event
	quit   chan struct{}      // closed by Close: post no more
	cut    context.CancelFunc // ends the posts in flight
	wg     sync.WaitGroup
	wrote  chan struct{}
}

var _ queue.Observer = (*Sender)(nil)

type hook struct {
	Hook
	box *outbox
}

// Open opens each webhook's outbox and starts posting what waits there.
func Open(cfg Config) (*Sender, error) {
	if cfg.Timeout <= 0 {
		cfg.Timeout = 10 * time.Second
	}
	if cfg.Backoff <= 0 {
		cfg.Backoff = time.Second
	}
	if cfg.MaxBackoff < cfg.Backoff {
		cfg.MaxBackoff = max(5*time.Minute, cfg.Backoff)
	}
	if cfg.Client == nil {
		cfg.Client = &http.Client{Timeout: cfg.Timeout}
	}
	if cfg.Log == nil {
		cfg.Log = slog.New(slog.DiscardHandler)
	}
	if cfg.Count == nil {
		cfg.Count = func(string) {}
	}
	s := &Sender{cfg: cfg, events: make(chan queue.Event, 1<<12), wrote: make(chan struct{})}
	for _, h := range cfg.Hooks {
		if h.MaxQueued <= 0 {
			h.MaxQueued = 100000
		}
		// A webhook keeps its outbox while its URL stays the same.
		sum := sha256.Sum256([]byte(h.URL))
		box, err := openOutbox(filepath.Join(cfg.Dir, hex.EncodeToString(sum[:8])), h.MaxQueued)
		if err != nil {
			return nil, err
		}
		s.hooks = append(s.hooks, &hook{Hook: h, box: box})
	}
	ctx, cut := context.WithCancel(context.Background())
	s.cut, s.quit = cut, make(chan struct{})
	go s.write()
	for _, h := range s.hooks {
		s.wg.Add(1)
		go func() {
			defer s.wg.Done()
			s.post(ctx, h)
		}()
	}
	return s, nil
}

// Observe takes an event; it never waits. Those no webhook wants are
// passed over; with the buffer full, one is dropped and counted.
func (s *Sender) Observe(e queue.Event) {
	if !slices.Contains(Kinds, e.Kind) || e.Archive {
		return
	}
	select {
	case s.events <- e:
	default:
		s.cfg.Count(ResultDropped)
	}
}

// closeGrace is how long Close lets the posts in flight finish: one cut
// short after the receiver took it would be posted again at the next
// start.
const closeGrace = 5 * time.Second

// Close stops posting once the buffered events are in the outboxes and
// the posts in flight are answered (closeGrace at most); what waits stays
// in the outboxes for the next start.
func (s *Sender) Close() {
	close(s.events)
	<-s.wrote
	close(s.quit)
	done := make(chan struct{})
	go func() { s.wg.Wait(); close(done) }()
	select {
	case <-done:
	case <-time.After(closeGrace):
		s.cut()
		<-done
	}
	s.cut()
}

// write puts each event in the outbox of every webhook that wants it.
func (s *Sender) write() {
	defer close(s.wrote)
	for e := range s.events {
		var body []byte
		for _, h := range s.hooks {
			if !h.wants(e) {
				continue
			}
			if body == nil {
				body = payload(e)
			}
			dropped, err := h.box.add(body)
			if err != nil {
				s.cfg.Log.Error("webhook: cannot keep an event", "url", h.URL, "err", err)
				dropped++
			}
			for range dropped {
				s.cfg.Count(ResultDropped)
			}
		}
	}
}

// wants reports whether the webhook asked for e.
func (h *hook) wants(e queue.Event) bool {
	if len(h.Events) > 0 && !slices.Contains(h.Events, e.Kind) {
		return false
	}
	if len(h.Users) > 0 && !slices.Contains(h.Users, e.User) {
		return false
	}
	return len(h.Classes) == 0 || slices.Contains(h.Classes, e.Class)
}

// payload is the JSON of event e.
func payload(e queue.Event) []byte {
	var id [16]byte
	rand.Read(id[:])
	p := Payload{ID: hex.EncodeToString(id[:]), Event: e.Kind, Time: e.Time, QueueID: e.ID, MessageID: e.MessageID,
		From: e.From, Rcpt: e.Rcpt, User: e.User, Upstream: e.Upstream, Reply: e.Reply, Error: e.Error,
		Status: e.Status, Attempt: e.Attempt, Reason: e.Reason}
	b, err := json.Marshal(p)
	if err != nil {
		panic(fmt.Sprintf("webhook: %v", err)) // plain strings and numbers always marshal
	}
	return b
}
