package upstream

import (
	"context"
	"sync"
	"time"

	"github.com/emersion/go-smtp"
)

// idleCheck is how long a pooled connection may sit unused before it is
// asked for a NOOP before reuse; maxIdle is how long it is kept at all
// (servers drop idle clients after a few minutes, RFC 5321 4.5.3.2.7).
const (
	idleCheck = 15 * time.Second
	maxIdle   = 2 * time.Minute
)

// pool keeps up to MaxConnections sessions to one upstream open,
// authenticated, and hands them out message after message.
type pool struct {
	dial  func(context.Context) (*smtp.Client, error)
	now   func() time.Time
	slots chan struct{} // one per open connection, idle or busy
	idle  chan *pooled  // sessions ready for the next message

	mu    sync.Mutex
	dials int64 // connections opened, for tests
}

func newPool(max int, dial func(context.Context) (*smtp.Client, error)) *pool {
	return &pool{dial: dial, now: time.Now, slots: make(chan struct{}, max), idle: make(chan *pooled, max)}
}

type pooled struct {
	c        *smtp.Client
	lastUsed time.Time
	// buf carries the message into the DATA writer, which io.Copy would
	// otherwise allocate afresh for every message (32 KiB each).
	buf []byte
}

// Dials is the number of connections opened so far.
func (t *pool) Dials() int64 {
	t.mu.Lock()
	defer t.mu.Unlock()
	return t.dials
}

// get returns a ready session: a pooled one that still answers, or a new
// one (fresh) if fewer than MaxConnections are open; else it waits for
// either.
func (t *pool) get(ctx context.Context) (p *pooled, fresh bool, err error) {
	for {
		select {
		case p = <-t.idle:
		default:
			select {
			case p = <-t.idle:
			case t.slots <- struct{}{}:
				p, err := t.dialSlot(ctx)
				return p, true, err
			case <-ctx.Done():
				return nil, false, ctx.Err()
			}
		}
		age := t.now().Sub(p.lastUsed)
		if age > maxIdle || (age > idleCheck && p.c.Noop() != nil) {
			t.discard(p)
			continue
		}
		return p, false, nil
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
	c, err := t.dial(ctx)
	if err != nil {
		<-t.slots
		return nil, err
	}
	t.mu.Lock()
	t.dials++
	t.mu.Unlock()
	return &pooled{c: c, buf: make([]byte, 16<<10)}, nil
}

// release puts a session that ended a transaction cleanly back in the
// pool. It never blocks: there are never more sessions than slots.
func (t *pool) release(p *pooled) {
	p.lastUsed = t.now()
	t.idle <- p
}

// discard closes a session that failed or may be in an unknown state.
func (t *pool) discard(p *pooled) {
	p.c.Close()
	<-t.slots
}

// close closes the idle sessions.
func (t *pool) close() {
	for {
		select {
		case p := <-t.idle:
			p.c.Quit()
			<-t.slots
		default:
			return
		}
	}
}
