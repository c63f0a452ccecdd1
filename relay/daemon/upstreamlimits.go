package daemon

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"log/slog"
	"net/http"
	"net/url"
	"strings"
	"time"

	"github.com/smarthost/smarthost/configs"
	"github.com/smarthost/smarthost/ratelimit"
	"github.com/smarthost/smarthost/relay/upstream"
)

// UpstreamView is the answer of GET /v1/upstreams/{name}/limits and
// `limits show --upstream`: an upstream's budget as every node shares it.
type UpstreamView struct {
	Upstream    string      `json:"upstream"`
	Identity    string      `json:"identity"` // the login its budget is kept under, shared with others that use it
	Limits      []LimitView `json:"limits"`
	Connections int         `json:"connections"` // the limit; 0: none
	Sessions    int         `json:"sessions"`    // open now, by every node
	Held        bool        `json:"held"`
	HoldLeft    string      `json:"hold_left"`
	Level       int         `json:"throttle_level"` // throttle replies in a row
	Probing     bool        `json:"probing"`        // a message is testing the end of the hold
	Nodes       int         `json:"nodes"`          // alive, as this node last heard; 0: unknown
}

var errNoSuchUpstream = errors.New("no such upstream")

// rateText says a rate as the configuration does: 30/m, 10000/d.
func rateText(r ratelimit.Rate) string {
	unit := map[time.Duration]string{time.Second: "s", time.Minute: "m", time.Hour: "h", 24 * time.Hour: "d"}[r.Per]
	if unit == "" {
		unit = r.Per.String()
	}
	return fmt.Sprintf("%d/%s", r.N, unit)
}

// showUpstream reads budget b of upstream name from the shaper's store.
func showUpstream(ctx context.Context, s *ratelimit.Shaper, name string, b *ratelimit.Budget) (*UpstreamView, error) {
	if b == nil {
		return nil, fmt.Errorf("%w: %q", errNoSuchUpstream, name)
	}
	st, err := s.Show(ctx, b)
	if err != nil {
		return nil, err
	}
	v := &UpstreamView{Upstream: name, Identity: b.Key, Limits: []LimitView{}, Connections: st.Connections, Sessions: st.Sessions,
		Held: st.HoldLeft > 0 || st.Level > 0, HoldLeft: st.HoldLeft.Round(time.Second).String(), Level: st.Level, Probing: st.Probing, Nodes: st.Nodes}
	for _, l := range []struct {
		what string
		s    *ratelimit.LimitStatus
	}{{"messages", st.Messages}, {"recipients", st.Recipients}} {
		if l.s != nil {
			v.Limits = append(v.Limits, LimitView{Limit: l.what, Rate: rateText(l.s.Rate), Remaining: l.s.Remaining,
				FullIn: l.s.FullIn.Round(time.Second).String()})
		}
	}
	return v, nil
}

// String is the view as `limits show --upstream` prints it.
func (v *UpstreamView) String() string {
	var b strings.Builder
	fmt.Fprintf(&b, "upstream %s (limits kept as %q)\n", v.Upstream, v.Identity)
	for _, l := range v.Limits {
		fmt.Fprintf(&b, "  %-11s %-12s %d left, full again in %s\n", l.Limit, l.Rate, l.Remaining, l.FullIn)
	}
	if v.Connections > 0 {
		fmt.Fprintf(&b, "  %-11s %-12d %d open\n", "connections", v.Connections, v.Sessions)
	}
	if len(v.Limits) == 0 && v.Connections == 0 {
		fmt.Fprintln(&b, "  no limits")
	}
	switch {
	case v.Probing:
		fmt.Fprintf(&b, "  on hold after %d throttle replies: a probe message is out\n", v.Level)
	case v.Held && v.HoldLeft != "0s":
		fmt.Fprintf(&b, "  on hold after %d throttle replies: %s left\n", v.Level, v.HoldLeft)
	case v.Held:
		fmt.Fprintf(&b, "  on hold after %d throttle replies: the next message probes\n", v.Level)
	default:
		fmt.Fprintln(&b, "  not on hold")
	}
	return b.String()
}

// upstreamHandler serves GET /v1/upstreams/{name}/limits.
func upstreamHandler(show func(ctx context.Context, name string) (*UpstreamView, error), log *slog.Logger) http.Handler {
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		v, err := show(r.Context(), r.PathValue("name"))
		switch {
		case errors.Is(err, errNoSuchUpstream):
			http.Error(w, "no such upstream", http.StatusNotFound)
			return
		case err != nil:
			log.Warn("upstream limits lookup failed", "upstream", r.PathValue("name"), "err", err)
			http.Error(w, "lookup failed: backend unavailable", http.StatusServiceUnavailable)
			return
		}
		w.Header().Set("Content-Type", "application/json")
		json.NewEncoder(w).Encode(v)
	})
}

// configBudget is upstream name's budget as the router makes it from f.
func configBudget(f *configs.File, name string) *ratelimit.Budget {
	for _, u := range f.Upstreams {
		if u.Name == name {
			b, _ := upstreamShaping(u, f.Policy.MaxRecipients)
			b.Key = upstream.Identity(upstream.Upstream{Name: u.Name, URL: u.URL, Username: u.Username})
			return b
		}
	}
	return nil
}

// UpstreamLimits shows upstream name's budget. With the Redis backend it
// reads it there; in memory it lives in the running relay, which it asks
// (on metrics.listen).
func UpstreamLimits(ctx context.Context, f *configs.File, name string) (*UpstreamView, error) {
	if f.RateLimit.Backend != "redis" {
		if f.Metrics.Listen == "" {
			return nil, errors.New("with ratelimit.backend: memory the upstreams' budgets live in the running relay; set metrics.listen to reach them")
		}
		c, err := NewAdminClient(f)
		if err != nil {
			return nil, err
		}
		var v UpstreamView
		return &v, c.getJSON(ctx, "/v1/upstreams/"+url.PathEscape(name)+"/limits", &v)
	}
	limiter, closeLimiter := newLimiter(f)
	defer closeLimiter()
	st, _ := limiter.(ratelimit.UpstreamStore)
	s := ratelimit.NewShaper(ratelimit.ShaperConfig{Timeout: time.Duration(f.RateLimit.Timeout)}, st, slog.New(slog.DiscardHandler))
	return showUpstream(ctx, s, name, configBudget(f, name))
}
