package ratelimit

import (
	"context"
	"crypto/rand"
	"encoding/hex"
	"errors"
	"log/slog"
	"os"
	"sync"
	"time"
)

// UpstreamLimits are what one sending identity (an upstream login) may
// send, by every node together: messages and recipients per window, and
// sessions open at once. A nil rate or 0 connections is no limit.
type UpstreamLimits struct {
	Messages    *Rate
	Recipients  *Rate
	Connections int
}

// Budget is one sending identity: its limits and how it backs off when the
// upstream throttles it.
type Budget struct {
	Key    string // the identity; upstreams with the same key share everything here
	Limits UpstreamLimits
	// Cooldown is the first hold after a throttle reply; it doubles while
	// throttle replies go on, up to MaxCooldown. Defaults 1m and 1h.
	Cooldown, MaxCooldown time.Duration
	// ProbeTime is how long the one message that tests an expired hold
	// may take before another may go (the upstream's timeout); default 5m.
	ProbeTime time.Duration
	// MaxRecipients is the most recipients one transaction has (0: 100):
	// a recipients budget always lets such a transaction through when full.
	MaxRecipients int
}

// Why an admission waits.
const (
	ReasonRate        = "rate"        // the messages or recipients budget is spent for now
	ReasonConnections = "connections" // as many sessions as allowed are open
	ReasonHold        = "hold"        // the upstream throttled us: on hold, or its probe is out
	ReasonBackend     = "backend"     // the shared store is unreachable (on_backend_error: tempfail)
)

// Admission is what Admit decided for one transaction.
type Admission struct {
	Go bool // send now
	// Probe: the identity was on hold and this transaction tests it;
	// Sent ends the hold, Throttled renews it.
	Probe bool
	// Held: on hold after a throttle reply; the route's next upstream
	// may take the message meanwhile.
	Held   bool
	Reason string        // why not now
	Wait   time.Duration // when to ask again
	Level  int           // throttle replies in a row, while held
}

// ShaperConfig is how a Shaper uses its store.
type ShaperConfig struct {
	// AllowOnError: while the shared store is unreachable, each node
	// sends under its share of every limit (the limit divided by the
	// nodes last seen alive); otherwise every identity waits.
	AllowOnError bool
	Timeout      time.Duration // per call; default 1s
	Node         string        // this node's name among the nodes; default hostname and a random suffix
	// Heartbeat is how often the node says it is alive and renews its
	// sessions' leases (default 5s); a lease expires after three of them,
	// so the sessions of a node that died stop counting.
	Heartbeat time.Duration
}

// UpstreamStore keeps the state of upstream shaping; *Redis (shared by
// the nodes) and *Memory (one node's) implement it.
type UpstreamStore interface{ upstreamStore }

// Shaper keeps every sending identity's budgets, holds and session leases
// in its store, and decides for each transaction whether it goes now.
type Shaper struct {
	cfg    ShaperConfig
	store  upstreamStore
	shared bool    // store is shared by the nodes (Redis)
	local  *Memory // this node's share while the shared store is down
	log    *slog.Logger

	mu        sync.Mutex
	nodes     int       // alive at the last heartbeat
	downUntil time.Time // the shared store failed: not asked again before
	down      bool
	leases    map[*Lease]bool
	seq       uint64
}

// retryBackend is how long the shared store is left alone after it
// failed, and how long a transaction waits for it under tempfail.
const retryBackend = time.Second

// probePoll is how often a transaction asks again while another node's
// probe is out; leasePoll, while every session is taken.
const (
	probePoll = time.Second
	leasePoll = 250 * time.Millisecond
)

// NewShaper makes a Shaper over store.
func NewShaper(cfg ShaperConfig, store UpstreamStore, log *slog.Logger) *Shaper {
	if cfg.Timeout <= 0 {
		cfg.Timeout = time.Second
	}
	if cfg.Heartbeat <= 0 {
		cfg.Heartbeat = 5 * time.Second
	}
	if cfg.Node == "" {
		host, _ := os.Hostname()
		var b [4]byte
		rand.Read(b[:])
		cfg.Node = host + "-" + hex.EncodeToString(b[:])
	}
	_, shared := store.(*Redis)
	return &Shaper{cfg: cfg, store: store, shared: shared, local: NewMemory(nil), log: log, leases: map[*Lease]bool{}}
}

