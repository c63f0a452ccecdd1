package queue

import (
	"context"
	"errors"
	"fmt"
	"sort"
	"sync"
	"time"
)

// scheduler knows every message in the spool and when each is due, hands
// the due ones to a bounded pool of workers, and makes each attempt: the
// deliverer's outcomes are recorded in the message, reported to the sender
// when they are final, and saved where the message lives.
type scheduler struct {
	q *Queue

	mu       sync.Mutex
	items    map[string]*Message
	inflight map[string]bool // being delivered, or deleted by request
	// creating: committed to msg/ a moment ago and not yet added; a rescan
	// leaves it alone.
	creatingIDs map[string]bool
	// lanes: the messages waiting for an upstream's budget; not due by
	// time, but when their lane lets them go (lanes.go).
	lanes *lanes
	// after: what an administrator asked of a message that was being
	// delivered, to be done when that attempt ends.
	after map[string]adminOp
	wake  chan struct{}
}

func newScheduler(q *Queue) *scheduler {
	return &scheduler{q: q, items: map[string]*Message{}, inflight: map[string]bool{},
		creatingIDs: map[string]bool{}, lanes: newLanes(), after: map[string]adminOp{}, wake: make(chan struct{}, 1)}
}

// add schedules a new message (its NextAttempt says when).
func (s *scheduler) add(m *Message) {
	s.mu.Lock()
	s.items[m.ID] = m
	s.mu.Unlock()
	s.kick()
}

func (s *scheduler) kick() {
	select {
	case s.wake <- struct{}{}:
	default:
	}
}

func (s *scheduler) creating(id string, on bool) {
	s.mu.Lock()
	defer s.mu.Unlock()
	if on {
		s.creatingIDs[id] = true
	} else {
		delete(s.creatingIDs, id)
	}
}

// lookup reports what the scheduler knows of id.
func (s *scheduler) lookup(id string) (m *Message, busy, creating bool) {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.items[id], s.inflight[id], s.creatingIDs[id]
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
	s.kick() // its next attempt may be the earliest now
}

func (s *scheduler) forget(id string) {
	s.mu.Lock()
	delete(s.items, id)
	s.mu.Unlock()
}

// retryNow makes m due at once.
func (s *scheduler) retryNow(m *Message) {
	s.mu.Lock()
	m.NextAttempt = s.q.now()
	s.mu.Unlock()
}

// retryAll makes every message due at once, but for those being
// delivered now (a worker owns them; their next attempt follows the
// schedule in force when they are done).
func (s *scheduler) retryAll() {
	s.mu.Lock()
	now := s.q.now()
	for id, m := range s.items {
		if !s.inflight[id] {
			m.NextAttempt = now
		}
	}
	s.mu.Unlock()
	s.kick()
}

