package queue

import (
	"crypto/rand"
	"encoding/hex"
	"errors"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"strings"
	"time"
)

// Status of one recipient.
const (
	StatusPending = "pending"
	StatusSent    = "sent"
	StatusFailed  = "failed"
)

// Recipient is one envelope recipient and what became of it.
type Recipient struct {
	Addr   string   `json:"addr"`
	Status string   `json:"status"`
	Error  string   `json:"error,omitempty"`
	Notify []string `json:"notify,omitempty"` // DSN NOTIFY (RFC 3461)
	ORcpt  string   `json:"orcpt,omitempty"`  // DSN ORCPT address
	// ORcptType is ORCPT's address type: "utf-8" (RFC 6533), or "" for
	// rfc822 (also in spools from before it was kept).
	ORcptType string `json:"orcpt_type,omitempty"`
	// Archive marks a copy for the archive (always_bcc): its failures
	// never reach the sender, and it is retried, whatever the upstream
	// answers, until the queue's max_age.
	Archive bool `json:"archive,omitempty"`
	// Upstreams, when set, replace the routes' failover list for this
	// recipient (an archive copy's own route).
	Upstreams []string `json:"upstreams,omitempty"`
	// LastUpstream is the upstream of its last attempt ("queue list
	// --upstream").
	LastUpstream string `json:"last_upstream,omitempty"`
}

// ArchiveCopy is an archive recipient added to a message and the upstreams
// it goes through (none: the routes decide).
type ArchiveCopy struct {
	Addr      string
	Upstreams []string
}

// Envelope is what a message is committed with.
type Envelope struct {
	From   string
	To     []string
	Class  string     // the submitter's rate-limit class, for routes
	User   string     // the submitter, for fairness among users
	Ret    string     // DSN RET: FULL or HDRS
	EnvID  string     // DSN ENVID
	Notify [][]string // DSN NOTIFY per recipient of To (nil: none given)
	ORcpt  []string   // DSN ORCPT per recipient of To
	// ORcptType per recipient of To: "utf-8", or "rfc822" or "".
	ORcptType []string
	// SMTPUTF8: the client sent MAIL ... SMTPUTF8 (RFC 6531), which goes
	// upstream with the message. UTF8Required: the message needs it (a
	// UTF-8 address or header); one that does not may also go to an
	// upstream without SMTPUTF8.
	SMTPUTF8, UTF8Required bool
	// Archive copies, recipients the message's recipients never see.
	Archive []ArchiveCopy
	// For the log and the message's history: the Message-ID header field,
	// the client's address, and the DKIM keys that signed it
	// (domain/selector; not kept with the message).
	MessageID, Client string
	DKIM              []string
}

// Message is one spooled message.
type Message struct {
	ID          string      `json:"id"`
	From        string      `json:"from"` // "" for a bounce
	Class       string      `json:"class,omitempty"`
	User        string      `json:"user,omitempty"` // who sent it: fairness among users waiting for an upstream
	Ret         string      `json:"ret,omitempty"`
	EnvID       string      `json:"envid,omitempty"`
	SMTPUTF8    bool        `json:"smtputf8,omitempty"`      // see Envelope
	UTF8        bool        `json:"utf8_required,omitempty"` // Envelope.UTF8Required
	Recipients  []Recipient `json:"recipients"`
	Prepend     string      `json:"prepend"` // header fields sent before the data
	Size        int64       `json:"size"`    // of the data file
	Created     time.Time   `json:"created"`
	Attempts    int         `json:"attempts"`
	NextAttempt time.Time   `json:"next_attempt"`
	LastError   string      `json:"last_error,omitempty"`
	Warned      bool        `json:"warned,omitempty"` // a delay warning was sent
	// Waited is the time it spent waiting for an upstream's budget (a
	// WaitError), which does not count towards max_age.
	Waited    time.Duration `json:"waited,omitempty"`
	MessageID string        `json:"message_id,omitempty"`
	Client    string        `json:"client,omitempty"` // from where it was submitted
	// HeldSince is when an administrator put it on hold (zero: not held);
	// HeldFor the time it spent on hold before, which does not count
	// towards max_age or the delay warning either.
	HeldSince time.Time     `json:"held_since,omitzero"`
	HeldFor   time.Duration `json:"held_for,omitempty"`

	dir   string
	saved bool // an ID.env may exist: remove() must look for one
	// In the journal: the file and the offset of the data; nil once the
	// message is in msg/.
	jseg *segment
	joff int64
}

// PendingRecipients are the recipients still to be delivered, in envelope
// order, with their DSN parameters (archive copies included).
func (m *Message) PendingRecipients() []Recipient {
	var p []Recipient
	for _, r := range m.Recipients {
		if r.Status == StatusPending {
			p = append(p, r)
		}
	}
	return p
}

// Pending lists the recipients still to be delivered, in envelope order.
func (m *Message) Pending() []string {
	var p []string
	for _, r := range m.Recipients {
		if r.Status == StatusPending {
			p = append(p, r.Addr)
		}
	}
	return p
}