// withDefaults is a copy of b with its defaults filled in (b may be
// shared by many deliveries at once).
func (b *Budget) withDefaults() *Budget {
	c := *b
	c.defaults()
	return &c
}

func (b *Budget) defaults() {
	if b.Cooldown <= 0 {
		b.Cooldown = time.Minute
	}
	if b.MaxCooldown < b.Cooldown {
		b.MaxCooldown = max(time.Hour, b.Cooldown)
	}
	if b.ProbeTime <= 0 {
		b.ProbeTime = 5 * time.Minute
	}
	if b.MaxRecipients <= 0 {
		b.MaxRecipients = 100
	}
}

// paced is the GCRA limit of a rate: per second and per minute rates are
// a pace (one every Per/N, so that any window of Per sees at most N, and
// one more at its edge), per hour and per day ones a budget to spend as
// needed (up to N at once, refilled at N per Per), as the users' are.
// atLeast raises the burst so that one transaction of that cost fits.
func paced(r *Rate, atLeast int64) Limit {
	burst := int64(1)
	if r.Per >= time.Hour {
		burst = r.N
	}
	return Limit{Rate: r.N, Period: r.Per, Burst: max(burst, atLeast)}
}

// share is this node's part of l while the shared store is down.
func share(l UpstreamLimits, nodes int) UpstreamLimits {
	if nodes <= 1 {
		return l
	}
	part := func(r *Rate) *Rate {
		if r == nil {
			return nil
		}
		return &Rate{N: max(r.N/int64(nodes), 1), Per: r.Per}
	}
	out := UpstreamLimits{Messages: part(l.Messages), Recipients: part(l.Recipients)}
	if l.Connections > 0 {
		out.Connections = max(l.Connections/nodes, 1)
	}
	return out
}

// errBackend: the shared store failed and the configuration says wait.
var errBackend = errors.New("ratelimit: shaping store unavailable")

// with runs f on the store to use now: the shared one, or while that is
// down this node's share (allow) or nothing (errBackend).
func (s *Shaper) with(ctx context.Context, f func(context.Context, upstreamStore, func(UpstreamLimits) UpstreamLimits) error) error {
	mine := func(l UpstreamLimits) UpstreamLimits { return l }
	s.mu.Lock()
	skip := s.shared && time.Now().Before(s.downUntil)
	s.mu.Unlock()
	if !skip {
		cctx, cancel := context.WithTimeout(ctx, s.cfg.Timeout)
		err := f(cctx, s.store, mine)
		cancel()
		if err == nil || !s.shared || ctx.Err() != nil {
			s.up(err == nil)
			return err
		}
		s.log.Debug("shaping store failed", "err", err)
		s.up(false)
	}
	if !s.cfg.AllowOnError {
		return errBackend
	}
	s.mu.Lock()
	nodes := s.nodes
	s.mu.Unlock()
	return f(ctx, s.local, func(l UpstreamLimits) UpstreamLimits { return share(l, nodes) })
}

// up notes whether the shared store answered, and says so when that
// changes.
func (s *Shaper) up(ok bool) {
	if !s.shared {
		return
	}
	s.mu.Lock()
	defer s.mu.Unlock()
	if ok {
		if s.down {
			s.log.Info("shaping: the shared store answers again; upstream limits are shared by all nodes again")
		}
		s.down = false
		return
	}
	s.downUntil = time.Now().Add(retryBackend)
	if !s.down {
		if s.cfg.AllowOnError {
			s.log.Warn("shaping: the shared store is unreachable; sending under this node's share of each upstream limit (on_backend_error: allow)", "nodes", max(s.nodes, 1))
		} else {
			s.log.Warn("shaping: the shared store is unreachable; upstreams with limits wait for it (on_backend_error: tempfail)")
		}
	}
	s.down = true
}

// Admit decides whether a transaction of rcpts recipients goes to b's
// upstream now, and charges it to the budgets if so.
func (s *Shaper) Admit(ctx context.Context, b *Budget, rcpts int) Admission {
	b = b.withDefaults()
	var a Admission
	err := s.with(ctx, func(ctx context.Context, st upstreamStore, lim func(UpstreamLimits) UpstreamLimits) error {
		var err error
		a, err = admit(ctx, st, b, lim(b.Limits), rcpts)
		return err
	})
	if err != nil {
		if b.Limits == (UpstreamLimits{}) {
			// Nothing to keep to but holds, which cannot be read now: an
			// upstream without limits is not stopped by the store.
			return Admission{Go: true}
		}
		return Admission{Reason: ReasonBackend, Wait: retryBackend}
	}
	return a
}

