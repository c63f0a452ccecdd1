package daemon

import (
	"context"
	"crypto/tls"
	"encoding/json"
	"errors"
	"fmt"
	"log/slog"
	"net/http"
	"strings"
	"time"

	"github.com/redis/go-redis/v9"

	"github.com/smarthost/smarthost/configs"
	"github.com/smarthost/smarthost/policy"
	"github.com/smarthost/smarthost/ratelimit"
)

// redisLog sends go-redis's own messages (Sentinel failovers, reconnects)
// to our log instead of its default of standard error.
type redisLog struct{ log *slog.Logger }

func (l redisLog) Printf(_ context.Context, format string, v ...any) {
	l.log.Info("redis: " + fmt.Sprintf(format, v...))
}

// clusterReload is how often the Redis Cluster slot map is read again.
const clusterReload = 2 * time.Second

// newLimiter makes the configured limiter. It lives for the whole process:
// a reload changes the classes, never the counters.
func newLimiter(f *configs.File) (ratelimit.Limiter, func() error) {
	if f.RateLimit.Backend != "redis" {
		return ratelimit.NewMemory(nil), func() error { return nil }
	}
	r := f.RateLimit.Redis
	t := time.Duration(f.RateLimit.Timeout)
	o := &redis.UniversalOptions{
		Addrs: r.Addrs, MasterName: r.MasterName, Username: r.Username, Password: r.Password, DB: r.DB,
		DialTimeout: t, ReadTimeout: t, WriteTimeout: t, MaxRetries: 1,
	}
	if r.TLS {
		o.TLSConfig = &tls.Config{MinVersion: tls.VersionTLS12}
	}
	var c redis.UniversalClient
	if len(r.Addrs) > 1 && r.MasterName == "" {
		// go-redis reloads a cluster's slot map on MOVED answers, and
		// otherwise only every minute: when a master dies, nothing
		// answers MOVED, and its slots would stay unreachable for up to
		// a minute after the replica took over.
		co := o.Cluster()
		co.ClusterStateReloadInterval = clusterReload
		c = redis.NewClusterClient(co)
	} else {
		c = redis.NewUniversalClient(o)
	}
	return ratelimit.NewRedis(c), c.Close
}

func quotasConfig(f *configs.File) ratelimit.Config {
	conv := func(r *configs.Rate) *ratelimit.Rate {
		if r == nil {
			return nil
		}
		return &ratelimit.Rate{N: r.N, Per: r.Per}
	}
	c := ratelimit.Config{
		Classes:        map[string]ratelimit.Class{},
		AuthFailures:   conv(f.RateLimit.AuthFailures),
		AllowOnError:   f.RateLimit.OnBackendError == "allow",
		Timeout:        time.Duration(f.RateLimit.Timeout),
		MaxMessageSize: int64(f.Policy.MaxMessageSize),
	}
	for name, cl := range f.RateLimit.Classes {
		c.Classes[name] = ratelimit.Class{Messages: conv(cl.Messages), Recipients: conv(cl.Recipients), Bytes: conv(cl.Bytes)}
	}
	return c
}

// LimitsView is the answer of GET /v1/limits/{user} and `limits show`:
// a user's limits and what is left of each.
type LimitsView struct {
	User   string      `json:"user"`
	Key    string      `json:"key"` // the name limits are kept under
	Class  string      `json:"class"`
	Limits []LimitView `json:"limits"`
}

// LimitView is one limit of a user.
type LimitView struct {
	Limit     string `json:"limit"`
	Rate      string `json:"rate"`
	Remaining int64  `json:"remaining"`
	FullIn    string `json:"full_in"`
}

// lookupFunc finds a user by login name without a password.
type lookupFunc func(ctx context.Context, name string) (*policy.User, error)

func showLimits(ctx context.Context, q *ratelimit.Quotas, lookup lookupFunc, name string) (*LimitsView, error) {
	u, err := lookup(ctx, name)
	if err != nil {
		return nil, err
	}
	st, err := q.Show(ctx, u.Name, u.Class)
	if err != nil {
		return nil, err
	}
	v := &LimitsView{User: name, Key: u.Name, Class: q.ClassOf(u.Class), Limits: []LimitView{}}
	for _, s := range st {
		v.Limits = append(v.Limits, LimitView{Limit: s.What, Rate: rateText(s.Rate),
			Remaining: s.Remaining, FullIn: s.ResetAfter.Round(time.Second).String()})
	}
	return v, nil
}

// String is the view as `limits show` prints it.
func (v *LimitsView) String() string {
	var b strings.Builder
	fmt.Fprintf(&b, "user %s (limits kept as %q), class %s\n", v.User, v.Key, v.Class)
	if len(v.Limits) == 0 {
		fmt.Fprintln(&b, "  no limits")
	}
	for _, l := range v.Limits {
		fmt.Fprintf(&b, "  %-10s %-12s %d left, full again in %s\n", l.Limit, l.Rate, l.Remaining, l.FullIn)
	}
	return b.String()
}

// limitsHandler serves GET /v1/limits/{user}.
func limitsHandler(current func() (*ratelimit.Quotas, lookupFunc), log *slog.Logger) http.Handler {
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		q, lookup := current()
		v, err := showLimits(r.Context(), q, lookup, r.PathValue("user"))
		switch {
		case errors.Is(err, policy.ErrNoSuchUser):
			http.Error(w, "no such user", http.StatusNotFound)
			return
		case err != nil:
			log.Warn("limits lookup failed", "user", r.PathValue("user"), "err", err)
			http.Error(w, "lookup failed: backend unavailable", http.StatusServiceUnavailable)
			return
		}
		w.Header().Set("Content-Type", "application/json")
		json.NewEncoder(w).Encode(v)
	})
}

// Limits shows user's limits. With the Redis backend it reads the counters
// there; in memory they live in the running relay, which it asks (on
// metrics.listen).
func Limits(ctx context.Context, f *configs.File, user string) (*LimitsView, error) {
	if f.RateLimit.Backend != "redis" {
		if f.Metrics.Listen == "" {
			return nil, errors.New("with ratelimit.backend: memory the counters live in the running relay; set metrics.listen to reach them")
		}
		c, err := NewAdminClient(f)
		if err != nil {
			return nil, err
		}
		return c.Limits(ctx, user)
	}
	log := slog.New(slog.DiscardHandler)
	a, probs := assemble(f, false, log, nil)
	if len(probs) > 0 {
		return nil, probs
	}
	limiter, closeLimiter := newLimiter(f)
	defer closeLimiter()
	return showLimits(ctx, ratelimit.NewQuotas(quotasConfig(f), limiter, log), a.lookup, user)
}
