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
//     (Limits.NormalizeBareLF, as Postfix 3.9's smtpd_forbid_bare_newline
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
//   - The server owns the listeners' whole life, as net/http's Server
//     does: it binds them, reads PROXY headers (v1 and v2) from trusted
//     networks only, counts and caps connections per client address and
//     in all, does implicit TLS, retires a listener a reload removes while
//     its sessions finish, and drains at shutdown (idle sessions go at
//     once, busy ones finish). Every read has an idle timeout (a long DATA
//     upload is fine, a silent client is not).
package smtpd

import (
	"context"
	"crypto/tls"
	"errors"
	"log/slog"
	"net"
	"net/netip"
	"sync"
	"sync/atomic"
	"time"
)

// maxLineDefault is the default Config.MaxLineLength.
const maxLineDefault = 2000

// Config is the server's behaviour. Zero values take the defaults named.
type Config struct {
	Domain    string      // our host name: in the greeting and the EHLO reply
	Listeners []Listener  // bound by Listen; SetListeners changes them
	TLS       *tls.Config // for STARTTLS and implicit TLS; required unless every listener is plain
	// ProxyNetworks may send PROXY headers on listeners with
	// ProxyProtocol (CIDR prefixes or addresses).
	ProxyNetworks []string

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

	Hooks Hooks
	Log   *slog.Logger // listeners, admission, panics and connection errors
}

// Limits are what a message may be; they can change while serving.
type Limits struct {
	MaxRecipients   int   // advertised as LIMITS RCPTMAX; 0: no limit
	MaxMessageBytes int64 // advertised as SIZE; 0: no limit
	// NormalizeBareLF turns a bare LF in message content into CRLF;
	// without it a bare LF is refused like a bare CR.
	NormalizeBareLF bool
	// WrapLongLines breaks a message line longer than 998 bytes with
	// CRLF and a space, as Postfix's SMTP client does; without it a line
	// over MaxLineLength is refused and the connection closed.
	WrapLongLines bool
}

// Hooks join the server to the code that gives the protocol its meaning:
// how that code's errors read, and what the server did, to log and count.
// Any may be nil. They run on a connection's goroutine; they must not block.
type Hooks struct {
	// ReplyFor maps an error a Session returned for cmd to its reply.
	// Default: DefaultReplyFor.
	ReplyFor func(cmd string, err error) *Reply
	// Refused is told of every reply marked Refusal, with the error behind
	// it (nil for the server's own).
	Refused func(c *Conn, cmd string, r *Reply, cause error)
	// Accepted is told of every connection a listener accepts, before the
	// caps, with the listener's configured address.
	Accepted func(listener string)
	// ConnState is told when a connection is admitted (open) and when it
	// closes.
	ConnState func(listener string, open bool)
	// TLSHandshake is told when a TLS handshake begins (done false) and
	// when it completes (done true); the difference failed.
	TLSHandshake func(done bool)
}

// Server serves SMTP on its listeners.
type Server struct {
	cfg    Config
	be     Backend
	limits atomic.Pointer[Limits]

	shutting atomic.Bool    // Shutdown or Close was called: no new transactions
	done     chan struct{}  // closed when shutting is set: Serve returns
	failed   chan error     // a listener that stopped by itself
	loops    sync.WaitGroup // accept loops: once they end, wg gains no more
	wg       sync.WaitGroup // connections

	mu      sync.Mutex
	eps     []*endpoint // in the configured order
	serving bool
	conns   map[*Conn]struct{}
	perIP   map[netip.Addr]int
	total   int
}

// New makes a server answering with be's sessions. Listen binds its
// listeners, Serve serves them.
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
	if cfg.Hooks.ReplyFor == nil {
		cfg.Hooks.ReplyFor = DefaultReplyFor
	}
	if cfg.Log == nil {
		cfg.Log = slog.New(slog.DiscardHandler)
	}
	cfg.TLS = tlsCounted(cfg.TLS, cfg.Hooks.TLSHandshake)
	s := &Server{cfg: cfg, be: be, done: make(chan struct{}), failed: make(chan error, 1),
		conns: map[*Conn]struct{}{}, perIP: map[netip.Addr]int{}}
	s.SetLimits(cfg.Limits)
	return s
}

// tlsCounted is c with the handshakes told to hook.
func tlsCounted(c *tls.Config, hook func(done bool)) *tls.Config {
	if c == nil || hook == nil {
		return c
	}
	c = c.Clone()
	getConfig, verify := c.GetConfigForClient, c.VerifyConnection
	c.GetConfigForClient = func(hello *tls.ClientHelloInfo) (*tls.Config, error) {
		hook(false)
		if getConfig != nil {
			return getConfig(hello)
		}
		return nil, nil
	}
	c.VerifyConnection = func(cs tls.ConnectionState) error {
		if verify != nil {
			if err := verify(cs); err != nil {
				return err
			}
		}
		hook(true)
		return nil
	}
	return c
}

// SetLimits changes the limits for the commands that follow.
func (s *Server) SetLimits(l Limits) { s.limits.Store(&l) }

// Serve serves the listeners bound by Listen (and those SetListeners adds)
// until Shutdown or Close (then it returns nil), or until one fails: then
// it closes the listeners and returns that error; Shutdown lets the open
// sessions finish.
func (s *Server) Serve() error {
	s.mu.Lock()
	s.serving = true
	for _, ep := range s.eps {
		s.start(ep)
	}
	s.mu.Unlock()
	select {
	case err := <-s.failed:
		s.mu.Lock()
		for _, ep := range s.eps {
			ep.ln.Close()
		}
		s.mu.Unlock()
		return err
	case <-s.done:
		return nil
	}
}

// stop marks the server as shutting down; s.mu is held.
func (s *Server) stop() {
	if !s.shutting.Swap(true) {
		close(s.done)
	}
}

// drainIdle is the silence allowed once the server is shutting down: a
// client in the middle of sending keeps going, an idle one is told
// ReplyShuttingDown and let go.
const drainIdle = 2 * time.Second

// Shutdown closes the listeners and waits, until ctx is done, for the open
// sessions to end; then it closes what is left. A session waiting for a
// command outside a transaction is told ReplyShuttingDown at once; one in a
// transaction finishes it first, and then hears the same. Nothing
// unacknowledged is lost: a client cut off mid-DATA tries again.
func (s *Server) Shutdown(ctx context.Context) error {
	s.mu.Lock()
	s.stop()
	for _, ep := range s.eps {
		ep.ln.Close()
	}
	for c := range s.conns {
		c.drain()
	}
	s.mu.Unlock()
	// Once the accept loops have ended no connection can be added.
	err := wait(ctx, func() {
		s.loops.Wait()
		s.wg.Wait()
	})
	if err != nil {
		s.Close()
	}
	return err
}

// Close closes the listeners and every connection at once.
func (s *Server) Close() error {
	s.mu.Lock()
	defer s.mu.Unlock()
	s.stop()
	var err error
	for _, ep := range s.eps {
		if e := ep.ln.Close(); e != nil && err == nil && !errors.Is(e, net.ErrClosed) {
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
func wait(ctx context.Context, done func()) error {
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
