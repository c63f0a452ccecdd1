package smtpd

import (
	"context"
	"crypto/tls"
	"errors"
	"fmt"
	"net"
	"sync"
	"sync/atomic"
	"syscall"
	"time"

	"github.com/pires/go-proxyproto"
)

// Listener modes.
const (
	ModeStartTLS = "starttls" // STARTTLS offered
	ModeImplicit = "implicit" // TLS from the first byte (RFC 8314)
	ModePlain    = "plain"    // no TLS at all
)

// Listener is one listening socket, as configured.
type Listener struct {
	Address string // host:port; in logs and the hooks, as written here
	Mode    string // ModeStartTLS, ModeImplicit or ModePlain
	// ProxyProtocol reads HAProxy PROXY v1/v2 headers from
	// Config.ProxyNetworks.
	ProxyProtocol bool
}

// endpoint is one bound listener.
type endpoint struct {
	l       Listener
	ln      net.Listener
	tls     *tls.Config // nil: plain
	retired atomic.Bool // closed on purpose by SetListeners
	loop    sync.WaitGroup
	conns   sync.WaitGroup // its connections
}

func (ep *endpoint) implicit() bool { return ep.l.Mode == ModeImplicit }

// Listen binds every configured listener, so that a bad address fails
// before serving. On an error none stays bound.
func (s *Server) Listen() error {
	var eps []*endpoint
	for _, l := range s.cfg.Listeners {
		ep, err := s.bind(l)
		if err != nil {
			for _, ep := range eps {
				ep.ln.Close()
			}
			return err
		}
		eps = append(eps, ep)
	}
	s.mu.Lock()
	defer s.mu.Unlock()
	s.eps = append(s.eps, eps...)
	if s.serving {
		for _, ep := range eps {
			s.start(ep)
		}
	}
	return nil
}

func (s *Server) bind(l Listener) (*endpoint, error) {
	ep := &endpoint{l: l}
	switch l.Mode {
	case ModePlain:
	case ModeStartTLS, ModeImplicit:
		if s.cfg.TLS == nil {
			return nil, fmt.Errorf("smtpd: listener %s (%s) needs TLS", l.Address, l.Mode)
		}
		ep.tls = s.cfg.TLS
	default:
		return nil, fmt.Errorf("smtpd: listener %s: unknown mode %q", l.Address, l.Mode)
	}
	ln, err := net.Listen("tcp", l.Address)
	if err != nil {
		return nil, fmt.Errorf("smtpd: listen %s: %w", l.Address, err)
	}
	if l.ProxyProtocol {
		// Proxies must send the header; anyone else is never looked at for
		// one (SMTP servers speak first, so peeking would stall), and a
		// header they send is just a bad command.
		policy, err := proxyproto.PolicyFromRanges(s.cfg.ProxyNetworks, proxyproto.REQUIRE, proxyproto.SKIP)
		if err != nil {
			ln.Close()
			return nil, fmt.Errorf("smtpd: proxy networks: %w", err)
		}
		ln = &proxyproto.Listener{Listener: ln, ConnPolicy: policy, ReadHeaderTimeout: 10 * time.Second}
	}
	ep.ln = ln
	return ep, nil
}

// Addrs are the bound addresses, in the configured order (useful with
// port 0).
func (s *Server) Addrs() []net.Addr {
	s.mu.Lock()
	defer s.mu.Unlock()
	var a []net.Addr
	for _, ep := range s.eps {
		a = append(a, ep.ln.Addr())
	}
	return a
}

// SetListeners changes the listeners to ls without dropping a connection:
// new ones are bound (and served, once Serve runs), removed ones stop
// accepting and their open sessions may finish for up to grace. A listener
// is kept when its Listener is unchanged. On an error nothing is changed.
func (s *Server) SetListeners(ls []Listener, grace time.Duration) error {
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.shutting.Load() {
		return errors.New("smtpd: server shutting down")
	}
	have := map[Listener]*endpoint{}
	for _, ep := range s.eps {
		have[ep.l] = ep
	}
	byL := map[Listener]*endpoint{}
	var added []*endpoint
	for _, l := range ls {
		if byL[l] != nil {
			continue
		}
		if ep := have[l]; ep != nil {
			byL[l] = ep
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
		byL[l] = ep
	}
	for _, ep := range s.eps {
		if byL[ep.l] == nil {
			s.retire(ep, grace)
			s.cfg.Log.Info("listener removed", "address", ep.l.Address, "mode", ep.l.Mode)
		}
	}
	for _, ep := range added {
		if s.serving {
			s.start(ep)
		}
		s.cfg.Log.Info("listener added", "address", ep.ln.Addr().String(), "mode", ep.l.Mode)
	}
	s.eps = s.eps[:0]
	for _, l := range ls {
		s.eps = append(s.eps, byL[l])
	}
	return nil
}

// retire stops accepting on ep and lets the sessions that came through it
// go on, as long as their clients like, for up to grace; then it closes
// them. s.mu is held.
func (s *Server) retire(ep *endpoint, grace time.Duration) {
	ep.retired.Store(true)
	ep.ln.Close()
	go func() {
		ctx, cancel := context.WithTimeout(context.Background(), grace)
		defer cancel()
		// Once its accept loop has ended, no connection can be added.
		if wait(ctx, func() { ep.loop.Wait(); ep.conns.Wait() }) != nil {
			s.mu.Lock()
			for c := range s.conns {
				if c.ep == ep {
					c.Close()
				}
			}
			s.mu.Unlock()
		}
	}()
}

// start runs ep's accept loop; s.mu is held. A listener that fails on its
// own is reported to Serve.
func (s *Server) start(ep *endpoint) {
	if s.shutting.Load() || ep.retired.Load() {
		return
	}
	s.loops.Add(1)
	ep.loop.Add(1)
	go func() {
		defer s.loops.Done()
		defer ep.loop.Done()
		if err := s.accept(ep); err != nil {
			select {
			case s.failed <- fmt.Errorf("smtpd: listener %s: %w", ep.l.Address, err):
			default:
			}
		}
	}()
}

// accept accepts connections on ep until it is retired or the server shuts
// down (then it returns nil), or until the listener fails.
func (s *Server) accept(ep *endpoint) error {
	var delay time.Duration // after a temporary accept failure
	for {
		raw, err := ep.ln.Accept()
		if err != nil {
			if ep.retired.Load() || s.shutting.Load() {
				return nil
			}
			var ne net.Error
			if errors.As(err, &ne) && ne.Timeout() || errors.Is(err, syscall.EMFILE) || errors.Is(err, syscall.ENFILE) {
				delay = min(max(2*delay, 5*time.Millisecond), time.Second)
				s.cfg.Log.Warn("accept failed, retrying", "listener", ep.l.Address, "err", err, "in", delay)
				time.Sleep(delay)
				continue
			}
			return err
		}
		delay = 0
		if h := s.cfg.Hooks.Accepted; h != nil {
			h(ep.l.Address)
		}
		c := newConn(raw, s, ep)
		s.mu.Lock()
		s.conns[c] = struct{}{}
		if s.shutting.Load() {
			c.idle.Store(int64(drainIdle))
		}
		s.wg.Add(1)
		ep.conns.Add(1)
		s.mu.Unlock()
		go func() {
			defer s.wg.Done()
			defer ep.conns.Done()
			s.handle(c)
		}()
	}
}
