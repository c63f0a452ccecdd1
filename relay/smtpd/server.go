// Package smtpd is the relay's SMTP server: it owns the connections (the
// caps per address and in all, idle timeouts, TLS, draining at shutdown)
// and the protocol, and asks a Session what each command means, as
// net/http's server owns connections and a Handler the meaning.
//
// It began as the server half of github.com/emersion/go-smtp v0.25.1 (MIT,
// see LICENSE) and keeps that code's shape, but imports nothing from it.
// What it does differently, because the library gives no hook for it:
//
//   - A command line must end in CRLF and hold no other CR or LF; a bare
//     one is answered and the connection closed (the library's textproto
//     reader takes a bare LF as a line end).
//   - In DATA, only CRLF "." CRLF ends the message. A bare CR or a NUL
//     anywhere fails the message and closes the connection: the client and
//     we no longer agree where the message ends. A bare LF is made a CRLF
//     (Config.NormalizeBareLF, as Postfix 3.9's smtpd_forbid_bare_newline
//     = normalize does) or refused likewise; "." after a bare LF is a line
//     of the message, never its end.
//   - Unknown or malformed commands are counted: after MaxErrors the client
//     gets 421 and is let go. So are commands outside a transaction (NOOP,
//     RSET, VRFY, HELP, EHLO, AUTH, STARTTLS ...): more than
//     MaxCommandsBeforeMail before a MAIL also ends the session with 421.
//   - No BDAT/CHUNKING, LMTP, BINARYMIME, REQUIRETLS, RRVS, DELIVERBY or
//     MT-PRIORITY: less to attack, nothing a submission client needs.
//   - Replies to a pipelined group (RFC 2920) leave together, in one write,
//     once no further whole command is waiting; 334, 354, 220 (before TLS),
//     221 and 421 always leave at once, and nothing held is lost when the
//     session ends. The library writes every reply on its own.
//   - Every reply is a row of one table (replies.go), with enhanced codes
//     and plain texts; the EHLO reply names our host (RFC 5321 4.1.1.1).
//   - The server keeps the connection registry: caps per client address
//     and in all, an idle timeout per read (a long DATA upload is fine, a
//     silent client is not), listeners retired one at a time, and a drain
//     that lets idle sessions go at once and busy ones finish.
package smtpd

import (
	"context"
	"crypto/tls"
	"errors"
	"io"
	"log/slog"
	"net"
	"net/netip"
	"sync"
	"sync/atomic"
	"syscall"
	"time"
)

// maxLineDefault is the default Config.MaxLineLength.
const maxLineDefault = 2000

// ErrServerClosed is returned by Shutdown after the first call.
var ErrServerClosed = errors.New("smtpd: server already closed")

// Config is the server's behaviour. Zero values take the defaults named.
type Config struct {
	Domain string // our host name: in the greeting and the EHLO reply

	Limits Limits // SetLimits changes them while serving
	// MaxLineLength counts the CRLF; RFC 5321 allows 1000 for a text line
	// and 512 for a command. Default 2000, for sloppy clients.
	MaxLineLength int
	IdleTimeout   time.Duration // per read; default 5m (RFC 5321 4.5.3.2)
	WriteTimeout  time.Duration // per reply, and for a TLS handshake; default 1m
	// MaxErrors unknown, malformed or out-of-sequence commands, or MAILs
	// refused permanently, are answered; the next one gets 421 and the
	// connection is closed. Default 3.
	MaxErrors int
	// MaxCommandsBeforeMail bounds the commands a client may send between
	// transactions (since connecting, or since its last MAIL). Default 25:
	// a session normally needs four (EHLO, STARTTLS, EHLO, AUTH).
	MaxCommandsBeforeMail int
	MaxConnections        int // in all; default 1000
	ConnectionsPerIP      int // 0: no limit

	// ReplyFor maps an error a Session returned for cmd to its reply.
	// Default: a *Reply as it is, anything else ReplyInternal.
	ReplyFor func(cmd string, err error) *Reply
	// Refused, when set, is told of every reply marked Refusal, with the
	// error behind it (nil for the server's own), to log and count it.
	Refused func(c *Conn, cmd string, r *Reply, cause error)
	// ConnState, when set, is told when a connection is admitted
	// (open) and when it closes, with its listener's name.
	ConnState func(listener string, open bool)

	Log *slog.Logger // admission, panics and connection errors
}

// Limits are what a message may be; they can change while serving.
type Limits struct {
	MaxRecipients   int   // advertised as LIMITS RCPTMAX; 0: no limit
	MaxMessageBytes int64 // advertised as SIZE; 0: no limit
	// NormalizeBareLF turns a bare LF in message content into CRLF;
	// without it a bare LF is refused like a bare CR.
	NormalizeBareLF bool
}

