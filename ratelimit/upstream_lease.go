package ratelimit

import (
	"context"
	"fmt"
	"sync/atomic"
	"time"
)

// Lease is one open session's place among its identity's connections. It
// lives as long as the session; Run renews it, and it expires on its own
// if its node dies.
type Lease struct {
	s     *Shaper
	st    upstreamStore // where it was taken: the shared store, or this node's share
	key   string
	id    string
	limit int
	lost  atomic.Bool
}

// leaseTTL is how long a lease outlives its last renewal.
func (s *Shaper) leaseTTL() time.Duration { return 3 * s.cfg.Heartbeat }

// Lease takes a place for a new session to b's upstream. Without a
// connections limit it returns nil and Go (a nil Lease may be released);
// otherwise a Lease and Go, or nil and why not now.
func (s *Shaper) Lease(ctx context.Context, b *Budget) (*Lease, Admission) {
	if b.Limits.Connections <= 0 {
		return nil, Admission{Go: true}
	}
	s.mu.Lock()
	s.seq++
	id := fmt.Sprintf("%s:%d", s.cfg.Node, s.seq)
	s.mu.Unlock()
	var l *Lease
	err := s.with(ctx, func(ctx context.Context, st upstreamStore, lim func(UpstreamLimits) UpstreamLimits) error {
		limit := lim(b.Limits).Connections
		ok, err := st.lease(ctx, b.Key, id, limit, s.leaseTTL())
		if ok {
			l = &Lease{s: s, st: st, key: b.Key, id: id, limit: limit}
		}
		return err
	})
	switch {
	case err != nil:
		return nil, Admission{Reason: ReasonBackend, Wait: retryBackend}
	case l == nil:
		return nil, Admission{Reason: ReasonConnections, Wait: leasePoll}
	}
	s.mu.Lock()
	s.leases[l] = true
	s.mu.Unlock()
	return l, Admission{Go: true}
}

// Release gives the place back: the session is closed.
func (l *Lease) Release() {
	if l == nil {
		return
	}
	l.s.mu.Lock()
	delete(l.s.leases, l)
	l.s.mu.Unlock()
	ctx, cancel := context.WithTimeout(context.Background(), l.s.cfg.Timeout)
	defer cancel()
	if err := l.st.unlease(ctx, l.key, l.id); err != nil {
		// It expires on its own.
		l.s.log.Debug("shaping: cannot release a session's lease", "identity", l.key, "err", err)
	}
}

// Lost reports that the lease expired (the store was out of reach for
// longer than its life) and others took the place: its session should
// close once its transaction is done.
func (l *Lease) Lost() bool { return l != nil && l.lost.Load() }

// Run says the node is alive and renews its leases, every Heartbeat,
// until ctx ends.
func (s *Shaper) Run(ctx context.Context) {
	t := time.NewTicker(s.cfg.Heartbeat)
	defer t.Stop()
	for {
		s.beat(ctx)
		select {
		case <-ctx.Done():
			return
		case <-t.C:
		}
	}
}

// beat is one round of Run.
func (s *Shaper) beat(ctx context.Context) {
	if s.shared {
		cctx, cancel := context.WithTimeout(ctx, s.cfg.Timeout)
		n, err := s.store.heartbeat(cctx, s.cfg.Node, s.leaseTTL())
		cancel()
		if err == nil {
			s.mu.Lock()
			s.nodes = n
			s.mu.Unlock()
		}
	}
	type group struct {
		st    upstreamStore
		key   string
		limit int
	}
	byGroup := map[group][]*Lease{}
	s.mu.Lock()
	for l := range s.leases {
		g := group{l.st, l.key, l.limit}
		byGroup[g] = append(byGroup[g], l)
	}
	s.mu.Unlock()
	for g, ls := range byGroup {
		ids := make([]string, len(ls))
		for i, l := range ls {
			ids[i] = l.id
		}
		cctx, cancel := context.WithTimeout(ctx, s.cfg.Timeout)
		lost, err := g.st.renew(cctx, g.key, ids, g.limit, s.leaseTTL())
		cancel()
		if err != nil {
			continue // the store is down: the leases live on here, and expire there
		}
		gone := map[string]bool{}
		for _, id := range lost {
			gone[id] = true
		}
		for _, l := range ls {
			if gone[l.id] {
				l.lost.Store(true)
			}
		}
	}
}

// Nodes is the number of nodes alive at the last heartbeat (0 before
// the first, or with a store of this node's own).
func (s *Shaper) Nodes() int {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.nodes
}

// LimitStatus is one budget as it stands.
type LimitStatus struct {
	Rate      Rate
	Burst     int64
	Remaining int64
	FullIn    time.Duration // until the budget is full again
}

// BudgetStatus is an identity's state in the store.
type BudgetStatus struct {
	Messages, Recipients *LimitStatus // nil: no limit
	Connections          int          // the limit; 0: none
	Sessions             int          // open now, by every node
	HoldLeft             time.Duration
	Level                int  // throttle replies in a row; > 0 with HoldLeft 0: waiting for a probe
	Probing              bool // a probe is out
	Nodes                int
}

// Show reads b's state without charging anything.
func (s *Shaper) Show(ctx context.Context, b *Budget) (BudgetStatus, error) {
	b = b.withDefaults()
	ctx, cancel := context.WithTimeout(ctx, s.cfg.Timeout)
	defer cancel()
	st := BudgetStatus{Connections: b.Limits.Connections, Nodes: s.Nodes()}
	h, err := s.store.holdState(ctx, b.Key)
	if err != nil {
		return st, fmt.Errorf("%w: %w", ErrUnavailable, err)
	}
	st.HoldLeft, st.Level, st.Probing = h.Left, h.Level, h.Probing
	if st.Sessions, err = s.store.sessions(ctx, b.Key); err != nil {
		return st, fmt.Errorf("%w: %w", ErrUnavailable, err)
	}
	for _, x := range []struct {
		what string
		r    *Rate
		min  int64
		out  **LimitStatus
	}{{"messages", b.Limits.Messages, 1, &st.Messages}, {"recipients", b.Limits.Recipients, int64(b.MaxRecipients), &st.Recipients}} {
		if x.r == nil {
			continue
		}
		l := paced(x.r, x.min)
		res, err := s.store.AllowN(ctx, upKey(b.Key, x.what), l, 0)
		if err != nil {
			return st, fmt.Errorf("%w: %w", ErrUnavailable, err)
		}
		*x.out = &LimitStatus{Rate: *x.r, Burst: l.Burst, Remaining: min(res.Remaining, l.Burst), FullIn: res.ResetAfter}
	}
	return st, nil
}
