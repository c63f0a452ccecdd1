package queue

import (
	"context"
	"sort"
	"sync"
	"time"
)

// scheduler knows every message in the spool, when each is due and which
// are in flight, and the lanes of those waiting for an upstream's budget.
// It is state under one lock and holds no *Queue: the queue's files call
// it (attempt.go, manage.go, queue.go, draft.go), never the other way.
type scheduler struct {
	now func() time.Time

	mu       sync.Mutex
	items    map[string]*Message
	inflight map[string]bool // being delivered, or deleted by request
	// committing: being renamed into msg/ and not yet added; a rescan
	// leaves it alone.
	committing map[string]bool
	// lanes: the messages waiting for an upstream's budget; not due by
	// time, but when their lane lets them go (lanes.go).
	lanes *lanes
	// after: what an administrator asked of a message that was being
	// delivered, to be done when that attempt ends.
	after map[string]adminOp
	woken chan struct{} // has the run loop look again at once
}

func newScheduler(now func() time.Time) *scheduler {
	return &scheduler{now: now, items: map[string]*Message{}, inflight: map[string]bool{},
		committing: map[string]bool{}, lanes: newLanes(), after: map[string]adminOp{}, woken: make(chan struct{}, 1)}
}

// add schedules a new message (its NextAttempt says when).
func (s *scheduler) add(m *Message) {
	s.mu.Lock()
	s.items[m.ID] = m
	s.mu.Unlock()
	s.wake()
}

// wake has the run loop look at the schedule again now.
func (s *scheduler) wake() {
	select {
	case s.woken <- struct{}{}:
	default:
	}
}

// commit runs rename, which moves message id into msg/, with id marked
// as being committed, so that a rescan that finds it there before it is
// added leaves it alone.
func (s *scheduler) commit(id string, rename func() error) error {
	s.mu.Lock()
	s.committing[id] = true
	s.mu.Unlock()
	defer func() {
		s.mu.Lock()
		delete(s.committing, id)
		s.mu.Unlock()
	}()
	return rename()
}

// lookup reports what the scheduler knows of id.
func (s *scheduler) lookup(id string) (m *Message, busy, committing bool) {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.items[id], s.inflight[id], s.committing[id]
}

// claim marks id in flight unless it is already; it reports whether it
// did. A claimed message is never handed to a worker.
func (s *scheduler) claim(id string) bool {
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.inflight[id] {
		return false
	}
	s.inflight[id] = true
	return true
}

func (s *scheduler) release(id string) {
	s.mu.Lock()
	delete(s.inflight, id)
	s.mu.Unlock()
	s.wake() // its next attempt may be the earliest now
}

// finish ends a worker's claim on id, unless an administrator asked
// something of it since the attempt last looked (manage.go): then it
// returns that, and the claim stays for the caller to do it first. So an
// operation asked for in flight is never left waiting for the next
// attempt.
func (s *scheduler) finish(id string) (adminOp, bool) {
	s.mu.Lock()
	a, ok := s.after[id]
	if ok {
		delete(s.after, id)
	} else {
		delete(s.inflight, id)
	}
	s.mu.Unlock()
	if !ok {
		s.wake() // its next attempt may be the earliest now
	}
	return a, ok
}

func (s *scheduler) forget(id string) {
	s.mu.Lock()
	delete(s.items, id)
	s.mu.Unlock()
}

// retryNow makes m due at once.
func (s *scheduler) retryNow(m *Message) {
	s.mu.Lock()
	m.NextAttempt = s.now()
	s.mu.Unlock()
}

// retryAll makes every message due at once, but for those being
// delivered now (a worker owns them; their next attempt follows the
// schedule in force when they are done).
func (s *scheduler) retryAll() {
	s.mu.Lock()
	now := s.now()
	for id, m := range s.items {
		if !s.inflight[id] {
			m.NextAttempt = now
		}
	}
	s.mu.Unlock()
	s.wake()
}

// flushLanes makes every message waiting for an upstream's budget an
// ordinary one again, due when its NextAttempt says (a node that hands
// its queue over sends it to its peers).
func (s *scheduler) flushLanes() []*entry {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.lanes.flush()
}

// ids lists the messages known now.
func (s *scheduler) ids() map[string]bool {
	s.mu.Lock()
	defer s.mu.Unlock()
	out := make(map[string]bool, len(s.items))
	for id := range s.items {
		out[id] = true
	}
	return out
}

// dropGone forgets the messages of before that are no longer in msg/
// (seen), when nothing else accounts for them: deleted by an
// administrator. It returns them.
func (s *scheduler) dropGone(before, seen map[string]bool) (gone []*Message) {
	s.mu.Lock()
	defer s.mu.Unlock()
	for id, m := range s.items {
		if before[id] && !seen[id] && !s.inflight[id] && !s.committing[id] && m.jseg == nil {
			delete(s.items, id)
			gone = append(gone, m)
		}
	}
	return gone
}

func (s *scheduler) len() int {
	s.mu.Lock()
	defer s.mu.Unlock()
	return len(s.items)
}

// held counts the messages on hold.
func (s *scheduler) held() int {
	s.mu.Lock()
	defer s.mu.Unlock()
	n := 0
	for _, m := range s.items {
		if !m.HeldSince.IsZero() {
			n++
		}
	}
	return n
}

func (s *scheduler) oldest() time.Time {
	s.mu.Lock()
	defer s.mu.Unlock()
	var t time.Time
	for _, m := range s.items {
		if !m.HeldSince.IsZero() {
			continue // parked on purpose
		}
		if t.IsZero() || m.Created.Before(t) {
			t = m.Created
		}
	}
	return t
}

