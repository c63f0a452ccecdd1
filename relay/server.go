// Package relay is what the SMTP front door means: sessions (served by
// relay/smtpd, which owns the connections and the protocol) that apply AUTH,
// the submission policy and the rate limits, and the DATA pipeline that
// signs a message and queues it.
package relay

import (
	"context"
	"crypto/tls"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"sync"
	"sync/atomic"
	"time"

	"github.com/pires/go-proxyproto"
	"github.com/prometheus/client_golang/prometheus"

	"github.com/smarthost/smarthost/dkim"
	"github.com/smarthost/smarthost/policy"
	"github.com/smarthost/smarthost/ratelimit"
	"github.com/smarthost/smarthost/relay/headers"
	"github.com/smarthost/smarthost/relay/queue"
	"github.com/smarthost/smarthost/relay/smtpd"
)

// Listener modes.
const (
	ModeStartTLS = "starttls"
	ModeImplicit = "implicit"
	ModePlain    = "plain"
)

// maxLineLength bounds command and message lines, CRLF included: RFC 5321
// allows 1000; twice that, for sloppy clients.
const maxLineLength = 2000

// Config is what the front door needs from the configuration.
type Config struct {
	Hostname          string
	Listeners         []Listener
	TLS               *tls.Config // required unless every listener is plain
	AllowInsecureAuth bool        // AUTH without TLS (tests only)
	ConnectionsPerIP  int         // 0: no limit
	MaxConnections    int         // in all; default 1000
	IdleTimeout       time.Duration
	WriteTimeout      time.Duration
	AuthTimeout       time.Duration // per credential check; default 30s
	MaxHeaderSize     int           // header block kept in memory; default 1MiB
	// ProxyNetworks may send PROXY headers on listeners with ProxyProtocol.
	ProxyNetworks []string
	Metrics       *Metrics // nil: none
}

// Listener is one listening socket.
type Listener struct {
	Address       string
	Mode          string
	ProxyProtocol bool // read HAProxy PROXY v1/v2 headers from ProxyNetworks
}

// Limits are the per-message limits of policy; they reload with Deps.
type Limits struct {
	MaxRecipients  int
	MaxMessageSize int64
	// BareLF says what a bare LF in message content gets: normalized to
	// CRLF (true, the default of policy.bare_newline) or refused.
	NormalizeBareLF bool
	// Received is how much the Received: field says of the client:
	// ReceivedFull (name and address) or ReceivedAnonymous (neither).
	Received string
}

// Received: field forms.
const (
	ReceivedFull      = "full"
	ReceivedAnonymous = "anonymous"
)

// Deps are the parts a session works with. They are swapped as a whole on
// reload; a session keeps the set it started with.
type Deps struct {
	Policy      *policy.Policy
	Signer      *dkim.Signer // nil: no signing
	RejectNoKey bool         // on_missing_key: reject
	Queue       *queue.Queue
	Quotas      *ratelimit.Quotas // nil: no limits
	Limits      Limits
	Headers     *headers.Rules // header privacy; nil: none
}

// Server runs the listeners.
type Server struct {
	cfg  Config
	log  *slog.Logger
	deps atomic.Pointer[Deps]
	smtp *smtpd.Server

	done     chan struct{} // closed by Shutdown
	doneOnce sync.Once
	failed   chan error // a listener that stopped by itself
	mu       sync.Mutex
	eps      []*endpoint
	serving  bool
	// readers recycles the 32 KiB buffers DATA reads messages through.
	readers sync.Pool
}

// endpoint is one bound listener.
type endpoint struct {
	l       Listener
	ln      net.Listener
	retired atomic.Bool // closed on purpose by SetListeners
}

