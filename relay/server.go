// Package relay is the SMTP front door: listeners, sessions (go-smtp's
// Session, served by relay/smtpd), AUTH, the submission policy checks and the DATA pipeline
// into the queue.
package relay

import (
	"context"
	"crypto/rand"
	"crypto/tls"
	"encoding/hex"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"net/netip"
	"sync"
	"sync/atomic"
	"time"

	"github.com/emersion/go-smtp"
	"github.com/pires/go-proxyproto"
	"github.com/prometheus/client_golang/prometheus"

	"github.com/smarthost/smarthost/dkim"
	"github.com/smarthost/smarthost/policy"
	"github.com/smarthost/smarthost/ratelimit"
	"github.com/smarthost/smarthost/relay/queue"
	"github.com/smarthost/smarthost/relay/smtpd"
)

// Listener modes.
const (
	ModeStartTLS = "starttls"
	ModeImplicit = "implicit"
	ModePlain    = "plain"
)

// Config is what the front door needs from the configuration.
type Config struct {
	Hostname          string
	Listeners         []Listener
	TLS               *tls.Config // required unless every listener is plain
	AllowInsecureAuth bool        // AUTH without TLS (tests only)
	MaxRecipients     int
	MaxMessageSize    int64
	ConnectionsPerIP  int           // 0: no limit
	MaxConnections    int           // in all; default 1000
	IdleTimeout       time.Duration // per read; default 5m (RFC 5321 4.5.3.2)
	WriteTimeout      time.Duration // per reply; default 1m
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

// Deps are the parts a session works with. They are swapped as a whole on
// reload; a session keeps the set it started with.
type Deps struct {
	Policy      *policy.Policy
	Signer      *dkim.Signer // nil: no signing
	RejectNoKey bool         // on_missing_key: reject
	Queue       *queue.Queue
	Quotas      *ratelimit.Quotas // nil: no limits
}

// Server runs the listeners.
type Server struct {
	cfg  Config
	log  *slog.Logger
	deps atomic.Pointer[Deps]

	closing  atomic.Bool
	done     chan struct{} // closed by Shutdown
	doneOnce sync.Once
	failed   chan error // a listener that stopped by itself
	mu       sync.Mutex
	eps      []*endpoint
	serving  bool
	perIP    map[netip.Addr]int
	conns    map[*idleConn]struct{} // open connections, for draining
	total    int
	// readers recycles the 32 KiB buffers DATA reads messages through.
	readers sync.Pool
}

func NewServer(cfg Config, deps Deps, log *slog.Logger) (*Server, error) {
	if cfg.IdleTimeout == 0 {
		cfg.IdleTimeout = 5 * time.Minute
	}
	if cfg.WriteTimeout == 0 {
		cfg.WriteTimeout = time.Minute
	}
	if cfg.AuthTimeout == 0 {
		cfg.AuthTimeout = 30 * time.Second
	}
	if cfg.MaxConnections == 0 {
		cfg.MaxConnections = 1000
	}
	if cfg.MaxHeaderSize == 0 {
		cfg.MaxHeaderSize = 1 << 20
	}
	if cfg.MaxRecipients <= 0 || cfg.MaxMessageSize <= 0 {
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
	s := &Server{cfg: cfg, log: log, perIP: map[netip.Addr]int{}, conns: map[*idleConn]struct{}{}, done: make(chan struct{}), failed: make(chan error, 1)}
	s.deps.Store(&deps)
	return s, nil
}

// Reload swaps the dependencies; open sessions keep their snapshot.
func (s *Server) Reload(deps Deps) { s.deps.Store(&deps) }

// endpoint is one bound listener and the smtpd server on it.
type endpoint struct {
	l       Listener
	srv     *smtpd.Server
	ln      net.Listener
	retired atomic.Bool // closed on purpose by SetListeners
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
	var wrapped net.Listener = &limitListener{Listener: ln, s: s, name: l.Address}
	if l.Mode == ModeImplicit {
		wrapped = tls.NewListener(wrapped, s.cfg.TLS)
	}
	cfg := smtpd.Config{
		Domain:          s.cfg.Hostname,
		MaxRecipients:   s.cfg.MaxRecipients,
		MaxMessageBytes: s.cfg.MaxMessageSize,
		MaxLineLength:   2000, // RFC 5321 allows 1000; twice that for sloppy clients
		WriteTimeout:    s.cfg.WriteTimeout,
		// Reads are bounded by the connection itself (idleConn): per read,
		// so that a long DATA upload is not cut off by a per-command
		// deadline. AUTH before TLS is refused by the session with the
		// contract's 538, counted and logged; see session.AuthMechanisms.
		AllowInsecureAuth: true,
		EnableSMTPUTF8:    true,
		EnableDSN:         true,
		Log:               s.log,
	}
	if l.Mode != ModePlain {
		cfg.TLS = s.cfg.TLS
	}
	srv := smtpd.New(cfg, &backend{s: s, mode: l.Mode})
	return &endpoint{l: l, srv: srv, ln: wrapped}, nil
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
	err := ep.srv.Serve(ep.ln)
	if err != nil && !ep.retired.Load() && !s.closing.Load() {
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
		go func(ep *endpoint) {
			ctx, cancel := context.WithTimeout(context.Background(), grace)
			defer cancel()
			ep.srv.StopAccepting(ctx)
		}(ep)
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
	s.mu.Lock()
	s.closing.Store(true)
	eps := s.eps
	// Sessions waiting for their next command (application servers keep
	// them open) are let go at once with smtpd's 421; ones sending data
	// finish, and their next MAIL gets 421 4.3.2.
	for c := range s.conns {
		c.drain()
	}
	s.mu.Unlock()
	s.doneOnce.Do(func() { close(s.done) })
	var wg sync.WaitGroup
	var err error
	var emu sync.Mutex
	for _, ep := range eps {
		wg.Add(1)
		go func(srv *smtpd.Server) {
			defer wg.Done()
			if e := srv.Shutdown(ctx); e != nil && !errors.Is(e, smtpd.ErrServerClosed) {
				srv.Close()
				emu.Lock()
				err = e
				emu.Unlock()
			}
		}(ep.srv)
	}
	wg.Wait()
	return err
}

type backend struct {
	s    *Server
	mode string
}

func (b *backend) NewSession(c *smtpd.Conn) (smtp.Session, error) {
	if b.s.closing.Load() {
		return nil, replyShuttingDown
	}
	_, isTLS := c.TLSConnectionState()
	var id [6]byte
	rand.Read(id[:])
	sess := &session{
		id:   hex.EncodeToString(id[:]),
		srv:  b.s,
		deps: b.s.deps.Load(),
		conn: c,
		tls:  isTLS,
		helo: c.Hostname(),
	}
	sess.client.Addr = remoteAddr(c.Conn())
	sess.log = b.s.log.With("session", sess.id, "remote", sess.client.Addr.String(), "tls", isTLS)
	sess.log.Info("session", "helo", sanitizeHelo(c.Hostname()), "listener", b.mode)
	return sess, nil
}

func remoteAddr(c net.Conn) netip.Addr {
	if ap, err := netip.ParseAddrPort(c.RemoteAddr().String()); err == nil {
		return ap.Addr().Unmap()
	}
	return netip.Addr{}
}
