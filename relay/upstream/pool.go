package upstream

import (
	"context"
	"errors"
	"fmt"
	"sync"
	"sync/atomic"
	"time"

	"github.com/smarthost/smarthost/ratelimit"
	"github.com/smarthost/smarthost/relay/upstream/smtpclient"
)

// idleCheck is how long a pooled connection may sit unused before it is
// asked for a NOOP before reuse; maxIdle is how long it is kept at all
// (servers drop idle clients after a few minutes, RFC 5321 4.5.3.2.7).
// maxStallWindow is how long an upstream whose sessions are all busy may
// show no progress before deliveries stop waiting for it (half its
// timeout, if that is shorter).
const (
	idleCheck      = 15 * time.Second
	maxIdle        = 2 * time.Minute
	maxStallWindow = 10 * time.Second
	quitWait       = 2 * time.Second
)

// pool keeps up to MaxConnections sessions to one upstream open,
// authenticated, and hands them out message after message.
//
// A delivery that finds every session busy waits for one while the
// upstream makes progress (a transaction ends, a session opens). One that
// has made none for stallWindow (a tarpit) would otherwise hold every queue
// worker in turn and starve the other routes: then a waiter gives up with
// errBusy, and once MaxConnections deliveries are waiting, the next ones
// do at once. errBusy is temporary: the route's next upstream gets the
// recipients, and they are retried later.
type pool struct {
	dial        func(context.Context) (*smtpclient.Conn, error)
	now         func() time.Time
	slots       chan struct{} // one per open connection, idle or busy
	idle        chan *pooled  // sessions ready for the next message
	stallWindow time.Duration
	waiting     atomic.Int32
	progress    atomic.Int64 // unix nanoseconds of the last sign of life
	first       sync.Once

	// lease, when set, takes the place of each new session among its
	// sending identity's connections, across nodes (ratelimit.Shaper);
	// without one the session is not opened (errLeaseWait). Idle
	// sessions then give their place back after leaseIdle.
	lease func(context.Context) (*ratelimit.Lease, error)
	stop  chan struct{}

	mu    sync.Mutex
	dials int64 // connections opened, for tests
}

// leaseIdle is how long a session holding a place among its identity's
// connections may sit idle before it is closed: other nodes may be
// waiting for the place.
const leaseIdle = 5 * time.Second

func newPool(max int, stallWindow time.Duration, dial func(context.Context) (*smtpclient.Conn, error)) *pool {
	if stallWindow <= 0 {
		stallWindow = maxStallWindow
	}
	p := &pool{dial: dial, now: time.Now, slots: make(chan struct{}, max), idle: make(chan *pooled, max), stallWindow: stallWindow}
	p.alive()
	return p
}

// alive records progress.
func (t *pool) alive() { t.progress.Store(t.now().UnixNano()) }

// stalled reports whether the upstream has made no progress for
// stallWindow, counting from since at the earliest.
func (t *pool) stalled(since time.Time) bool {
	last := time.Unix(0, t.progress.Load())
	if last.Before(since) {
		last = since
	}
	return t.now().Sub(last) > t.stallWindow
}

var errBusy = errors.New("every connection to the upstream is busy")

type pooled struct {
	c        *smtpclient.Conn
	lastUsed time.Time
	lease    *ratelimit.Lease // nil without a connections limit
}

// Dials is the number of connections opened so far.
func (t *pool) Dials() int64 {
	t.mu.Lock()
	defer t.mu.Unlock()
	return t.dials
}

// get returns a ready session: a pooled one that still answers, or a new
// one (fresh) if fewer than MaxConnections are open; else it waits for
// either, within the bounds above.
func (t *pool) get(ctx context.Context) (p *pooled, fresh bool, err error) {
	// The stall window starts with the first delivery, not when the pool
	// was made (a router may be built long before its first message).
	t.first.Do(t.alive)
	for {
		select {
		case p = <-t.idle:
		case t.slots <- struct{}{}:
			p, err := t.dialSlot(ctx)
			return p, true, err
		default:
			if p, fresh, err = t.wait(ctx); p == nil || err != nil || fresh {
				return p, fresh, err
			}
		}
		age := t.now().Sub(p.lastUsed)
		if age > maxIdle || (age > idleCheck && p.c.Noop(ctx) != nil) {
			t.discard(p)
			continue
		}
		return p, false, nil
	}
}