// due claims and returns the messages whose time has come: those their
// lanes let go, then the rest oldest first; and the time of the next one
// after them. A message due for a lane whose messages wait joins them.
func (s *scheduler) due(laner Laner) ([]*Message, time.Time) {
	s.mu.Lock()
	defer s.mu.Unlock()
	now := s.now()
	var due []*Message
	var next time.Time
	for id, m := range s.items {
		if s.inflight[id] || s.lanes.has(id) || !m.HeldSince.IsZero() {
			continue
		}
		if !m.NextAttempt.After(now) {
			if laner != nil {
				if key, p := laner.Lane(m); key != "" && s.lanes.waiting(key) {
					s.lanes.join(m, key, p, now)
					continue
				}
			}
			due = append(due, m)
		} else if next.IsZero() || m.NextAttempt.Before(next) {
			next = m.NextAttempt
		}
	}
	sort.Slice(due, func(i, j int) bool { return due[i].NextAttempt.Before(due[j].NextAttempt) })
	let, ready := s.lanes.release(now, func(m *Message) bool {
		// Not one deleted, on hold, or in an administrator's hands.
		return s.items[m.ID] == m && !s.inflight[m.ID] && m.HeldSince.IsZero()
	})
	if !ready.IsZero() && (next.IsZero() || ready.Before(next)) {
		next = ready
	}
	due = append(let, due...)
	for _, m := range due {
		s.inflight[m.ID] = true
	}
	return due, next
}

// sleep waits for wait (10 ms at least), or until woken; it reports false
// once ctx is done.
func (s *scheduler) sleep(ctx context.Context, wait time.Duration) bool {
	t := time.NewTimer(max(wait, 10*time.Millisecond))
	defer t.Stop()
	select {
	case <-ctx.Done():
		return false
	case <-s.woken:
	case <-t.C:
	}
	return true
}

// drop forgets m, deleted by an administrator since it was due.
func (s *scheduler) drop(m *Message) {
	s.mu.Lock()
	s.lanes.back(m.ID)
	delete(s.items, m.ID)
	s.mu.Unlock()
}

// record applies an attempt's outcomes to m (record in message.go) under
// the lock its readers take, and takes it out of its lane if it waited in
// one: it returns the lane's upstream and how long m waited there.
func (s *scheduler) record(m *Message, out []Outcome, now time.Time, maxAge, retry time.Duration) (rec recorded, upstream string, waited time.Duration) {
	s.mu.Lock()
	defer s.mu.Unlock()
	if e := s.lanes.back(m.ID); e != nil {
		upstream, waited = e.upstream, now.Sub(e.since)
		m.Waited += waited
	}
	rec.failed, rec.fates = m.record(out, now, maxAge, retry)
	rec.done = len(m.Pending()) == 0
	return rec, upstream, waited
}

// recorded is what an attempt's outcomes made of a message: the
// recipients that failed for good, what became of each, and whether none
// is left pending.
type recorded struct {
	failed []Recipient
	fates  []fate
	done   bool
}

// reopen makes failed pending again in m (their bounce could not be
// queued).
func (s *scheduler) reopen(m *Message, failed []Recipient) {
	s.mu.Lock()
	m.reopen(failed)
	s.mu.Unlock()
}

// asked returns, and forgets, what an administrator asked of message id
// while it was being delivered (manage.go).
func (s *scheduler) asked(id string) (adminOp, bool) {
	s.mu.Lock()
	defer s.mu.Unlock()
	a, ok := s.after[id]
	delete(s.after, id)
	return a, ok
}

// change runs f, which changes messages the scheduler knows (their
// recipients, hold, next attempt), under the lock their readers take.
func (s *scheduler) change(f func()) {
	s.mu.Lock()
	defer s.mu.Unlock()
	f()
}

// each calls f for every message known, and whether it is in flight,
// under the lock: f must not call the scheduler.
func (s *scheduler) each(f func(m *Message, inflight bool)) {
	s.mu.Lock()
	defer s.mu.Unlock()
	for id, m := range s.items {
		f(m, s.inflight[id])
	}
}

// knows reports whether m is still the message known by its ID (not
// delivered and removed meanwhile).
func (s *scheduler) knows(m *Message) bool {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.items[m.ID] == m
}

// claimOrAsk claims message id for an administrator's operation a; if an
// attempt has it in flight, a is kept for that attempt to do when it ends
// (asked). It returns the message (nil: not known) and whether the caller
// claimed it.
func (s *scheduler) claimOrAsk(id string, a adminOp) (m *Message, claimed bool) {
	s.mu.Lock()
	defer s.mu.Unlock()
	m = s.items[id]
	if m == nil {
		return nil, false
	}
	if s.inflight[id] {
		s.after[id] = a
		return m, false
	}
	s.inflight[id] = true
	return m, true
}

// park puts m, in flight, in its lane (shaping.go), under one lock, so
// that the lane cannot let it go while a worker still holds it.
func (s *scheduler) park(m *Message, w *WaitError, now time.Time) {
	s.mu.Lock()
	s.lanes.park(m, w, now)
	delete(s.inflight, m.ID)
	s.mu.Unlock()
	s.wake()
}

// laneStatus lists the lanes; with changedOnly, only if they changed
// since it last did (ok false otherwise).
func (s *scheduler) laneStatus(changedOnly bool) (st []LaneStatus, ok bool) {
	s.mu.Lock()
	defer s.mu.Unlock()
	if changedOnly && !s.lanes.dirty {
		return nil, false
	}
	if changedOnly {
		s.lanes.dirty = false
	}
	return s.lanes.status(), true
}

// laneChanged reports whether the lanes changed since laneStatus last
// listed them.
func (s *scheduler) laneChanged() bool {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.lanes.dirty
}