func NewServer(cfg Config, deps Deps, log *slog.Logger) (*Server, error) {
	if cfg.AuthTimeout == 0 {
		cfg.AuthTimeout = 30 * time.Second
	}
	if cfg.MaxHeaderSize == 0 {
		cfg.MaxHeaderSize = 1 << 20
	}
	if deps.Limits.MaxRecipients <= 0 || deps.Limits.MaxMessageSize <= 0 {
		return nil, errors.New("relay: MaxRecipients and MaxMessageSize must be set")
	}
	for _, l := range cfg.Listeners {
		if l.Mode != ModePlain && cfg.TLS == nil {
			return nil, fmt.Errorf("relay: listener %s (%s) needs TLS", l.Address, l.Mode)
		}
	}
	if cfg.Metrics == nil {
		cfg.Metrics = NewMetrics(prometheus.NewRegistry()) // counted, never shown
	}
	if cfg.TLS != nil {
		cfg.TLS = cfg.TLS.Clone()
		m := cfg.Metrics
		cfg.TLS.GetConfigForClient = func(*tls.ClientHelloInfo) (*tls.Config, error) {
			m.tls.WithLabelValues("started").Inc()
			return nil, nil
		}
		cfg.TLS.VerifyConnection = func(tls.ConnectionState) error {
			m.tls.WithLabelValues("ok").Inc()
			return nil
		}
	}
	s := &Server{cfg: cfg, log: log, done: make(chan struct{}), failed: make(chan error, 1)}
	s.deps.Store(&deps)
	m := cfg.Metrics
	s.smtp = smtpd.New(smtpd.Config{
		Domain:           cfg.Hostname,
		MaxLineLength:    maxLineLength,
		IdleTimeout:      cfg.IdleTimeout,
		WriteTimeout:     cfg.WriteTimeout,
		MaxConnections:   cfg.MaxConnections,
		ConnectionsPerIP: cfg.ConnectionsPerIP,
		Limits:           smtpLimits(deps.Limits),
		ReplyFor:         reply,
		Refused:          s.refused,
		ConnState: func(listener string, open bool) {
			if open {
				m.connectionsNow.WithLabelValues(listener).Inc()
			} else {
				m.connectionsNow.WithLabelValues(listener).Dec()
			}
		},
		Log: log,
	}, (*backend)(s))
	return s, nil
}

func smtpLimits(l Limits) smtpd.Limits {
	return smtpd.Limits{MaxRecipients: l.MaxRecipients, MaxMessageBytes: l.MaxMessageSize, NormalizeBareLF: l.NormalizeBareLF}
}

// Reload swaps the dependencies; open sessions keep their snapshot.
func (s *Server) Reload(deps Deps) {
	s.deps.Store(&deps)
	s.smtp.SetLimits(smtpLimits(deps.Limits))
}

// Listen binds every listener, so that a bad address fails before serving.
func (s *Server) Listen() error {
	for _, l := range s.cfg.Listeners {
		ep, err := s.bind(l)
		if err != nil {
			s.closeListeners()
			return err
		}
		s.mu.Lock()
		s.eps = append(s.eps, ep)
		s.mu.Unlock()
	}
	return nil
}

func (s *Server) bind(l Listener) (*endpoint, error) {
	if l.Mode != ModePlain && s.cfg.TLS == nil {
		return nil, fmt.Errorf("relay: listener %s (%s) needs TLS", l.Address, l.Mode)
	}
	ln, err := net.Listen("tcp", l.Address)
	if err != nil {
		return nil, fmt.Errorf("relay: listen %s: %w", l.Address, err)
	}
	if l.ProxyProtocol {
		// Proxies must send the header; anyone else is never looked at for
		// one (SMTP servers speak first, so peeking would stall), and a
		// header they send is just a bad command.
		policy, err := proxyproto.PolicyFromRanges(s.cfg.ProxyNetworks, proxyproto.REQUIRE, proxyproto.SKIP)
		if err != nil {
			ln.Close()
			return nil, fmt.Errorf("relay: proxy_networks: %w", err)
		}
		ln = &proxyproto.Listener{Listener: ln, ConnPolicy: policy, ReadHeaderTimeout: 10 * time.Second}
	}
	return &endpoint{l: l, ln: &countingListener{Listener: ln, c: s.cfg.Metrics.connections.WithLabelValues(l.Address)}}, nil
}

// Addrs are the bound addresses, in listener order (useful with port 0).
func (s *Server) Addrs() []net.Addr {
	s.mu.Lock()
	defer s.mu.Unlock()
	var a []net.Addr
	for _, ep := range s.eps {
		a = append(a, ep.ln.Addr())
	}
	return a
}

func (s *Server) closeListeners() {
	s.mu.Lock()
	defer s.mu.Unlock()
	for _, ep := range s.eps {
		ep.ln.Close()
	}
}

// Serve runs the bound listeners until Shutdown, or until one fails.
func (s *Server) Serve() error {
	s.mu.Lock()
	s.serving = true
	for _, ep := range s.eps {
		go s.run(ep)
	}
	s.mu.Unlock()
	select {
	case err := <-s.failed:
		s.closeListeners()
		return err
	case <-s.done:
		return nil
	}
}