// Listener says how one listening socket is served.
type Listener struct {
	Name     string      // in logs and ConnState: the configured address
	TLS      *tls.Config // STARTTLS is offered with it; nil: none
	Implicit bool        // TLS from the first byte (TLS must be set)
}

// Server serves SMTP on the listeners given to Serve.
type Server struct {
	cfg Config
	be  Backend

	wg       sync.WaitGroup
	shutting atomic.Bool // Shutdown was called: no new transactions
	limits   atomic.Pointer[Limits]

	mu     sync.Mutex
	lns    map[net.Listener]*listening
	conns  map[*Conn]struct{}
	perIP  map[netip.Addr]int
	total  int
	closed bool
}

type listening struct {
	l       Listener
	retired atomic.Bool
	wg      sync.WaitGroup // its connections
}

// New makes a server answering with be's sessions.
func New(cfg Config, be Backend) *Server {
	if cfg.MaxLineLength <= 0 {
		cfg.MaxLineLength = maxLineDefault
	}
	if cfg.MaxErrors <= 0 {
		cfg.MaxErrors = 3
	}
	if cfg.MaxCommandsBeforeMail <= 0 {
		cfg.MaxCommandsBeforeMail = 25
	}
	if cfg.IdleTimeout <= 0 {
		cfg.IdleTimeout = 5 * time.Minute
	}
	if cfg.WriteTimeout <= 0 {
		cfg.WriteTimeout = time.Minute
	}
	if cfg.MaxConnections <= 0 {
		cfg.MaxConnections = 1000
	}
	if cfg.ReplyFor == nil {
		cfg.ReplyFor = DefaultReplyFor
	}
	if cfg.Log == nil {
		cfg.Log = slog.New(slog.DiscardHandler)
	}
	s := &Server{cfg: cfg, be: be, lns: map[net.Listener]*listening{},
		conns: map[*Conn]struct{}{}, perIP: map[netip.Addr]int{}}
	s.SetLimits(cfg.Limits)
	return s
}

// SetLimits changes the limits for the commands that follow.
func (s *Server) SetLimits(l Limits) { s.limits.Store(&l) }

// Serve accepts connections on ln until it is retired or the server shut
// down (then it returns nil), or until ln fails.
func (s *Server) Serve(ln net.Listener, l Listener) error {
	if l.Implicit && l.TLS == nil {
		return errors.New("smtpd: an implicit TLS listener needs a TLS config")
	}
	lg := &listening{l: l}
	s.mu.Lock()
	if s.closed {
		s.mu.Unlock()
		ln.Close()
		return nil
	}
	s.lns[ln] = lg
	s.mu.Unlock()

	var delay time.Duration // after a temporary accept failure
	for {
		raw, err := ln.Accept()
		if err != nil {
			if lg.retired.Load() || s.shutting.Load() || s.isClosed() {
				return nil
			}
			var ne net.Error
			if errors.As(err, &ne) && ne.Timeout() || errors.Is(err, syscall.EMFILE) || errors.Is(err, syscall.ENFILE) {
				delay = min(max(2*delay, 5*time.Millisecond), time.Second)
				s.cfg.Log.Warn("accept failed, retrying", "listener", l.Name, "err", err, "in", delay)
				time.Sleep(delay)
				continue
			}
			return err
		}
		delay = 0
		c := newConn(raw, s, lg)
		s.mu.Lock()
		s.conns[c] = struct{}{}
		if s.shutting.Load() {
			c.idle.Store(int64(drainIdle))
		}
		s.mu.Unlock()
		s.wg.Add(1)
		lg.wg.Add(1)
		go func() {
			defer s.wg.Done()
			defer lg.wg.Done()
			s.handle(c)
		}()
	}
}

func (s *Server) isClosed() bool {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.closed
}

// refusalHandshake bounds the TLS handshake of a connection refused on an
// implicit-TLS listener.
const refusalHandshake = 5 * time.Second

