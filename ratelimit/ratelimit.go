// Package ratelimit keeps per-user quotas (messages, recipients and bytes per
// window, by class) and per-IP login-failure limits, in Redis so that every
// relay node shares one budget, or in memory for a single node.
package ratelimit

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"strings"
	"time"
)

// Rate is N per Per: "200/h" is {200, time.Hour}.
type Rate struct {
	N   int64
	Per time.Duration
}

// Limit is a GCRA limit: Rate events per Period on average, at most Burst
// at once.
type Limit struct {
	Rate   int64
	Burst  int64
	Period time.Duration
}

// Result is the state of one key after a check.
type Result struct {
	Allowed    bool
	Remaining  int64         // events that could happen right now
	RetryAfter time.Duration // until the refused event would be allowed; 0 when allowed
	ResetAfter time.Duration // until the key is back to a full budget
}

// Limiter keeps GCRA state per key. AllowN with n = 0 reads the state
// without charging. Implemented by Memory and Redis.
type Limiter interface {
	AllowN(ctx context.Context, key string, l Limit, n int64) (Result, error)
}

// Class is the limits of one class of users; a nil rate is no limit.
type Class struct {
	Messages   *Rate
	Recipients *Rate
	Bytes      *Rate
}

// Config is the ratelimit section of the configuration, parsed.
type Config struct {
	Classes        map[string]Class // "default" applies to users without a class
	AuthFailures   *Rate            // per client IP
	AllowOnError   bool             // on_backend_error: allow
	Timeout        time.Duration    // per check; default 1s
	MaxMessageSize int64            // byte limits allow at least one message this big
}

// ExceededError says which limit was reached and when to retry.
type ExceededError struct {
	What       string // "messages", "recipients", "bytes", "auth failures"
	RetryAfter time.Duration
}

func (e *ExceededError) Error() string {
	return fmt.Sprintf("ratelimit: %s limit reached, retry in %s", e.What, e.RetryAfter)
}

// ErrUnavailable means the limiter backend failed and the configuration
// says to refuse for now rather than let mail through unchecked.
var ErrUnavailable = errors.New("ratelimit: backend unavailable")

// Quotas applies Config with a Limiter. It is immutable; a reload builds a
// new one over the same Limiter, so no budget is reset.
type Quotas struct {
	cfg Config
	l   Limiter
	log *slog.Logger
}

func NewQuotas(cfg Config, l Limiter, log *slog.Logger) *Quotas {
	if cfg.Timeout <= 0 {
		cfg.Timeout = time.Second
	}
	return &Quotas{cfg: cfg, l: l, log: log}
}

// class returns the limits for a class name, falling back to "default".
func (q *Quotas) class(name string) Class {
	if c, ok := q.cfg.Classes[name]; ok && name != "" {
		return c
	}
	return q.cfg.Classes["default"]
}

func (q *Quotas) limit(what string, r *Rate) Limit {
	l := Limit{Rate: r.N, Burst: r.N, Period: r.Per}
	if what == "bytes" && l.Burst < q.cfg.MaxMessageSize {
		// GCRA never allows a cost above the burst; one maximal message
		// must always fit in an empty budget.
		l.Burst = q.cfg.MaxMessageSize
	}
	return l
}

// key names one user's counter; the braces make every key of one user hash
// to the same Redis Cluster slot.
func key(user, what string) string {
	user = strings.NewReplacer("{", "_", "}", "_").Replace(user)
	return "smarthost:{" + user + "}:" + what
}

func (q *Quotas) charge(ctx context.Context, user, what string, r *Rate, n int64) error {
	if r == nil || q.l == nil {
		return nil
	}
	ctx, cancel := context.WithTimeout(ctx, q.cfg.Timeout)
	defer cancel()
	res, err := q.l.AllowN(ctx, key(user, what), q.limit(what, r), n)
	if err != nil {
		if q.cfg.AllowOnError {
			q.log.Warn("ratelimit backend failed; letting the message through (on_backend_error: allow)", "user", user, "limit", what, "err", err)
			return nil
		}
		return fmt.Errorf("%w: %w", ErrUnavailable, err)
	}
	if !res.Allowed {
		return &ExceededError{What: what, RetryAfter: res.RetryAfter}
	}
	return nil
}