// flushLanes makes every message waiting for an upstream's budget an
// ordinary one again, due when its NextAttempt says (a node that hands
// its queue over sends it to its peers).
func (s *scheduler) flushLanes() {
	s.mu.Lock()
	s.lanes.flush()
	s.mu.Unlock()
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
		if before[id] && !seen[id] && !s.inflight[id] && !s.creatingIDs[id] && m.jseg == nil {
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
func (s *scheduler) due() ([]*Message, time.Time) {
	s.mu.Lock()
	defer s.mu.Unlock()
	now := s.q.now()
	laner := s.q.laner()
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

// stopGrace is how long the attempts in flight may go on once Run's
// context ends: most take milliseconds, and cutting one short after the
// upstream has taken the message whole would send it twice. One that
// waits on an upstream that tarpits is cut short after it, and its
// message stays queued.
const stopGrace = 5 * time.Second

var errStopping = errors.New("interrupted: the relay is stopping")

// run delivers until ctx is done, then waits for the attempts in flight,
// for stopGrace at most.
func (s *scheduler) run(ctx context.Context) {
	q := s.q
	work := make(chan *Message)
	defer s.startWorkers(work)()
	lastScan := q.now()
	var listed time.Time
	for {
		var unlisted bool
		listed, unlisted = s.listWaiting(listed)
		if q.now().Sub(lastScan) >= q.cfg.Rescan {
			if err := q.rescan(false); err != nil {
				q.log.Error("queue: rescan", "err", err)
			}
			lastScan = q.now()
		}
		due, next := s.due()
		for _, m := range due {
			select {
			case work <- m:
			case <-ctx.Done():
				s.release(m.ID)
				return
			}
		}
		if len(due) > 0 {
			continue // workers may have freed up; look again at once
		}
		wait := q.cfg.Rescan
		if !next.IsZero() {
			wait = min(wait, next.Sub(q.now()))
		}
		if unlisted {
			wait = min(wait, time.Second)
		}
		if !s.sleep(ctx, wait) {
			return
		}
	}
}

// sleep waits for wait (10 ms at least), or until woken; it reports false
// once ctx is done.
func (s *scheduler) sleep(ctx context.Context, wait time.Duration) bool {
	t := time.NewTimer(max(wait, 10*time.Millisecond))
	defer t.Stop()
	select {
	case <-ctx.Done():
		return false
	case <-s.wake:
	case <-t.C:
	}
	return true
}

// startWorkers starts the workers, each making attempts of the messages
// sent on work. The func it returns closes work and waits for the attempts
// in flight, for stopGrace at most before cutting them short.
func (s *scheduler) startWorkers(work chan *Message) (stop func()) {
	q := s.q
	attempts, cut := context.WithCancelCause(context.Background())
	// Deliveries through the routes also end when the node starts to
	// leave (Handoff): their messages go to the peers instead.
	viaRoutes, leave := context.WithCancelCause(attempts)
	unwatch := context.AfterFunc(q.leaving, func() { leave(context.Cause(q.leaving)) })
	ctxs := attemptContexts{all: attempts, routes: viaRoutes}
	var wg sync.WaitGroup
	for i := 0; i < q.cfg.Workers; i++ {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for m := range work {
				s.attempt(ctxs, m)
			}
		}()
	}
	return func() {
		close(work)
		done := make(chan struct{})
		go func() { wg.Wait(); close(done) }()
		grace := time.NewTimer(stopGrace)
		defer grace.Stop()
		select {
		case <-done:
		case <-grace.C:
			cut(errStopping)
			<-done
		}
		s.keepWaited()
		unwatch()
		leave(nil)
		cut(nil)
	}
}

// attempt makes one delivery attempt and records its outcome durably:
// deliver, record each recipient's fate, tell the sender what is final,
// then remove the message, or save its state.
func (s *scheduler) attempt(ctxs attemptContexts, m *Message) {
	q := s.q
	waits := false
	defer func() {
		if !waits {
			s.release(m.ID)
		}
	}()
	if m.jseg == nil && !q.folder.has(m.ID) {
		s.mu.Lock()
		s.lanes.back(m.ID)
		s.mu.Unlock()
		s.forget(m.ID) // deleted by an administrator since it was due
		return
	}
	out, handoff := s.deliver(ctxs, m)
	if w := onlyWaits(out); w != nil {
		waits = true
		s.wait(m, out, w)
		return
	}
	now := q.now()
	s.mu.Lock()
	if e := s.lanes.back(m.ID); e != nil {
		waited := now.Sub(e.since)
		m.Waited += waited
		if q.cfg.Shaped != nil {
			q.cfg.Shaped(e.upstream, waited)
		}
	}
	failed, fates := m.record(out, now, q.cfg.MaxAge, q.retryAfter(m.Attempts+1))
	done := len(m.Pending()) == 0
	s.mu.Unlock()
	q.tell(m, fates, now, handoff)

	if len(failed) > 0 && m.From != "" {
		if err := q.notify(m, failed, false); err != nil {
			// A bounce that cannot be queued (a full disk) must not be
			// lost: the failed recipients stay pending, so that the
			// next attempt fails them again and tries the bounce again.
			q.log.Error("queue: cannot queue bounce; will try again", "msg_id", m.ID, "err", err)
			s.mu.Lock()
			m.reopen(failed)
			done = false
			s.mu.Unlock()
		}
	}
	q.warnDelayed(m, now)
	if !done && s.applyAsked(m) {
		return
	}
	if done {
		if err := q.remove(m); err != nil {
			q.log.Error("queue: remove", "msg_id", m.ID, "err", err)
		}
		s.forget(m.ID)
		return
	}
	if err := q.save(m); err != nil {
		q.log.Error("queue: save state", "msg_id", m.ID, "err", err)
	}
}

// applyAsked does what an administrator asked of m while it was being
// delivered (manage.go), and reports whether m has left the queue.
func (s *scheduler) applyAsked(m *Message) (gone bool) {
	s.mu.Lock()
	asked, ok := s.after[m.ID]
	delete(s.after, m.ID)
	s.mu.Unlock()
	if !ok {
		return false
	}
	gone, err := s.q.apply(asked, m)
	if err != nil {
		s.q.log.Error("queue: "+asked.op, "msg_id", m.ID, "err", err)
	}
	return gone
}

// attemptContexts are what delivery attempts run under: all of them end a
// while after a stop (run), and those through the routes also when the node
// starts to leave.
type attemptContexts struct{ all, routes context.Context }

// deliver hands m's pending recipients to the deliverer and returns one
// outcome for each, and whether they went to the peers (Handoff).
func (s *scheduler) deliver(ctxs attemptContexts, m *Message) (out []Outcome, handoff bool) {
	pending := m.Pending()
	if len(pending) == 0 {
		return nil, false
	}
	d, routes := s.q.deliverer()
	ctx := ctxs.all
	if routes {
		ctx = ctxs.routes
	}
	out = d.Deliver(ctx, m)
	if len(out) != len(pending) {
		out = Failed(len(pending), fmt.Errorf("queue: deliverer gave %d outcomes for %d recipients", len(out), len(pending)))
	}
	return out, !routes
}