func (s *Server) run(ep *endpoint) {
	l := smtpd.Listener{Name: ep.l.Address}
	if ep.l.Mode != ModePlain {
		l.TLS = s.cfg.TLS
		l.Implicit = ep.l.Mode == ModeImplicit
	}
	err := s.smtp.Serve(ep.ln, l)
	if err != nil && !ep.retired.Load() {
		select {
		case s.failed <- fmt.Errorf("relay: listener %s: %w", ep.l.Address, err):
		default:
		}
	}
}

// SetListeners changes the listeners to ls without dropping a connection:
// new ones are bound and served, removed ones stop accepting and their open
// sessions may finish for up to grace. On an error nothing is changed.
func (s *Server) SetListeners(ls []Listener, grace time.Duration) error {
	s.mu.Lock()
	defer s.mu.Unlock()
	want := map[Listener]bool{}
	for _, l := range ls {
		want[l] = true
	}
	have := map[Listener]*endpoint{}
	for _, ep := range s.eps {
		have[ep.l] = ep
	}
	var added []*endpoint
	for _, l := range ls {
		if have[l] != nil {
			continue
		}
		ep, err := s.bind(l)
		if err != nil {
			for _, a := range added {
				a.ln.Close()
			}
			return err
		}
		added = append(added, ep)
	}
	var kept []*endpoint
	for _, ep := range s.eps {
		if want[ep.l] {
			kept = append(kept, ep)
			continue
		}
		ep.retired.Store(true)
		s.smtp.Retire(ep.ln, grace)
		s.log.Info("listener removed", "address", ep.l.Address, "mode", ep.l.Mode)
	}
	for _, ep := range added {
		if s.serving {
			go s.run(ep)
		}
		s.log.Info("listener added", "address", ep.ln.Addr().String(), "mode", ep.l.Mode)
	}
	// Keep the configured order, for Addrs.
	byL := map[Listener]*endpoint{}
	for _, ep := range append(kept, added...) {
		byL[ep.l] = ep
	}
	s.eps = s.eps[:0]
	for _, l := range ls {
		s.eps = append(s.eps, byL[l])
	}
	return nil
}

// Shutdown stops accepting, lets open transactions finish until ctx is done,
// then closes what is left. Nothing unacknowledged is lost: a client cut off
// mid-DATA retries, and its draft is discarded.
func (s *Server) Shutdown(ctx context.Context) error {
	s.doneOnce.Do(func() { close(s.done) })
	err := s.smtp.Shutdown(ctx)
	if errors.Is(err, smtpd.ErrServerClosed) {
		return nil
	}
	return err
}

// refused logs and counts a refusal (smtpd.Config.Refused): every reply
// marked as one, protocol and policy alike.
func (s *Server) refused(c *smtpd.Conn, cmd string, r *smtpd.Reply, cause error) {
	m := s.cfg.Metrics
	m.replies.WithLabelValues(cmd, fmt.Sprint(r.Code), fmt.Sprintf("%d.%d.%d", r.Enhanced[0], r.Enhanced[1], r.Enhanced[2])).Inc()
	log := s.log.With("remote", c.RemoteAddr().String())
	sess, _ := c.Session().(*session)
	if sess != nil {
		log = sess.log.With("user", sess.userName(), "from", sess.from)
		var ex *ratelimit.ExceededError
		if errors.As(cause, &ex) {
			_, class := sess.quotaKey()
			m.limitHits.WithLabelValues(ex.What, sess.deps.Quotas.ClassOf(class)).Inc()
		}
		if errors.Is(cause, policy.ErrRecipientRefused) {
			m.rcptRules.WithLabelValues(sess.deps.Policy.RulesOf(sess.client)).Inc()
		}
	}
	lvl := slog.LevelInfo
	switch r.Row() {
	case smtpd.ReplyInternal, smtpd.ReplySpoolFailed, smtpd.ReplyDiskFull, smtpd.ReplyAuthTempFail, smtpd.ReplyPanic:
		lvl = slog.LevelError
	}
	args := []any{"cmd", cmd, "code", r.Code, "enhanced", fmt.Sprintf("%d.%d.%d", r.Enhanced[0], r.Enhanced[1], r.Enhanced[2]), "reply", r.Text}
	if cause != nil {
		args = append(args, "err", cause)
	}
	if reason := policy.RefusalReason(cause); reason != "" {
		args = append(args, "reason", reason) // disabled, locked, ...: the account's state
	}
	log.Log(context.Background(), lvl, "rejected", args...)
}
