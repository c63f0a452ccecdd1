// Package upstream forwards queued messages to the configured smart hosts:
// it picks the upstreams by route and fails over between them in order.
package upstream

import (
	"context"
	"crypto/tls"
	"crypto/x509"
	"fmt"
	"log/slog"
	"math/rand/v2"
	"net/url"
	"strings"
	"sync"
	"time"

	"golang.org/x/net/idna"

	"github.com/smarthost/smarthost/ratelimit"
	"github.com/smarthost/smarthost/relay/queue"
)

// Config is the upstreams and routes sections of the configuration, parsed.
type Config struct {
	Hostname  string // our EHLO name
	Upstreams []Upstream
	Routes    []Route  // first match wins; none: every message to all upstreams in order
	Metrics   *Metrics // nil: none
	Shaping   *Shaping // nil: no limits, no holds
}

// Upstream is one smart host.
type Upstream struct {
	Name      string
	URL       string // smtp://host:port, smtps://host:port, file:///dir
	TLS       string // required | opportunistic | none (smtp:// only)
	TLSVerify bool
	RootCAs   *x509.CertPool // nil: the system roots
	Username  string
	Password  string
	// AuthMechanism is MechAuto (or ""), MechPlain, MechLogin, MechXOAuth2
	// or MechOAuthBearer; Tokens gives the bearer tokens of the last two.
	AuthMechanism string
	Tokens        TokenSource
	// ClientCert is presented to the upstream (a corporate relay, Google's
	// SMTP relay service) to authenticate by certificate.
	ClientCert     *tls.Certificate
	MaxConnections int
	Timeout        time.Duration // per connection and per command
	// ConnectTimeout bounds the name lookup and the TCP connect: an
	// upstream whose address drops packets (a firewall, a host that is
	// gone) would otherwise hold a pool slot for all of Timeout.
	ConnectTimeout time.Duration
	// DisableExtensions are EHLO keywords to act as if the upstream did
	// not offer (such as PIPELINING or CHUNKING, for an upstream whose
	// support for them is broken), as Postfix's smtp_discard_ehlo_keywords.
	DisableExtensions []string
	// Budget is the upstream's sending identity and its limits (with
	// Shaping; nil: its Identity, no limits but holds).
	Budget *ratelimit.Budget
	// Throttle are the replies that put it on hold; nil: the
	// DefaultThrottleRules.
	Throttle []ThrottleRule
	// Weight > 0 puts the upstream in its routes' load-balancing set: each
	// delivery tries those first, in an order drawn by weight, then the
	// others in the route's order.
	Weight int
}

// Route sends the recipients it matches to its upstreams, in failover order.
// An empty match matches everything.
type Route struct {
	RecipientDomains []string
	SenderDomains    []string
	Classes          []string // the submitter's rate-limit class
	Upstreams        []string
	// Priority, when set (high, normal, bulk), is that of its messages
	// waiting for an upstream's budget, whatever their class says.
	Priority string
}

// Transport makes one attempt to hand a message to one upstream. It returns
// one outcome per recipient of to, in order; a 5xx answer is marked with
// queue.Permanent.
type Transport interface {
	Send(ctx context.Context, m *queue.Message, to []queue.Recipient) []queue.Outcome
	Close()
}

type named struct {
	name string
	t    Transport
}

// Router implements queue.Deliverer.
type Router struct {
	cfg     Config
	byName  map[string]named
	weight  map[string]int
	routes  []queue.Priority // each route's priority, -1 where it sets none
	shaping *shaping         // nil: none
	log     *slog.Logger
	mu      sync.Mutex
	rand    *rand.Rand // for weighted order
}

var _ queue.Deliverer = (*Router)(nil)

// NewRouter builds the transports of every upstream.
func NewRouter(cfg Config, log *slog.Logger) (*Router, error) {
	r := &Router{cfg: cfg, byName: map[string]named{}, weight: map[string]int{}, log: log,
		rand: rand.New(rand.NewPCG(uint64(time.Now().UnixNano()), 1))}
	if s := cfg.Shaping; s != nil && s.Shaper != nil {
		r.shaping = &shaping{s: s.Shaper, classes: s.Classes, budgets: map[string]*ratelimit.Budget{},
			rules: map[string][]ThrottleRule{}, width: map[string]int{}, held: map[string]time.Time{}}
	}
	for _, u := range cfg.Upstreams {
		r.weight[u.Name] = u.Weight
		t, err := r.newTransport(u, cfg.Hostname)
		if err != nil {
			return nil, fmt.Errorf("upstream %s: %w", u.Name, err)
		}
		r.byName[u.Name] = named{u.Name, t}
	}
	for i, rt := range cfg.Routes {
		for _, n := range rt.Upstreams {
			if _, ok := r.byName[n]; !ok {
				return nil, fmt.Errorf("routes[%d]: no upstream is named %q", i, n)
			}
		}
		p, err := queue.ParsePriority(rt.Priority)
		if rt.Priority == "" {
			p = -1
		}
		if err != nil {
			return nil, fmt.Errorf("routes[%d]: %w", i, err)
		}
		r.routes = append(r.routes, p)
	}
	return r, nil
}