func admit(ctx context.Context, st upstreamStore, b *Budget, l UpstreamLimits, rcpts int) (Admission, error) {
	h, err := st.holdState(ctx, b.Key)
	if err != nil {
		return Admission{}, err
	}
	a := Admission{Go: true}
	switch {
	case h.Left > 0:
		return Admission{Held: true, Reason: ReasonHold, Wait: h.Left, Level: h.Level}, nil
	case h.Level > 0:
		ok, err := st.probe(ctx, b.Key, b.ProbeTime)
		if err != nil {
			return Admission{}, err
		}
		if !ok {
			return Admission{Held: true, Reason: ReasonHold, Wait: probePoll, Level: h.Level}, nil
		}
		a.Probe, a.Level = true, h.Level
	}
	if l.Messages != nil {
		r, err := st.AllowN(ctx, upKey(b.Key, "messages"), paced(l.Messages, 1), 1)
		if err != nil || !r.Allowed {
			return notNow(ctx, st, b, a, r, err)
		}
	}
	if l.Recipients != nil && rcpts > 0 {
		r, err := st.AllowN(ctx, upKey(b.Key, "recipients"), paced(l.Recipients, int64(b.MaxRecipients)), int64(rcpts))
		if err != nil || !r.Allowed {
			if l.Messages != nil {
				// GCRA in redis_rate has no refund; a negative cost is one,
				// exact unless the key's time has passed meanwhile.
				st.AllowN(ctx, upKey(b.Key, "messages"), paced(l.Messages, 1), -1)
			}
			return notNow(ctx, st, b, a, r, err)
		}
	}
	return a, nil
}

// notNow hands back the probe of a transaction the budgets refused.
func notNow(ctx context.Context, st upstreamStore, b *Budget, a Admission, r Result, err error) (Admission, error) {
	if a.Probe {
		st.unprobe(ctx, b.Key)
	}
	if err != nil {
		return Admission{}, err
	}
	return Admission{Reason: ReasonRate, Wait: max(r.RetryAfter, time.Millisecond)}, nil
}

// Refund gives back what Admit charged for a transaction that was not
// sent after all (no session could be had).
func (s *Shaper) Refund(ctx context.Context, b *Budget, rcpts int, a Admission) {
	b = b.withDefaults()
	s.with(ctx, func(ctx context.Context, st upstreamStore, lim func(UpstreamLimits) UpstreamLimits) error {
		l := lim(b.Limits)
		if l.Messages != nil {
			st.AllowN(ctx, upKey(b.Key, "messages"), paced(l.Messages, 1), -1)
		}
		if l.Recipients != nil && rcpts > 0 {
			st.AllowN(ctx, upKey(b.Key, "recipients"), paced(l.Recipients, int64(b.MaxRecipients)), -int64(rcpts))
		}
		if a.Probe {
			return st.unprobe(ctx, b.Key)
		}
		return nil
	})
}

// Sent reports a transaction the upstream did not throttle: a probe's
// ends the hold.
func (s *Shaper) Sent(ctx context.Context, b *Budget, a Admission) {
	if !a.Probe {
		return
	}
	s.with(ctx, func(ctx context.Context, st upstreamStore, _ func(UpstreamLimits) UpstreamLimits) error {
		return st.clear(ctx, b.Key)
	})
}

// Throttled reports a throttle reply: b's identity goes on hold (every
// node's sends to it wait, or fail over), for a cool-down that grows
// while throttle replies go on. It returns the hold in force.
func (s *Shaper) Throttled(ctx context.Context, b *Budget) Admission {
	b = b.withDefaults()
	var h hold
	err := s.with(ctx, func(ctx context.Context, st upstreamStore, _ func(UpstreamLimits) UpstreamLimits) error {
		var err error
		h, err = st.throttle(ctx, b.Key, b.Cooldown, b.MaxCooldown)
		return err
	})
	if err != nil {
		return Admission{Held: true, Reason: ReasonHold, Wait: b.Cooldown, Level: 1}
	}
	return Admission{Held: true, Reason: ReasonHold, Wait: h.Left, Level: h.Level}
}
