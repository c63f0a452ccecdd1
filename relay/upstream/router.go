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

	"github.com/smarthost/smarthost/relay/queue"
)

// Config is the upstreams and routes sections of the configuration, parsed.
type Config struct {
	Hostname  string // our EHLO name
	Upstreams []Upstream
	Routes    []Route  // first match wins; none: every message to all upstreams in order
	Metrics   *Metrics // nil: none
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
}

// Transport makes one attempt to hand a message to one upstream. It returns
// one outcome per recipient of to, in order; a 5xx answer is marked with
// queue.Permanent.
type Transport interface {
	Send(ctx context.Context, m *queue.Message, to []queue.Recipient) []error
	Close()
}

type named struct {
	name string
	t    Transport
}

// Router implements queue.Deliverer.
type Router struct {
	cfg    Config
	byName map[string]named
	weight map[string]int
	log    *slog.Logger
	mu     sync.Mutex
	rand   *rand.Rand // for weighted order
}

var _ queue.Deliverer = (*Router)(nil)

// NewRouter builds the transports of every upstream.
func NewRouter(cfg Config, log *slog.Logger) (*Router, error) {
	r := &Router{cfg: cfg, byName: map[string]named{}, weight: map[string]int{}, log: log,
		rand: rand.New(rand.NewPCG(uint64(time.Now().UnixNano()), 1))}
	for _, u := range cfg.Upstreams {
		r.weight[u.Name] = u.Weight
		t, err := newTransport(u, cfg.Hostname)
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
	}
	return r, nil
}

func newTransport(u Upstream, hostname string) (Transport, error) {
	pu, err := url.Parse(u.URL)
	if err != nil {
		return nil, err
	}
	switch pu.Scheme {
	case "file":
		return newFileTransport(FilePath(pu))
	case "smtp", "smtps":
		return newSMTPTransport(u, pu, hostname)
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

// upstreamsFor returns the failover list for one recipient: its own (an
// archive copy's), else its route's.
func (r *Router) upstreamsFor(m *queue.Message, rcpt queue.Recipient) []string {
	if len(rcpt.Upstreams) > 0 {
		return rcpt.Upstreams
	}
	rd, sd := domainOf(rcpt.Addr), domainOf(m.From)
	for _, rt := range r.cfg.Routes {
		if matchDomain(rt.RecipientDomains, rd) && matchDomain(rt.SenderDomains, sd) && matchDomain(rt.Classes, m.Class) {
			return rt.Upstreams
		}
	}
	all := make([]string, len(r.cfg.Upstreams))
	for i, u := range r.cfg.Upstreams {
		all[i] = u.Name
	}
	return all
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

// Deliver sends m's pending recipients, grouped by route. Each group tries
// its upstreams in order; a recipient moves on to the next upstream after a
// temporary failure (connection refused, 4xx) or when the upstream cannot
// take the message (no SMTPUTF8, too large), and stops at acceptance or a
// permanent refusal. One that no upstream of its route could take fails at
// once, unless one of them failed only for the moment.
func (r *Router) Deliver(ctx context.Context, m *queue.Message) []error {
	pending := m.PendingRecipients()
	errs := make([]error, len(pending))
	transient := make([]error, len(pending)) // the last temporary error, if any
	groups := map[string][]int{}             // failover list → indexes into pending
	var order []string
	for i, rcpt := range pending {
		key := strings.Join(r.upstreamsFor(m, rcpt), "\x00")
		if _, ok := groups[key]; !ok {
			order = append(order, key)
		}
		groups[key] = append(groups[key], i)
	}
	for _, key := range order {
		left := groups[key]
		for _, name := range r.order(strings.Split(key, "\x00")) {
			if len(left) == 0 {
				break
			}
			up := r.byName[name]
			to := make([]queue.Recipient, len(left))
			for j, i := range left {
				to[j] = pending[i]
			}
			start := time.Now()
			out := up.t.Send(ctx, m, to)
			sent, failed := 0, 0
			var retry []int
			for j, i := range left {
				err := out[j]
				if err != nil {
					err = fmt.Errorf("upstream %s: %w", name, err)
				}
				errs[i] = err
				switch c, _ := classify(err); {
				case err == nil:
					sent++
				case queue.IsPermanent(err):
					failed++
				case c == unsupported:
					retry = append(retry, i)
				default:
					transient[i] = err
					retry = append(retry, i)
				}
			}
			r.cfg.Metrics.observe(name, time.Since(start), sent, len(retry), failed)
			if len(retry) > 0 {
				r.log.Info("upstream deferred", "msg_id", m.ID, "upstream", name, "recipients", len(retry), "err", errs[retry[0]])
			}
			left = retry
		}
		for _, i := range left {
			if c, _ := classify(errs[i]); c != unsupported {
				continue
			}
			if transient[i] != nil {
				errs[i] = transient[i] // an upstream that was down may take it later
			} else {
				errs[i] = queue.Permanent(errs[i])
			}
		}
	}
	for i, rcpt := range pending {
		if rcpt.Archive {
			r.cfg.Metrics.archived(errs[i] == nil)
		}
	}
	return errs
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