func (r *Router) newTransport(u Upstream, hostname string) (Transport, error) {
	pu, err := url.Parse(u.URL)
	if err != nil {
		return nil, err
	}
	switch pu.Scheme {
	case "file":
		return newFileTransport(FilePath(pu))
	case "smtp", "smtps":
		if r.shaping == nil {
			return newSMTPTransport(u, pu, hostname)
		}
		b := r.shaping.setUp(&u)
		t, err := newSMTPTransport(u, pu, hostname)
		if err == nil && b.Limits.Connections > 0 {
			t.pool.withLeases(r.shaping.leases(b))
		}
		return t, err
	}
	return nil, fmt.Errorf("scheme of %q must be smtp, smtps or file", u.URL)
}

// FilePath is the folder a file:// URL names: file:///abs/dir, or a path
// relative to the working folder as file://./dir or file:dir.
func FilePath(u *url.URL) string {
	if u.Opaque != "" {
		return u.Opaque
	}
	if u.Host != "" {
		return u.Host + u.Path
	}
	return u.Path
}

// routeFor returns the failover list for one recipient, its own (an
// archive copy's) or else its route's, and its priority there: the
// route's, else its class's, else normal.
func (r *Router) routeFor(m *queue.Message, rcpt queue.Recipient) ([]string, queue.Priority) {
	p := queue.PriorityNormal
	if r.shaping != nil {
		if cp, ok := r.shaping.classes[m.Class]; ok {
			p = cp
		}
	}
	if len(rcpt.Upstreams) > 0 {
		return rcpt.Upstreams, p
	}
	rd, sd := domainOf(rcpt.Addr), domainOf(m.From)
	for i, rt := range r.cfg.Routes {
		if matchDomain(rt.RecipientDomains, rd) && matchDomain(rt.SenderDomains, sd) && matchDomain(rt.Classes, m.Class) {
			if r.routes[i] >= 0 {
				p = r.routes[i]
			}
			return rt.Upstreams, p
		}
	}
	all := make([]string, len(r.cfg.Upstreams))
	for i, u := range r.cfg.Upstreams {
		all[i] = u.Name
	}
	return all, p
}

// domainOf is the domain of an address (the policy package checked its
// syntax at RCPT and MAIL) in lower-case A-label form, the form routes
// compare in.
func domainOf(addr string) string {
	i := strings.LastIndexByte(addr, '@')
	if i < 0 {
		return ""
	}
	return normalDomain(addr[i+1:])
}

func normalDomain(d string) string {
	if a, err := idna.Lookup.ToASCII(d); err == nil {
		d = a
	}
	return strings.ToLower(d)
}

func matchDomain(list []string, d string) bool {
	if len(list) == 0 {
		return true
	}
	for _, x := range list {
		if normalDomain(x) == d || strings.EqualFold(x, d) {
			return true
		}
	}
	return false
}

// order puts the weighted upstreams of a failover list first, in an order
// drawn by weight (without replacement), and the rest after them as listed.
func (r *Router) order(list []string) []string {
	var weighted, rest []string
	total := 0
	for _, n := range list {
		if w := r.weight[n]; w > 0 {
			weighted = append(weighted, n)
			total += w
		} else {
			rest = append(rest, n)
		}
	}
	if len(weighted) < 2 {
		return append(weighted, rest...)
	}
	out := make([]string, 0, len(list))
	r.mu.Lock()
	for len(weighted) > 0 {
		pick := r.rand.IntN(total)
		for i, n := range weighted {
			if pick -= r.weight[n]; pick < 0 {
				out = append(out, n)
				total -= r.weight[n]
				weighted = append(weighted[:i], weighted[i+1:]...)
				break
			}
		}
	}
	r.mu.Unlock()
	return append(out, rest...)
}

// Close closes every upstream's idle connections.
func (r *Router) Close() {
	for _, n := range r.byName {
		n.t.Close()
	}
}

// all repeats one error for n recipients.
func all(n int, err error) []error {
	out := make([]error, n)
	for i := range out {
		out[i] = err
	}
	return out
}

// ProbeResult is the outcome of one upstream's probe.
type ProbeResult struct {
	Name string
	Err  error
}

// Probe connects to every upstream as a delivery would (TLS, AUTH) without
// sending anything, for `check-config --probe`.
func (r *Router) Probe(ctx context.Context) []ProbeResult {
	var out []ProbeResult
	for _, u := range r.cfg.Upstreams {
		out = append(out, ProbeResult{u.Name, r.byName[u.Name].t.(prober).probe(ctx)})
	}
	return out
}

type prober interface {
	probe(ctx context.Context) error
}
