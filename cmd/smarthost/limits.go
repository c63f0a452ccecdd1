package main

import (
	"context"
	"crypto/tls"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net/http"
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

// limitsView is the answer of GET /v1/limits/{user} and `limits show`.
type limitsView struct {
	User   string      `json:"user"`
	Key    string      `json:"key"` // the name limits are kept under
	Class  string      `json:"class"`
	Limits []limitView `json:"limits"`
}

type limitView struct {
	Limit     string `json:"limit"`
	Rate      string `json:"rate"`
	Remaining int64  `json:"remaining"`
	FullIn    string `json:"full_in"`
}

// lookupFunc finds a user by login name without a password.
type lookupFunc func(ctx context.Context, name string) (*policy.User, error)

func showLimits(ctx context.Context, q *ratelimit.Quotas, lookup lookupFunc, name string) (*limitsView, error) {
	u, err := lookup(ctx, name)
	if err != nil {
		return nil, err
	}
	st, err := q.Show(ctx, u.Name, u.Class)
	if err != nil {
		return nil, err
	}
	v := &limitsView{User: name, Key: u.Name, Class: q.ClassOf(u.Class), Limits: []limitView{}}
	for _, s := range st {
		unit := map[time.Duration]string{time.Second: "s", time.Minute: "m", time.Hour: "h", 24 * time.Hour: "d"}[s.Rate.Per]
		if unit == "" {
			unit = s.Rate.Per.String()
		}
		v.Limits = append(v.Limits, limitView{Limit: s.What, Rate: fmt.Sprintf("%d/%s", s.Rate.N, unit),
			Remaining: s.Remaining, FullIn: s.ResetAfter.Round(time.Second).String()})
	}
	return v, nil
}

func (v *limitsView) print(w io.Writer) {
	fmt.Fprintf(w, "user %s (limits kept as %q), class %s\n", v.User, v.Key, v.Class)
	if len(v.Limits) == 0 {
		fmt.Fprintln(w, "  no limits")
	}
	for _, l := range v.Limits {
		fmt.Fprintf(w, "  %-10s %-12s %d left, full again in %s\n", l.Limit, l.Rate, l.Remaining, l.FullIn)
	}
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

const limitsShowUsage = "USER [--config FILE]"

var limitsVerbs = map[string]verb{
	"show": {limitsShowUsage, "the user's class, each limit, what is left and when it is full again", limitsShow},
}

func limitsShow(c cmdIO, args []string) int {
	fs := c.flags("limits show", limitsShowUsage)
	path := fs.String("config", "", "configuration file")
	pos, code, done := fs.parse(args)
	if done {
		return code
	}
	stdout, stderr := c.stdout, c.stderr
	if len(pos) != 1 {
		fs.Usage()
		return exitBadConfig
	}
	f, source, code := fs.config(*path)
	if f == nil {
		return code
	}
	pos = append([]string{"show"}, pos...)
	if f.RateLimit.Backend != "redis" {
		// Memory limits live inside the running relay: ask it.
		if f.Metrics.Listen == "" {
			errorf(stderr, "limits: with ratelimit.backend: memory the counters live in the running relay; set metrics.listen to reach them")
			return exitRuntime
		}
		resp, err := http.Get("http://" + f.Metrics.Listen + "/v1/limits/" + pos[1])
		if err != nil {
			errorf(stderr, "limits: %v", err)
			return exitRuntime
		}
		defer resp.Body.Close()
		var v limitsView
		if resp.StatusCode != http.StatusOK || json.NewDecoder(resp.Body).Decode(&v) != nil {
			errorf(stderr, "limits: the relay answered %s", resp.Status)
			return exitRuntime
		}
		v.print(stdout)
		return exitOK
	}
	log := slog.New(slog.NewTextHandler(io.Discard, nil))
	p, probs := compose(f, false, log, nil)
	if len(probs) > 0 {
		printProblems(stderr, source, probs)
		return exitBadConfig
	}
	limiter, closeLimiter := newLimiter(f)
	defer closeLimiter()
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	v, err := showLimits(ctx, ratelimit.NewQuotas(quotasConfig(f), limiter, log), p.lookup, pos[1])
	if err != nil {
		errorf(stderr, "limits: %v", err)
		return exitRuntime
	}
	v.print(stdout)
	return exitOK
}
