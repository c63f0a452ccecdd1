package main

import (
	"context"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net"
	"net/http"
	"os"
	"strings"
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

// drainer hands a leaving node's queue over to its peers (queue.handoff):
// the listeners close, sessions finish, and every queued message goes to
// the peers instead of the routes; once the queue is empty the node exits.
// Postfix, maddy and chasquid leave such mail on the departed node's disk.
type drainer struct {
	srv   *smtpd.Server
	q     *queue.Queue
	peers queue.Deliverer // nil: no queue.handoff configured
	ready *readiness
	log   *slog.Logger
	once  sync.Once
	begun chan struct{}
	empty chan struct{} // closed once the queue is empty after begin
}

func newDrainer(srv *smtpd.Server, q *queue.Queue, peers queue.Deliverer, ready *readiness, log *slog.Logger) *drainer {
	return &drainer{srv: srv, q: q, peers: peers, ready: ready, log: log, begun: make(chan struct{}), empty: make(chan struct{})}
}

var errNoHandoff = errors.New("queue.handoff.upstreams names no peer to hand the queue to")

// begin starts the drain, once.
func (dr *drainer) begin() error {
	if dr.peers == nil {
		return errNoHandoff
	}
	dr.once.Do(func() {
		dr.log.Info("draining: handing the queue over to the peers", "queued", dr.q.Len())
		dr.ready.serves.Store(false)
		go func() {
			ctx, cancel := context.WithTimeout(context.Background(), shutdownGrace)
			defer cancel()
			dr.srv.Shutdown(ctx)
		}()
		dr.q.Handoff(dr.peers, handoffRetry)
		close(dr.begun)
		go func() {
			for dr.q.Len() > 0 {
				time.Sleep(100 * time.Millisecond)
			}
			dr.log.Info("drained: the queue is empty")
			close(dr.empty)
		}()
	})
	return nil
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

const drainUsage = "[--config FILE] [--timeout 10m]\n\n" +
	"Asks the running relay (on its metrics.listen) to stop accepting and hand every queued\n" +
	"message to the peers of queue.handoff.upstreams; returns 0 once its queue is empty\n" +
	"(the relay then exits 0), 1 if that does not happen within --timeout."

func drainCmd(c cmdIO, args []string) int {
	fs := c.flags("drain", drainUsage)
	path := fs.String("config", "", "configuration file of the relay to drain")
	timeout := fs.Duration("timeout", 10*time.Minute, "how long to wait for the queue to empty")
	if _, code, done := fs.parse(args); done {
		return code
	}
	f, _, code := fs.config(*path)
	if f == nil {
		return code
	}
	if f.Metrics.Listen == "" {
		errorf(c.stderr, "drain: the relay has no metrics.listen to ask")
		return exitRuntime
	}
	req, _ := http.NewRequest(http.MethodPost, "http://"+dialable(f.Metrics.Listen)+"/v1/drain", nil)
	if f.Metrics.TokenFile != "" {
		b, err := os.ReadFile(f.Metrics.TokenFile)
		if err != nil {
			errorf(c.stderr, "drain: %v", err)
			return exitRuntime
		}
		req.Header.Set("Authorization", "Bearer "+strings.TrimSpace(string(b)))
	}
	hc := http.Client{Timeout: *timeout}
	resp, err := hc.Do(req)
	if err != nil {
		errorf(c.stderr, "drain: %v", err)
		return exitRuntime
	}
	defer resp.Body.Close()
	body, _ := io.ReadAll(resp.Body)
	if resp.StatusCode != http.StatusOK {
		errorf(c.stderr, "drain: %s: %s", resp.Status, strings.TrimSpace(string(body)))
		return exitRuntime
	}
	fmt.Fprint(c.stdout, string(body))
	return exitOK
}

// dialable turns a listen address into one to connect to: a wildcard host
// becomes loopback.
func dialable(addr string) string {
	host, port, err := net.SplitHostPort(addr)
	if err != nil {
		return addr
	}
	if host == "" || host == "0.0.0.0" || host == "::" {
		host = "127.0.0.1"
	}
	return net.JoinHostPort(host, port)
}

const handoffUsage = "[--config FILE] [--to NAME] [--timeout 5m]\n\n" +
	"Hands every message in the spool of a stopped relay (queue.dir) to the peers of\n" +
	"queue.handoff.upstreams, or to the upstream --to names; 0 when all are handed off,\n" +
	"1 when some are left (they stay in the spool)."

// queueHandoff is `smarthost queue handoff`: drain, for the spool of a node
// that is gone (a StatefulSet pod's volume, say). It takes the spool's
// lock, so it refuses a spool a relay is running on.
func queueHandoff(c cmdIO, args []string) int {
	fs := c.flags("queue handoff", handoffUsage)
	path := fs.String("config", "", "configuration file")
	to := fs.String("to", "", "hand to this upstream only (default: queue.handoff.upstreams)")
	timeout := fs.Duration("timeout", 5*time.Minute, "how long to keep trying")
	if _, code, done := fs.parse(args); done {
		return code
	}
	f, source, code := fs.config(*path)
	if f == nil {
		return code
	}
	log := newLogger(configs.Log{Format: "text", Level: "info"}, c.stderr)
	p, probs := compose(f, false, log, nil)
	if len(probs) > 0 {
		printProblems(c.stderr, source, probs)
		return exitBadConfig
	}
	peers, err := handoffConfig(p, *to)
	if err != nil {
		errorf(c.stderr, "queue handoff: %v", err)
		return exitBadConfig
	}
	router, err := upstream.NewRouter(*peers, log)
	if err != nil {
		errorf(c.stderr, "queue handoff: %v", err)
		return exitBadConfig
	}
	defer router.Close()
	qc := p.queue
	qc.Retry = []time.Duration{handoffRetry}
	q, err := queue.Open(qc, router, log)
	if err != nil {
		errorf(c.stderr, "queue handoff: %v", err)
		return exitRuntime
	}
	defer q.Close()
	start := q.Len()
	ctx, cancel := context.WithTimeout(context.Background(), *timeout)
	defer cancel()
	done := make(chan struct{})
	go func() { q.Run(ctx); close(done) }()
	for q.Len() > 0 && ctx.Err() == nil {
		time.Sleep(100 * time.Millisecond)
	}
	cancel()
	<-done
	left := q.Len()
	fmt.Fprintf(c.stdout, "%d message(s) handed off, %d left\n", start-left, left)
	if left > 0 {
		return exitRuntime
	}
	return exitOK
}

// handoffConfig is the peers to hand over to: queue.handoff's, or the one
// upstream named.
func handoffConfig(p *parts, to string) (*upstream.Config, error) {
	if to == "" {
		if p.handoff == nil {
			return nil, errNoHandoff
		}
		return p.handoff, nil
	}
	for _, u := range p.upstream.Upstreams {
		if u.Name == to {
			return &upstream.Config{Hostname: p.upstream.Hostname, Upstreams: []upstream.Upstream{u}}, nil
		}
	}
	return nil, fmt.Errorf("no upstream is named %q", to)
}
