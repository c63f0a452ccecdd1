package queue

import (
	"context"
	"errors"
	"fmt"
	"sync"
	"time"
)

// The walk of a delivery attempt goes one way, from this file down: Run
// hands the messages the scheduler says are due to the workers; attempt
// asks the deliverer, has the scheduler record the outcomes in the message
// (message.go), tells the observer (event.go) and the sender (bounce.go),
// then removes the message or saves its state where it lives (remove and
// save in persist.go: the journal or msg/). None of those calls back
// up here.

// stopGrace is how long the attempts in flight may go on once Run's
// context ends: most take milliseconds, and cutting one short after the
// upstream has taken the message whole would send it twice. One that
// waits on an upstream that tarpits is cut short after it, and its
// message stays queued.
const stopGrace = 5 * time.Second

var errStopping = errors.New("interrupted: the relay is stopping")

// Run delivers until ctx is done, then waits for the attempts in flight,
// for stopGrace at most.
func (q *Queue) Run(ctx context.Context) error {
	s := q.sched
	work := make(chan *Message)
	defer q.startWorkers(work)()
	lastScan := q.now()
	var listed time.Time
	for {
		var unlisted bool
		listed, unlisted = q.listWaiting(listed)
		if q.now().Sub(lastScan) >= q.cfg.Rescan {
			if err := q.rescan(false); err != nil {
				q.log.Error("queue: rescan", "err", err)
			}
			lastScan = q.now()
		}
		due, next := s.due(q.laner())
		for _, m := range due {
			select {
			case work <- m:
			case <-ctx.Done():
				s.release(m.ID)
				return nil
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
			return nil
		}
	}
}

// startWorkers starts the workers, each making attempts of the messages
// sent on work. The func it returns closes work and waits for the attempts
// in flight, for stopGrace at most before cutting them short.
func (q *Queue) startWorkers(work chan *Message) (stop func()) {
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
				q.attempt(ctxs, m)
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
		q.keepWaited()
		unwatch()
		leave(nil)
		cut(nil)
	}
}

// attempt makes one delivery attempt and records its outcome durably:
// deliver, record each recipient's fate, tell the sender what is final,
// then remove the message, or save its state.
func (q *Queue) attempt(ctxs attemptContexts, m *Message) {
	s := q.sched
	waits := false
	defer func() {
		if !waits {
			q.finish(m)
		}
	}()
	if m.jseg == nil && !q.files.has(m.ID) {
		s.drop(m) // deleted by an administrator since it was due
		return
	}
	out, handoff := q.deliver(ctxs, m)
	if w := onlyWaits(out); w != nil {
		waits = true
		q.wait(m, out, w)
		return
	}
	now := q.now()
	rec, upstream, waited := s.record(m, out, now, q.cfg.MaxAge, q.retryAfter(m.Attempts+1))
	if upstream != "" && q.cfg.Shaped != nil {
		q.cfg.Shaped(upstream, waited)
	}
	q.tell(m, rec.fates, now, handoff)

	if len(rec.failed) > 0 && m.From != "" {
		if err := q.notify(m, rec.failed, false); err != nil {
			// A bounce that cannot be queued (a full disk) must not be
			// lost: the failed recipients stay pending, so that the
			// next attempt fails them again and tries the bounce again.
			q.log.Error("queue: cannot queue bounce; will try again", "msg_id", m.ID, "err", err)
			s.reopen(m, rec.failed)
			rec.done = false
		}
	}
	q.warnDelayed(m, now)
	if !rec.done && q.applyAsked(m) {
		return
	}
	if rec.done {
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

// finish ends the attempt's claim on m, doing first what an
// administrator asked of it after applyAsked looked.
func (q *Queue) finish(m *Message) {
	s := q.sched
	for {
		asked, ok := s.finish(m.ID)
		if !ok {
			return
		}
		if !s.knows(m) { // delivered and removed meanwhile
			continue
		}
		gone, err := q.apply(asked, m)
		if err == nil && !gone {
			err = q.save(m)
		}
		if err != nil {
			q.log.Error("queue: "+asked.op, "msg_id", m.ID, "err", err)
		}
	}
}

// applyAsked does what an administrator asked of m while it was being
// delivered (manage.go), and reports whether m has left the queue.
func (q *Queue) applyAsked(m *Message) (gone bool) {
	asked, ok := q.sched.asked(m.ID)
	if !ok {
		return false
	}
	gone, err := q.apply(asked, m)
	if err != nil {
		q.log.Error("queue: "+asked.op, "msg_id", m.ID, "err", err)
	}
	return gone
}

// attemptContexts are what delivery attempts run under: all of them end a
// while after a stop (Run), and those through the routes also when the node
// starts to leave.
type attemptContexts struct{ all, routes context.Context }

// deliver hands m's pending recipients to the deliverer and returns one
// outcome for each, and whether they went to the peers (Handoff).
func (q *Queue) deliver(ctxs attemptContexts, m *Message) (out []Outcome, handoff bool) {
	pending := m.Pending()
	if len(pending) == 0 {
		return nil, false
	}
	d, routes := q.deliverer()
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