// Open returns the message as it is to be sent: the prepended header fields
// and then the data, byte for byte.
func (m *Message) Open() (io.ReadCloser, error) {
	if m.jseg != nil {
		return io.NopCloser(io.MultiReader(strings.NewReader(m.Prepend), io.NewSectionReader(m.jseg.f, m.joff, m.Size))), nil
	}
	f, err := os.Open(m.dataPath())
	if err != nil {
		return nil, fmt.Errorf("queue: open %s: %w", m.ID, err)
	}
	return struct {
		io.Reader
		io.Closer
	}{io.MultiReader(strings.NewReader(m.Prepend), io.LimitReader(f, m.Size)), f}, nil
}

func (m *Message) dataPath() string { return filepath.Join(m.dir, "msg", m.ID+".data") }

func (m *Message) envPath() string { return filepath.Join(m.dir, "msg", m.ID+".env") }

func newID() string {
	var b [10]byte
	if _, err := rand.Read(b[:]); err != nil {
		panic("queue: no randomness: " + err.Error())
	}
	return strings.ToUpper(hex.EncodeToString(b[:]))
}

func validID(id string) bool {
	if len(id) != 20 {
		return false
	}
	_, err := hex.DecodeString(id)
	return err == nil
}

// record applies the outcomes of one attempt (one per pending recipient,
// in order) and schedules the next after retry: a recipient is sent, fails
// for good (a permanent error, or any once maxAge has passed, not counting
// the time it waited for an upstream's budget or was on hold), or stays
// pending (one that waited, a WaitError, as it was). It returns those that
// failed and are the sender's to hear of (an archive copy is not: it fails
// only at maxAge, and then only in the log), and what happened to each
// recipient tried, for the log and the events.
func (m *Message) record(out []Outcome, now time.Time, maxAge, retry time.Duration) (failed []Recipient, fates []fate) {
	expired := m.age(now) >= maxAge
	m.Attempts++
	i := 0
	for j := range m.Recipients {
		r := &m.Recipients[j]
		if r.Status != StatusPending {
			continue
		}
		o := out[i]
		i++
		if o.Upstream != "" {
			r.LastUpstream = o.Upstream
		}
		err := o.Err
		f := fate{rcpt: *r, o: o, kind: EventDeferred, attempt: m.Attempts}
		switch {
		case err == nil:
			r.Status, r.Error = StatusSent, ""
			f.kind = EventDelivered
		case IsWait(err):
			continue // not tried: its upstream had no room for it
		case expired || IsPermanent(err) && !r.Archive:
			r.Status, r.Error = StatusFailed, err.Error()
			f.kind, f.reason = EventBounced, bounceReason(err)
			if expired {
				r.Error = fmt.Sprintf("gave up after %s: %v", maxAge, err)
				f.reason = BounceExpired
			}
			if !r.Archive {
				failed = append(failed, *r)
			}
		default:
			r.Error = err.Error()
			m.LastError = err.Error()
		}
		fates = append(fates, f)
	}
	m.NextAttempt = now.Add(retry)
	return failed, fates
}

// age is how long m has waited for delivery: since it arrived, but for
// the time it was on hold or waited for an upstream's budget.
func (m *Message) age(now time.Time) time.Duration {
	held := m.HeldFor
	if !m.HeldSince.IsZero() {
		held += now.Sub(m.HeldSince)
	}
	return now.Sub(m.Created) - held - m.Waited
}

// fate is what became of one recipient in an attempt: kind is
// EventDelivered, EventDeferred or EventBounced (with reason).
type fate struct {
	rcpt    Recipient
	o       Outcome
	kind    string
	reason  string
	attempt int
	by      string // who asked, for an administrator's bounce
}

// bounceReason tells an upstream's refusal from ours (unsupported: no
// upstream of the route could take the message).
func bounceReason(err error) string {
	var u *UnsupportedError
	if errors.As(err, &u) {
		return BounceUnsupported
	}
	return BounceRefused
}

// UnsupportedError marks a permanent failure that is not an upstream's
// refusal: no upstream of the route can take the message (it needs
// SMTPUTF8, or is larger than they take).
type UnsupportedError struct{ Err error }

func (e *UnsupportedError) Error() string { return e.Err.Error() }

func (e *UnsupportedError) Unwrap() error { return e.Err }

// reopen makes failed recipients pending again (their bounce could not be
// queued), keeping the error they failed with.
func (m *Message) reopen(failed []Recipient) {
	for _, f := range failed {
		for j := range m.Recipients {
			if r := &m.Recipients[j]; r.Addr == f.Addr && r.Status == StatusFailed {
				r.Status = StatusPending
			}
		}
	}
}

// senderRecipients are the pending recipients the sender knows of: not the
// archive copies (for delay warnings).
func (m *Message) senderRecipients() []Recipient {
	var p []Recipient
	for _, r := range m.Recipients {
		if r.Status == StatusPending && !r.Archive {
			p = append(p, r)
		}
	}
	return p
}
