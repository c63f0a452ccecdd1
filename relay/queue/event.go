package queue

import (
	"crypto/tls"
	"strconv"
	"strings"
	"time"
)

// What happens to a message, as events: the message's history (relay/history)
// and delivery webhooks (relay/webhook) are made of them.
const (
	EventAccepted  = "accepted"   // queued: the client got 250
	EventSigned    = "signed"     // DKIM-signed (Event.DKIM names the keys)
	EventDelivered = "delivered"  // an upstream took a recipient
	EventDeferred  = "deferred"   // an attempt failed for now; it will be retried
	EventBounced   = "bounced"    // a recipient failed for good (Event.Reason says why)
	EventDelayed   = "delayed"    // still pending after queue.delay_warning
	EventHandedOff = "handed_off" // a peer took a recipient (drain, queue handoff)
	EventDSN       = "dsn"        // a delivery status notification to the sender was queued as Event.DSNID
	EventHeld      = "held"       // put on hold by an administrator
	EventReleased  = "released"   // released from hold by an administrator
	EventDeleted   = "deleted"    // deleted by an administrator, without a bounce
	EventRetry     = "retry"      // an attempt asked for now by an administrator (smarthost queue retry)
)

// Why a recipient bounced (Event.Reason of EventBounced; the reason label
// of smarthost_bounces_total).
const (
	BounceRefused     = "refused"     // an upstream refused it for good (5xx)
	BounceUnsupported = "unsupported" // no upstream of its route can take it (SMTPUTF8, size)
	BounceExpired     = "expired"     // still pending at queue.max_age
	BounceAdmin       = "admin"       // returned by an administrator (queue bounce)
)

// Event is one thing that happened to a message. Every event carries the
// message's queue ID, Message-ID, sender and submitter, so that each is
// found by any of them on its own.
type Event struct {
	Time      time.Time `json:"time"`
	Kind      string    `json:"event"`
	ID        string    `json:"queue_id"`
	MessageID string    `json:"message_id,omitempty"`
	From      string    `json:"from"`
	User      string    `json:"user,omitempty"`
	Class     string    `json:"class,omitempty"`
	// Rcpt is the recipient of a per-recipient event; Rcpts every
	// recipient, on EventAccepted.
	Rcpt    string   `json:"rcpt,omitempty"`
	Rcpts   []string `json:"rcpts,omitempty"`
	Archive bool     `json:"archive,omitempty"` // Rcpt is an archive copy
	Client  string   `json:"client,omitempty"`  // the submitting client's address
	Size    int64    `json:"size,omitempty"`
	DKIM    []string `json:"dkim,omitempty"` // domain/selector of each signature
	// The attempt: the upstream, the address it was reached at, the TLS
	// version, and its reply as it was sent ("250 2.0.0 Ok: queued as
	// 4ZxY"); Error when the failure was ours or the connection's, not a
	// reply.
	Attempt  int    `json:"attempt,omitempty"`
	Upstream string `json:"upstream,omitempty"`
	Addr     string `json:"upstream_addr,omitempty"`
	TLS      string `json:"tls,omitempty"`
	Reply    string `json:"reply,omitempty"`
	Error    string `json:"error,omitempty"`
	Status   string `json:"dsn,omitempty"` // the DSN status: 2.0.0, 4.4.1, 5.1.1
	Reason   string `json:"reason,omitempty"`
	// Delays in seconds: since arrival, of which waiting in the queue
	// and in transfer to the upstream.
	Delay         float64 `json:"delay,omitempty"`
	DelayQueue    float64 `json:"delay_queue,omitempty"`
	DelayTransfer float64 `json:"delay_transfer,omitempty"`
	DSNID         string  `json:"dsn_id,omitempty"` // EventDSN: the notification's queue ID
	By            string  `json:"by,omitempty"`     // who asked (administrative events)
}

// Observer is told of every event of every message. Observe is called on
// the submission and delivery paths: it must return at once.
type Observer interface {
	Observe(Event)
}

// Observers tells each of its observers.
type Observers []Observer

func (o Observers) Observe(e Event) {
	for _, x := range o {
		x.Observe(e)
	}
}

// Outcome is what became of one recipient in one delivery attempt.
type Outcome struct {
	Err      error  // nil: the upstream took it
	Upstream string // the upstream (or peer) that answered last; "" if none was reached
	Addr     string // the address connected to
	TLS      string // TLS version, as TLSVersion names it; "" without TLS
	// Reply is the upstream's reply about this recipient as it was sent,
	// codes included, lines joined by "\n": for a recipient taken, the
	// reply to the message, which carries the upstream's own queue ID.
	Reply string
	Took  time.Duration // in transfer to the upstream
}

// Failed makes outcomes that are err for each of n recipients, from no
// upstream.
func Failed(n int, err error) []Outcome {
	out := make([]Outcome, n)
	for i := range out {
		out[i].Err = err
	}
	return out
}

// event is an event about m, with the fields every event has.
func (m *Message) event(kind string, now time.Time) Event {
	return Event{Time: now, Kind: kind, ID: m.ID, MessageID: m.MessageID, From: m.From, User: m.User, Class: m.Class}
}

// observe tells the observer, if any.
func (q *Queue) observe(e Event) {
	if q.cfg.Observer != nil {
		q.cfg.Observer.Observe(e)
	}
}

// statusOf is the DSN status of an outcome of kind (EventDelivered,
// EventDeferred, EventBounced): the enhanced code in its text, of the
// kind's class, or the class's default.
func statusOf(kind, text string) string {
	class, dflt := "2", "2.0.0"
	switch kind {
	case EventDeferred:
		class, dflt = "4", "4.4.1" // no answer, or none that said more
	case EventBounced:
		class, dflt = "5", "5.0.0"
	}
	if code := enhancedIn(text); code != "" {
		return class + code[1:]
	}
	return dflt
}

// enhancedIn finds the first enhanced status code (RFC 3463) in an SMTP
// reply or error text: "" when there is none. A code may end in
// punctuation ("5.1.1:"); an address such as 10.1.2.3 is not one.
func enhancedIn(text string) string {
	for _, f := range strings.Fields(text) {
		f = strings.TrimRight(f, ",;:)")
		parts := strings.Split(f, ".")
		if len(parts) != 3 || (parts[0] != "2" && parts[0] != "4" && parts[0] != "5") {
			continue
		}
		ok := true
		for _, p := range parts[1:] {
			if _, err := strconv.Atoi(p); err != nil || len(p) > 3 || p[0] == '+' || p[0] == '-' {
				ok = false
			}
		}
		if ok {
			return f
		}
	}
	return ""
}

func seconds(d time.Duration) float64 { return d.Round(time.Millisecond).Seconds() }

// accepted tells the observer of a message just committed.
func (q *Queue) accepted(m *Message, dkim []string) {
	if q.cfg.Observer == nil {
		return
	}
	e := m.event(EventAccepted, m.Created)
	e.Client, e.Size = m.Client, m.Size
	for _, r := range m.Recipients {
		e.Rcpts = append(e.Rcpts, r.Addr)
	}
	q.observe(e)
	if len(dkim) > 0 {
		s := m.event(EventSigned, m.Created)
		s.DKIM = dkim
		q.observe(s)
	}
}

// TLSVersion names a TLS version as OpenSSL and Postfix do (TLSv1.3), in
// the delivery log and in the Received header, where tools that read
// Postfix's look for it; tls.VersionName says "TLS 1.3".
func TLSVersion(v uint16) string {
	return strings.Replace(tls.VersionName(v), "TLS 1", "TLSv1", 1)
}
