package queue

import (
	"encoding/json"
	"errors"
	"fmt"
	"sort"
	"time"
)

// What an administrator does to queued messages (Queue.Manage), as
// Postfix's postsuper -h, -H and -d do, and a bounce now.
const (
	OpHold    = "hold"    // not attempted, and not ageing, until released
	OpRelease = "release" // attempted again at once
	OpDelete  = "delete"  // removed without a bounce
	OpBounce  = "bounce"  // its pending recipients fail now, with a DSN to the sender
)

// adminBounceText is the failure of a recipient an administrator bounced.
const adminBounceText = "5.0.0 returned to the sender by the administrator"

// Queued is a copy of one queued message, with its state.
type Queued struct {
	Message
	State string `json:"state"`
	// Waiting is what the message waits for, when it waits for an
	// upstream's limits: "waiting for upstream rate (NAME)" and the like.
	Waiting string `json:"waiting,omitempty"`
}

// List returns copies of the queued messages f picks, oldest first.
func (q *Queue) List(f Filter) []Queued {
	now := q.now()
	var out []Queued
	q.sched.each(func(m *Message, inflight bool) {
		state := m.State(inflight)
		if f.Match(m, state, now) {
			out = append(out, Queued{Message: m.view(), State: state, Waiting: q.sched.lanes.waitingFor(m.ID)})
		}
	})
	sort.Slice(out, func(i, j int) bool { return out[i].Created.Before(out[j].Created) })
	return out
}

// view is a copy of m's state, for the caller to hold the scheduler's
// lock over: the fields of its files, which change under that lock only.
// (Its own fields, such as saved, are the worker's that owns it: a plain
// copy of the struct would race with it.)
func (m *Message) view() Message {
	b, err := json.Marshal(m)
	var c Message
	if err == nil {
		err = json.Unmarshal(b, &c)
	}
	if err != nil {
		panic(fmt.Sprintf("queue: copy %s: %v", m.ID, err)) // its fields are plain values
	}
	return c
}

// Manage does op (OpHold, OpRelease, OpDelete, OpBounce) to every message f
// picks, for by (who asked, for the history), and returns their IDs. A
// message being delivered right now gets it as soon as that attempt ends.
// An empty filter picks nothing: every message must be asked for.
func (q *Queue) Manage(op string, f Filter, by string) ([]string, error) {
	switch op {
	case OpHold, OpRelease, OpDelete, OpBounce:
	default:
		return nil, fmt.Errorf("queue: unknown operation %q", op)
	}
	if f.Empty() {
		return nil, fmt.Errorf("queue: %s needs a queue ID or a filter", op)
	}
	var ids []string
	for _, m := range q.List(f) {
		ids = append(ids, m.ID)
	}
	var done []string
	var firstErr error
	for _, id := range ids {
		acted, err := q.manageOne(op, id, by)
		if err != nil && firstErr == nil {
			firstErr = err
		}
		if acted {
			done = append(done, id)
		}
	}
	return done, firstErr
}

// manageOne does op to message id, now or after the attempt in flight.
func (q *Queue) manageOne(op, id, by string) (bool, error) {
	s := q.sched
	m, claimed := s.claimOrAsk(id, adminOp{op, by})
	if m == nil {
		return false, nil // delivered meanwhile
	}
	if !claimed {
		return true, nil // done when the attempt in flight ends
	}
	defer s.release(id)
	gone, err := q.apply(adminOp{op, by}, m)
	if err == nil && !gone {
		err = q.save(m)
	}
	return err == nil, err
}

// adminOp is an operation asked for and who asked.
type adminOp struct{ op, by string }

// apply does an administrator's operation to m, which the caller has
// claimed. It reports whether m has left the queue; if not, the caller
// saves its state.
func (q *Queue) apply(a adminOp, m *Message) (gone bool, err error) {
	s, now := q.sched, q.now()
	e := m.event("", now)
	e.By = a.by
	switch a.op {
	case OpHold:
		if !m.HeldSince.IsZero() {
			return false, nil
		}
		s.change(func() { m.HeldSince = now })
		e.Kind = EventHeld
	case OpRelease:
		if m.HeldSince.IsZero() {
			return false, nil
		}
		s.change(func() {
			m.HeldFor += now.Sub(m.HeldSince)
			m.HeldSince, m.NextAttempt = time.Time{}, now
		})
		e.Kind = EventReleased
	case OpDelete:
		if err := q.remove(m); err != nil {
			return false, err
		}
		s.forget(m.ID)
		e.Kind = EventDeleted
		q.log.Info("queue: message deleted by request", "msg_id", m.ID, "by", a.by)
		q.observe(e)
		return true, nil
	case OpBounce:
		return q.bounceNow(m, a.by)
	}
	q.log.Info("queue: message "+e.Kind+" by request", "msg_id", m.ID, "by", a.by)
	q.observe(e)
	return false, nil
}

// bounceNow fails m's pending recipients (but archive copies, which go on)
// and returns the message to its sender with a DSN.
func (q *Queue) bounceNow(m *Message, by string) (gone bool, err error) {
	s, now := q.sched, q.now()
	var failed []Recipient
	var fates []fate
	s.change(func() {
		for j := range m.Recipients {
			r := &m.Recipients[j]
			if r.Status != StatusPending || r.Archive {
				continue
			}
			r.Status, r.Error = StatusFailed, adminBounceText
			failed = append(failed, *r)
			fates = append(fates, fate{rcpt: *r, o: Outcome{Err: Permanent(errors.New(adminBounceText))}, kind: EventBounced, reason: BounceAdmin, attempt: m.Attempts, by: by})
		}
	})
	q.tell(m, fates, now, false)
	if len(failed) > 0 && m.From != "" {
		if err := q.notify(m, failed, false); err != nil {
			s.reopen(m, failed)
			return false, fmt.Errorf("queue: bounce %s: %w", m.ID, err)
		}
	}
	q.log.Info("queue: message bounced by request", "msg_id", m.ID, "by", by, "recipients", len(failed))
	if len(m.Pending()) > 0 {
		return false, nil
	}
	if err := q.remove(m); err != nil {
		return false, err
	}
	s.forget(m.ID)
	return true, nil
}

// Summary is the queue at a glance, for the status page.
type Summary struct {
	Messages   int
	ByState    map[string]int // messages
	ByUpstream map[string]int // messages with a pending recipient last tried there ("": not yet tried)
	Oldest     time.Time      // arrival of the oldest message not on hold
	OldestID   string
}

// Summarize counts the queue by state and upstream.
func (q *Queue) Summarize() Summary {
	s := q.sched
	sum := Summary{ByState: map[string]int{}, ByUpstream: map[string]int{}}
	s.each(func(m *Message, inflight bool) {
		sum.Messages++
		state := m.State(inflight)
		sum.ByState[state]++
		ups := map[string]bool{}
		for _, r := range m.Recipients {
			if r.Status == StatusPending {
				ups[r.LastUpstream] = true
			}
		}
		for u := range ups {
			sum.ByUpstream[u]++
		}
		if state != StateHeld && (sum.Oldest.IsZero() || m.Created.Before(sum.Oldest)) {
			sum.Oldest, sum.OldestID = m.Created, m.ID
		}
	})
	return sum
}