// Mail charges one message, at MAIL FROM.
func (q *Quotas) Mail(ctx context.Context, user, class string) error {
	return q.charge(ctx, user, "messages", q.class(class).Messages, 1)
}

// Rcpt charges one recipient, at RCPT TO.
func (q *Quotas) Rcpt(ctx context.Context, user, class string) error {
	return q.charge(ctx, user, "recipients", q.class(class).Recipients, 1)
}

// CheckSize tells at MAIL FROM whether a message of the declared SIZE= would
// fit, without charging it.
func (q *Quotas) CheckSize(ctx context.Context, user, class string, size int64) error {
	r := q.class(class).Bytes
	if r == nil || q.l == nil || size <= 0 {
		return nil
	}
	ctx, cancel := context.WithTimeout(ctx, q.cfg.Timeout)
	defer cancel()
	res, err := q.l.AllowN(ctx, key(user, "bytes"), q.limit("bytes", r), 0)
	if err != nil {
		if q.cfg.AllowOnError {
			q.log.Warn("ratelimit backend failed; letting the message through (on_backend_error: allow)", "user", user, "limit", "bytes", "err", err)
			return nil
		}
		return fmt.Errorf("%w: %w", ErrUnavailable, err)
	}
	if res.Remaining < size {
		l := q.limit("bytes", r)
		perByte := l.Period / time.Duration(l.Rate)
		return &ExceededError{What: "bytes", RetryAfter: time.Duration(size-res.Remaining) * max(perByte, 1)}
	}
	return nil
}

// Bytes charges a message's size, at the end of DATA.
func (q *Quotas) Bytes(ctx context.Context, user, class string, n int64) error {
	return q.charge(ctx, user, "bytes", q.class(class).Bytes, n)
}

func ipKey(ip string) string { return "ip:" + ip }

// LoginAllowed reports, before AUTH, whether ip is locked out by too many
// failed logins.
func (q *Quotas) LoginAllowed(ctx context.Context, ip string) error {
	r := q.cfg.AuthFailures
	if r == nil || q.l == nil {
		return nil
	}
	ctx, cancel := context.WithTimeout(ctx, q.cfg.Timeout)
	defer cancel()
	res, err := q.l.AllowN(ctx, key(ipKey(ip), "authfail"), q.limit("auth failures", r), 0)
	if err != nil {
		if q.cfg.AllowOnError {
			return nil
		}
		return fmt.Errorf("%w: %w", ErrUnavailable, err)
	}
	if res.Remaining < 1 {
		l := q.limit("auth failures", r)
		return &ExceededError{What: "auth failures", RetryAfter: max(res.ResetAfter-time.Duration(l.Burst-1)*(l.Period/time.Duration(l.Rate)), time.Second)}
	}
	return nil
}

// LoginFailed counts one failed login from ip.
func (q *Quotas) LoginFailed(ctx context.Context, ip string) {
	if err := q.charge(ctx, ipKey(ip), "authfail", q.cfg.AuthFailures, 1); err != nil && !errors.As(err, new(*ExceededError)) {
		q.log.Warn("ratelimit: cannot count a failed login", "ip", ip, "err", err)
	}
}

// Status is one limit of a user as it stands.
type Status struct {
	What       string
	Rate       Rate
	Remaining  int64
	ResetAfter time.Duration // until the budget is full again
}

// Show reads a user's limits without charging anything.
func (q *Quotas) Show(ctx context.Context, user, class string) ([]Status, error) {
	c := q.class(class)
	var out []Status
	for _, x := range []struct {
		what string
		r    *Rate
	}{{"messages", c.Messages}, {"recipients", c.Recipients}, {"bytes", c.Bytes}} {
		if x.r == nil {
			continue
		}
		cctx, cancel := context.WithTimeout(ctx, q.cfg.Timeout)
		res, err := q.l.AllowN(cctx, key(user, x.what), q.limit(x.what, x.r), 0)
		cancel()
		if err != nil {
			return nil, fmt.Errorf("%w: %w", ErrUnavailable, err)
		}
		out = append(out, Status{What: x.what, Rate: *x.r, Remaining: min(res.Remaining, x.r.N), ResetAfter: res.ResetAfter})
	}
	return out, nil
}

// ClassOf names the class that applies to a user's class name.
func (q *Quotas) ClassOf(class string) string {
	if _, ok := q.cfg.Classes[class]; ok && class != "" {
		return class
	}
	return "default"
}