func (s *Server) handle(c *Conn) {
	defer func() {
		c.Close()
		s.mu.Lock()
		delete(s.conns, c)
		s.mu.Unlock()
	}()
	// The client's address may come from a PROXY header, which this reads:
	// here in the connection's goroutine, so that it never holds up Accept.
	c.addr = remoteAddr(c.raw)
	if r := s.admit(c.addr); r != nil {
		s.cfg.Log.Warn("connection refused: too many connections", "remote", c.addr.String(), "listener", c.ln.l.Name)
		var w io.Writer = c.raw
		if c.ln.l.Implicit {
			// Nothing but TLS on an implicit-TLS port (RFC 8314): the
			// refusal goes inside a handshake, or a client reads it as a
			// broken TLS record and does not know to come back later.
			c.raw.SetDeadline(time.Now().Add(refusalHandshake))
			tc := tls.Server(c.conn, c.ln.l.TLS)
			if tc.Handshake() != nil {
				return
			}
			w = tc
		}
		c.raw.SetWriteDeadline(time.Now().Add(time.Second))
		w.Write([]byte(formatReply(r)))
		if s.cfg.Refused != nil {
			s.cfg.Refused(c, "CONNECT", r, nil)
		}
		return
	}
	if s.cfg.ConnState != nil {
		s.cfg.ConnState(c.ln.l.Name, true)
	}
	defer func() {
		s.release(c.addr)
		if s.cfg.ConnState != nil {
			s.cfg.ConnState(c.ln.l.Name, false)
		}
	}()
	if err := c.serve(); err != nil {
		s.cfg.Log.Info("connection ended", "remote", c.addr.String(), "err", err)
	}
}

// admit counts a connection against its address and the total, or says
// which reply refuses it.
func (s *Server) admit(ip netip.Addr) *Reply {
	s.mu.Lock()
	defer s.mu.Unlock()
	switch {
	case s.cfg.ConnectionsPerIP > 0 && s.perIP[ip] >= s.cfg.ConnectionsPerIP:
		return ReplyTooManyConnsIP
	case s.total >= s.cfg.MaxConnections:
		return ReplyTooManyConns
	}
	s.perIP[ip]++
	s.total++
	return nil
}

func (s *Server) release(ip netip.Addr) {
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.perIP[ip]--; s.perIP[ip] <= 0 {
		delete(s.perIP, ip)
	}
	s.total--
}

// drainIdle is the silence allowed once the server is shutting down: a
// client in the middle of sending keeps going, an idle one is told
// ReplyShuttingDown and let go.
const drainIdle = 2 * time.Second

// Shutdown closes the listeners and waits, until ctx is done, for the open
// sessions to end; then it closes what is left. A session waiting for a
// command outside a transaction is told ReplyShuttingDown at once; one in a
// transaction finishes it first, and then hears the same.
func (s *Server) Shutdown(ctx context.Context) error {
	if s.shutting.Swap(true) {
		return ErrServerClosed
	}
	s.mu.Lock()
	for ln := range s.lns {
		ln.Close()
	}
	for c := range s.conns {
		c.drain()
	}
	s.mu.Unlock()
	if err := s.wait(ctx, s.wg.Wait); err != nil {
		s.Close()
		return err
	}
	return nil
}

// Retire stops accepting on ln, which Serve was given, and lets the
// sessions that came through it go on, as long as their clients like,
// for up to grace; then it closes them. It is for a listener that a
// reload removes while the server keeps running.
func (s *Server) Retire(ln net.Listener, grace time.Duration) {
	s.mu.Lock()
	lg := s.lns[ln]
	delete(s.lns, ln)
	s.mu.Unlock()
	if lg == nil {
		return
	}
	lg.retired.Store(true)
	ln.Close()
	go func() {
		ctx, cancel := context.WithTimeout(context.Background(), grace)
		defer cancel()
		if s.wait(ctx, lg.wg.Wait) != nil {
			s.mu.Lock()
			for c := range s.conns {
				if c.ln == lg {
					c.Close()
				}
			}
			s.mu.Unlock()
		}
	}()
}

// Close closes the listeners and every connection at once.
func (s *Server) Close() error {
	s.shutting.Store(true)
	s.mu.Lock()
	defer s.mu.Unlock()
	s.closed = true
	var err error
	for ln := range s.lns {
		if e := ln.Close(); e != nil && err == nil && !errors.Is(e, net.ErrClosed) {
			err = e
		}
	}
	for c := range s.conns {
		c.Close()
	}
	return err
}

// wait runs done, which returns when the awaited thing happened, and
// returns nil then, or ctx's error first.
func (s *Server) wait(ctx context.Context, done func()) error {
	ch := make(chan struct{})
	go func() {
		done()
		close(ch)
	}()
	select {
	case <-ctx.Done():
		return ctx.Err()
	case <-ch:
		return nil
	}
}

// ConnCount is the number of connections open now.
func (s *Server) ConnCount() int {
	s.mu.Lock()
	defer s.mu.Unlock()
	return len(s.conns)
}