// wait waits for an idle session or a free slot while the upstream makes
// progress.
func (t *pool) wait(ctx context.Context) (*pooled, bool, error) {
	start := t.now()
	if int(t.waiting.Add(1)) > cap(t.slots) && t.stalled(time.Time{}) {
		t.waiting.Add(-1)
		return nil, false, fmt.Errorf("%w (%d), and none has moved for %s", errBusy, cap(t.slots), t.stallWindow)
	}
	defer t.waiting.Add(-1)
	tick := time.NewTicker(t.stallWindow / 4)
	defer tick.Stop()
	for {
		select {
		case p := <-t.idle:
			return p, false, nil
		case t.slots <- struct{}{}:
			p, err := t.dialSlot(ctx)
			return p, true, err
		case <-tick.C:
			if t.stalled(start) {
				return nil, false, fmt.Errorf("%w (%d), and none has moved for %s", errBusy, cap(t.slots), t.stallWindow)
			}
		case <-ctx.Done():
			return nil, false, ctx.Err()
		}
	}
}

// fresh dials a new session in a slot that is free: the caller has just
// discarded one.
func (t *pool) fresh(ctx context.Context) (*pooled, error) {
	select {
	case t.slots <- struct{}{}:
		return t.dialSlot(ctx)
	case <-ctx.Done():
		return nil, ctx.Err()
	}
}

// dialSlot dials a session for a slot already taken, and gives the slot
// back if that fails.
func (t *pool) dialSlot(ctx context.Context) (*pooled, error) {
	var l *ratelimit.Lease
	if t.lease != nil {
		var err error
		if l, err = t.lease(ctx); err != nil {
			<-t.slots
			return nil, err
		}
	}
	c, err := t.dial(ctx)
	if err != nil {
		<-t.slots
		l.Release()
		return nil, err
	}
	t.mu.Lock()
	t.dials++
	t.mu.Unlock()
	t.alive()
	return &pooled{c: c, lease: l}, nil
}

// release puts a session that ended a transaction cleanly back in the
// pool. It never blocks: there are never more sessions than slots.
func (t *pool) release(p *pooled) {
	if p.lease.Lost() {
		// Its place expired while the store was out of reach, and
		// others have it now.
		t.discard(p)
		return
	}
	t.alive()
	p.lastUsed = t.now()
	t.idle <- p
}

// discard closes a session that failed or may be in an unknown state.
func (t *pool) discard(p *pooled) {
	t.alive()
	p.c.Close()
	p.lease.Release()
	<-t.slots
}

// close says QUIT to the idle sessions, giving each a moment to answer.
func (t *pool) close() {
	if t.stop != nil {
		close(t.stop)
		t.stop = nil
	}
	for {
		select {
		case p := <-t.idle:
			t.quit(p)
		default:
			return
		}
	}
}

func (t *pool) quit(p *pooled) {
	ctx, cancel := context.WithTimeout(context.Background(), quitWait)
	p.c.Quit(ctx)
	cancel()
	p.lease.Release()
	<-t.slots
}

// withLeases makes every new session take a place among its identity's
// connections, and closes sessions idle for leaseIdle, until close.
func (t *pool) withLeases(lease func(context.Context) (*ratelimit.Lease, error)) {
	t.lease, t.stop = lease, make(chan struct{})
	go func(stop chan struct{}) {
		tick := time.NewTicker(leaseIdle / 5)
		defer tick.Stop()
		for {
			select {
			case <-stop:
				return
			case <-tick.C:
				t.reap()
			}
		}
	}(t.stop)
}

// reap closes the idle sessions unused for leaseIdle, giving their places
// back.
func (t *pool) reap() {
	for n := len(t.idle); n > 0; n-- {
		select {
		case p := <-t.idle:
			if t.now().Sub(p.lastUsed) >= leaseIdle {
				t.quit(p)
			} else {
				t.idle <- p
			}
		default:
			return
		}
	}
}
