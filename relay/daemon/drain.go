package daemon

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"sync"
	"time"

	"github.com/smarthost/smarthost/configs"
	"github.com/smarthost/smarthost/relay/queue"
	"github.com/smarthost/smarthost/relay/smtpd"
	"github.com/smarthost/smarthost/relay/upstream"
)

// handoffRetry is how soon a message the peers did not take is tried
// again while a node drains: they are expected back within seconds.
const handoffRetry = 2 * time.Second

// emptyPoll is how often a drain looks whether the queue is empty yet.
const emptyPoll = 100 * time.Millisecond

// drainer hands a leaving node's queue over to its peers (queue.handoff):
// the listeners close, sessions finish, and every queued message goes to
// the peers instead of the routes; once the queue is empty the node exits.
// Postfix, maddy and chasquid leave such mail on the departed node's disk.
type drainer struct {
	smtp    *smtpd.Server
	queue   *queue.Queue
	peers   queue.Deliverer // nil: no queue.handoff configured
	ready   *readiness
	log     *slog.Logger
	once    sync.Once
	empty   chan struct{} // closed once the queue is empty after begin
	stopped chan struct{} // closed when the daemon stops
	stopper sync.Once
}

func newDrainer(smtp *smtpd.Server, q *queue.Queue, peers queue.Deliverer, ready *readiness, log *slog.Logger) *drainer {
	return &drainer{smtp: smtp, queue: q, peers: peers, ready: ready, log: log,
		empty: make(chan struct{}), stopped: make(chan struct{})}
}

var errNoHandoff = errors.New("queue.handoff.upstreams names no peer to hand the queue to")

// begin starts the drain, once.
func (dr *drainer) begin() error {
	if dr.peers == nil {
		return errNoHandoff
	}
	dr.once.Do(func() {
		dr.log.Info("draining: handing the queue over to the peers", "queued", dr.queue.Len())
		dr.ready.serves.Store(false)
		go func() {
			ctx, cancel := context.WithTimeout(context.Background(), shutdownGrace)
			defer cancel()
			dr.smtp.Shutdown(ctx)
		}()
		dr.queue.Handoff(dr.peers, handoffRetry)
		go dr.watch()
	})
	return nil
}

// watch closes empty once the queue is, unless the daemon stops first.
func (dr *drainer) watch() {
	tick := time.NewTicker(emptyPoll)
	defer tick.Stop()
	for dr.queue.Len() > 0 {
		select {
		case <-tick.C:
		case <-dr.stopped:
			return
		}
	}
	dr.log.Info("drained: the queue is empty")
	close(dr.empty)
}

// wait begins the drain and returns once the queue is empty, or ctx is
// done. (The admin server shuts down gracefully, so a waiter's answer is
// written before the node exits.)
func (dr *drainer) wait(ctx context.Context) error {
	if err := dr.begin(); err != nil {
		return err
	}
	select {
	case <-dr.empty:
		return nil
	case <-ctx.Done():
		return ctx.Err()
	}
}

// done is closed once a drain has emptied the queue.
func (dr *drainer) done() <-chan struct{} { return dr.empty }

// stop ends the watch of a drain that did not finish.
func (dr *drainer) stop() { dr.stopper.Do(func() { close(dr.stopped) }) }

// Drain stops accepting mail and hands every queued message to the peers
// of queue.handoff instead of the routes; it returns once the queue is
// empty (Run then returns), or when ctx ends (the drain goes on).
func (d *Daemon) Drain(ctx context.Context) error { return d.drainer.wait(ctx) }

// Handoff is Drain for the spool of a node that is gone (a StatefulSet
// pod's volume, say): it hands every message in f's queue.dir to the peers
// of queue.handoff, or to the upstream named to, until none is left or ctx
// ends, and says how many were handed off and how many are left. It takes
// the spool's lock, so it refuses a spool a relay is running on; the
// history records each delivery as the relay's would.
func Handoff(ctx context.Context, f *configs.File, to string, log *slog.Logger) (handed, left int, err error) {
	a, probs := assemble(f, false, log, nil)
	if len(probs) > 0 {
		return 0, 0, probs
	}
	peers, err := handoffConfig(a, to)
	if err != nil {
		return 0, 0, &ConfigError{err}
	}
	router, err := upstream.NewRouter(*peers, log)
	if err != nil {
		return 0, 0, &ConfigError{err}
	}
	defer router.Close()
	qc := a.queue
	qc.Retry = []time.Duration{handoffRetry}
	h, err := offlineHistory(a)
	if err != nil {
		return 0, 0, err
	}
	if h != nil {
		defer h.Close() // after the queue's last event
		qc.Observer = h
	}
	q, err := queue.Open(qc, router, log)
	if err != nil {
		return 0, 0, err
	}
	defer q.Close()
	start := q.Len()
	ctx, cancel := context.WithCancel(ctx)
	defer cancel()
	done := make(chan struct{})
	go func() { q.Run(ctx); close(done) }()
	tick := time.NewTicker(emptyPoll)
	defer tick.Stop()
	for q.Len() > 0 && ctx.Err() == nil {
		select {
		case <-tick.C:
		case <-ctx.Done():
		}
	}
	cancel()
	<-done
	left = q.Len()
	return start - left, left, nil
}

// handoffConfig is the peers to hand over to: queue.handoff's, or the one
// upstream named.
func handoffConfig(a *Assembly, to string) (*upstream.Config, error) {
	if to == "" {
		if a.handoff == nil {
			return nil, errNoHandoff
		}
		return a.handoff, nil
	}
	for _, u := range a.upstream.Upstreams {
		if u.Name == to {
			return &upstream.Config{Hostname: a.upstream.Hostname, Upstreams: []upstream.Upstream{u}}, nil
		}
	}
	return nil, fmt.Errorf("no upstream is named %q", to)
}
