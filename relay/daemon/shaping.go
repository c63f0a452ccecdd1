package daemon

import (
	"context"
	"fmt"
	"regexp"
	"time"

	"github.com/smarthost/smarthost/configs"
	"github.com/smarthost/smarthost/ratelimit"
	"github.com/smarthost/smarthost/relay/queue"
	"github.com/smarthost/smarthost/relay/upstream"
)

// upstreamShaping translates an upstream's limits and throttle replies
// (validate.go has checked their syntax). The budget's identity is left
// to the router: the upstream's login at its host, so that upstreams
// logging in as one mailbox share it.
func upstreamShaping(u configs.Upstream, maxRecipients int) (*ratelimit.Budget, []upstream.ThrottleRule) {
	conv := func(r *configs.Rate) *ratelimit.Rate {
		if r == nil {
			return nil
		}
		return &ratelimit.Rate{N: r.N, Per: r.Per}
	}
	b := &ratelimit.Budget{
		Limits: ratelimit.UpstreamLimits{
			Messages: conv(u.Limits.Messages), Recipients: conv(u.Limits.Recipients), Connections: u.Limits.Connections,
		},
		Cooldown: time.Duration(u.Throttle.Cooldown), MaxCooldown: time.Duration(u.Throttle.MaxCooldown),
		MaxRecipients: maxRecipients,
	}
	rules := []upstream.ThrottleRule{}
	for i, r := range u.Throttle.Replies {
		rule := upstream.ThrottleRule{Name: fmt.Sprintf("%s: throttle.replies[%d]", u.Name, i), Code: r.Code, Enhanced: r.Enhanced}
		if r.Text != "" {
			re, err := regexp.Compile("(?i)" + r.Text)
			if err != nil {
				continue
			}
			rule.Text = re
		}
		rules = append(rules, rule)
	}
	if u.Throttle.DefaultReplies == nil || *u.Throttle.DefaultReplies {
		rules = append(rules, upstream.DefaultThrottleRules...)
	}
	return b, rules
}

// classPriorities are the classes' priorities while their mail waits for
// an upstream's limits (validate.go has checked the names).
func classPriorities(f *configs.File) map[string]queue.Priority {
	out := map[string]queue.Priority{}
	for name, c := range f.RateLimit.Classes {
		if p, err := queue.ParsePriority(c.Priority); err == nil {
			out[name] = p
		}
	}
	return out
}

// newShaper keeps the upstreams' budgets in the limiter's store (Redis:
// shared by the nodes; memory: this node's), and says the node is alive
// until Close.
func (d *Daemon) newShaper(f *configs.File, store ratelimit.Limiter) (*ratelimit.Shaper, error) {
	st, ok := store.(ratelimit.UpstreamStore)
	if !ok {
		return nil, fmt.Errorf("ratelimit.backend %s cannot keep upstream limits", f.RateLimit.Backend)
	}
	s := ratelimit.NewShaper(ratelimit.ShaperConfig{
		AllowOnError: f.RateLimit.OnBackendError == "allow",
		Timeout:      time.Duration(f.RateLimit.Timeout),
	}, st, d.log)
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan struct{})
	go func() {
		s.Run(ctx)
		close(done)
	}()
	d.closers = append(d.closers, func() { cancel(); <-done })
	return s, nil
}
