package upstream

import (
	"context"
	"errors"
	"fmt"
	"net/url"
	"strings"
	"sync"
	"time"

	"github.com/smarthost/smarthost/ratelimit"
	"github.com/smarthost/smarthost/relay/queue"
)

// Shaping is what the router needs to send at the pace each upstream
// takes: the shared budgets, holds and session leases, and the classes'
// priorities. Every SMTP upstream is then shaped: by its Budget (none
// given: its identity, no limits), and held after the replies of its
// Throttle rules.
type Shaping struct {
	Shaper  *ratelimit.Shaper
	Classes map[string]queue.Priority // by class name; others normal
}

// shaping is the router's state of it.
type shaping struct {
	s       *ratelimit.Shaper
	classes map[string]queue.Priority
	budgets map[string]*ratelimit.Budget // by upstream name
	rules   map[string][]ThrottleRule
	width   map[string]int // sessions at once, for the lane

	mu   sync.Mutex
	held map[string]time.Time // identity → on hold until, as this node last heard
}

// Identity names an upstream's sending identity when the configuration
// does not: its login at its host, so that upstreams (and the routes
// through them) that log in as the same mailbox share one budget; without
// a login, the upstream itself.
func Identity(u Upstream) string {
	if u.Username == "" {
		return "upstream:" + u.Name
	}
	host := u.URL
	if pu, err := url.Parse(u.URL); err == nil {
		host = pu.Hostname()
	}
	return strings.ToLower(u.Username) + "@" + strings.ToLower(host)
}

// setUp prepares the shaping of upstream u and its transport: budget,
// throttle rules, and the sessions' leases when it has a connections
// limit (its pool then opens no more than that on this node either).
func (sh *shaping) setUp(u *Upstream) *ratelimit.Budget {
	b := &ratelimit.Budget{}
	if u.Budget != nil {
		*b = *u.Budget
	}
	if b.Key == "" {
		b.Key = Identity(*u)
	}
	if b.ProbeTime <= 0 {
		b.ProbeTime = u.Timeout
	}
	rules := u.Throttle
	if rules == nil {
		rules = DefaultThrottleRules
	}
	if c := b.Limits.Connections; c > 0 {
		u.MaxConnections = min(max(u.MaxConnections, 1), c)
	}
	sh.budgets[u.Name], sh.rules[u.Name], sh.width[u.Name] = b, rules, max(u.MaxConnections, 1)
	return b
}

// leaseWait is a session that could not be opened for want of a place
// among its identity's connections (or of the store that keeps them).
type leaseWait struct{ a ratelimit.Admission }

func (e *leaseWait) Error() string {
	return fmt.Sprintf("no session may be opened now (%s)", e.a.Reason)
}

// leases is a pool's way to take places for b's sessions.
func (sh *shaping) leases(b *ratelimit.Budget) func(context.Context) (*ratelimit.Lease, error) {
	return func(ctx context.Context) (*ratelimit.Lease, error) {
		l, a := sh.s.Lease(ctx, b)
		if l == nil && !a.Go {
			return nil, &leaseWait{a}
		}
		return l, nil
	}
}

// admit asks the budgets whether the transaction to upstream name goes
// now; when it does not, it returns the WaitError its recipients wait
// with (Held: the route's next upstream may take them meanwhile).
func (r *Router) admit(ctx context.Context, name string, m *queue.Message, n int, p queue.Priority) (ratelimit.Admission, *queue.WaitError) {
	sh := r.shaping
	if sh == nil || sh.budgets[name] == nil {
		return ratelimit.Admission{Go: true}, nil
	}
	b := sh.budgets[name]
	a := sh.s.Admit(ctx, b, n)
	sh.note(b.Key, a)
	r.cfg.Metrics.held(name, a)
	if a.Go {
		return a, nil
	}
	r.cfg.Metrics.waited(name, a.Reason)
	return a, r.wait(name, a, p)
}

func (r *Router) wait(name string, a ratelimit.Admission, p queue.Priority) *queue.WaitError {
	sh := r.shaping
	return &queue.WaitError{Lane: sh.budgets[name].Key, Upstream: name, Reason: a.Reason, After: a.Wait, Priority: p, Width: sh.width[name]}
}

// note remembers what an admission said of an identity's hold, for Lane.
func (sh *shaping) note(key string, a ratelimit.Admission) {
	sh.mu.Lock()
	defer sh.mu.Unlock()
	switch {
	case a.Held:
		sh.held[key] = time.Now().Add(a.Wait)
	case a.Go:
		delete(sh.held, key)
	}
}

func (sh *shaping) isHeld(key string, now time.Time) bool {
	sh.mu.Lock()
	defer sh.mu.Unlock()
	return sh.held[key].After(now)
}

// afterSend tells the budgets how the transaction went: a throttle reply
// puts the identity on hold (and returns the hold its recipients wait
// for); any other outcome of a probe ends the hold.
func (r *Router) afterSend(ctx context.Context, name string, a ratelimit.Admission, throttle *ThrottleRule, reply error, p queue.Priority) *queue.WaitError {
	sh := r.shaping
	if sh == nil || sh.budgets[name] == nil {
		return nil
	}
	b := sh.budgets[name]
	if throttle == nil {
		if a.Probe {
			r.log.Info("upstream hold ended: the probe went through", "upstream", name, "identity", b.Key)
		}
		sh.s.Sent(ctx, b, a)
		if a.Probe {
			sh.note(b.Key, ratelimit.Admission{Go: true})
			r.cfg.Metrics.held(name, ratelimit.Admission{Go: true})
		}
		return nil
	}
	h := sh.s.Throttled(ctx, b)
	sh.note(b.Key, h)
	r.cfg.Metrics.throttled(name, reply, h)
	r.log.Warn("upstream throttled us: holding its messages", "upstream", name, "identity", b.Key, "rule", throttle.Name,
		"reply", reply, "cooldown", h.Wait, "throttle_level", h.Level)
	return r.wait(name, h, p)
}

// refund gives back an admission whose transaction found no session.
func (r *Router) refund(ctx context.Context, name string, n int, a ratelimit.Admission) {
	if sh := r.shaping; sh != nil && sh.budgets[name] != nil && a.Go {
		sh.s.Refund(ctx, sh.budgets[name], n, a)
	}
}

// noSession is the leaseWait of a transport's outcomes, if it had none.
func noSession(out []queue.Outcome) *leaseWait {
	var lw *leaseWait
	if len(out) > 0 && errors.As(out[0].Err, &lw) {
		return lw
	}
	return nil
}

// Lane implements queue.Laner: the lane of the budget m's first
// recipient would wait for, that is of the first upstream of its route
// that this node does not know to be on hold, and its priority there.
func (r *Router) Lane(m *queue.Message) (string, queue.Priority) {
	sh := r.shaping
	pending := m.PendingRecipients()
	if sh == nil || len(pending) == 0 {
		return "", queue.PriorityNormal
	}
	list, p := r.routeFor(m, pending[0])
	now := time.Now()
	for _, name := range list {
		b := sh.budgets[name]
		if b == nil {
			return "", p
		}
		if !sh.isHeld(b.Key, now) {
			return b.Key, p
		}
	}
	if len(list) > 0 && sh.budgets[list[0]] != nil {
		return sh.budgets[list[0]].Key, p
	}
	return "", p
}

// Budgets are the upstreams' budgets, by upstream name, for the admin
// view (none without shaping).
func (r *Router) Budgets() map[string]*ratelimit.Budget {
	if r.shaping == nil {
		return nil
	}
	return r.shaping.budgets
}
