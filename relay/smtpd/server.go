// Package smtpd speaks the server side of SMTP for the relay.
//
// It is the server half of github.com/emersion/go-smtp v0.25.1 (MIT, see
// LICENSE), cut down to what a submission server offers and made strict
// where the library is lenient, because the library gives no hook for
// either:
//
//   - A command line must end in CRLF and hold no other CR or LF; a bare
//     one is answered and the connection closed (the library's textproto
//     reader takes a bare LF as a line end).
//   - In DATA, only CRLF "." CRLF ends the message, and a bare CR, a bare LF
//     or a NUL anywhere, including a "." followed by a lone CR at the start
//     of a line (which the library drops silently), fails the message and
//     closes the connection: the client and we no longer agree where the
//     message ends, so nothing after it can be trusted.
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
//
// Sessions are go-smtp's own smtp.Session and smtp.AuthSession, and replies
// are *smtp.SMTPError, so the relay's session code is the same with either.
package smtpd

import (
	"context"
	"crypto/tls"
	"errors"
	"log/slog"
	"net"
	"sync"
	"sync/atomic"
	"syscall"
	"time"

	"github.com/emersion/go-smtp"
)

// ErrServerClosed is returned by Shutdown and Close after the first call.
var ErrServerClosed = errors.New("smtpd: server already closed")

// Backend starts a session when a client greets (EHLO/HELO), and again
// after STARTTLS.
type Backend interface {
	NewSession(c *Conn) (smtp.Session, error)
}

// Config is the server's behaviour. Zero values take the defaults named.
type Config struct {
	Domain string      // in the banner and the EHLO reply
	TLS    *tls.Config // nil: no STARTTLS

	MaxRecipients   int   // advertised as LIMITS RCPTMAX; 0: no limit
	MaxMessageBytes int64 // advertised as SIZE; 0: no limit
	// MaxLineLength counts the CRLF; RFC 5321 allows 1000 for a text line
	// and 512 for a command. Default 2000, for sloppy clients.
	MaxLineLength int
	WriteTimeout  time.Duration // per reply; 0: none
	// MaxErrors unknown, malformed or out-of-sequence commands, or MAILs
	// refused permanently, are answered; the next one gets 421 and the
	// connection is closed. Default 3.
	MaxErrors int
	// MaxCommandsBeforeMail bounds the commands a client may send between
	// transactions (since connecting, or since its last MAIL). Default 25:
	// a session normally needs four (EHLO, STARTTLS, EHLO, AUTH).
	MaxCommandsBeforeMail int

	AllowInsecureAuth bool // offer AUTH without TLS
	EnableSMTPUTF8    bool // RFC 6531
	EnableDSN         bool // RFC 3461

	Log *slog.Logger // panics and connection errors
}

// Server serves SMTP on the listeners given to Serve.
type Server struct {
	cfg Config
	be  Backend

	wg       sync.WaitGroup
	done     chan struct{}
	shutting atomic.Bool // Shutdown was called: no new transactions

	mu        sync.Mutex
	listeners []net.Listener
	conns     map[*Conn]struct{}
}

// New makes a server answering with be's sessions.
func New(cfg Config, be Backend) *Server {
	if cfg.MaxLineLength <= 0 {
		cfg.MaxLineLength = 2000
	}
	if cfg.MaxErrors <= 0 {
		cfg.MaxErrors = 3
	}
	if cfg.MaxCommandsBeforeMail <= 0 {
		cfg.MaxCommandsBeforeMail = 25
	}
	if cfg.Log == nil {
		cfg.Log = slog.New(slog.DiscardHandler)
	}
	return &Server{cfg: cfg, be: be, done: make(chan struct{}), conns: map[*Conn]struct{}{}}
}

// Serve accepts connections on l until Close or Shutdown.
func (s *Server) Serve(l net.Listener) error {
	s.mu.Lock()
	s.listeners = append(s.listeners, l)
	s.mu.Unlock()

	var delay time.Duration // after a temporary accept failure
	for {
		c, err := l.Accept()
		if err != nil {
			select {
			case <-s.done:
				return nil
			default:
			}
			var ne net.Error
			if errors.As(err, &ne) && ne.Timeout() || errors.Is(err, syscall.EMFILE) || errors.Is(err, syscall.ENFILE) {
				delay = min(max(2*delay, 5*time.Millisecond), time.Second)
				s.cfg.Log.Warn("accept failed, retrying", "err", err, "in", delay)
				time.Sleep(delay)
				continue
			}
			return err
		}
		delay = 0
		s.wg.Add(1)
		go func() {
			defer s.wg.Done()
			s.handle(newConn(c, s))
		}()
	}
}

func (s *Server) handle(c *Conn) {
	s.mu.Lock()
	s.conns[c] = struct{}{}
	s.mu.Unlock()
	defer func() {
		c.Close()
		s.mu.Lock()
		delete(s.conns, c)
		s.mu.Unlock()
	}()
	if err := c.serve(); err != nil {
		s.cfg.Log.Info("connection ended", "remote", c.conn.RemoteAddr().String(), "err", err)
	}
}

// Close closes the listeners and every connection at once, also after
// Shutdown or StopAccepting.
func (s *Server) Close() error {
	err := s.closeListeners()
	if err == ErrServerClosed {
		err = nil
	}
	s.mu.Lock()
	for c := range s.conns {
		c.Close()
	}
	s.mu.Unlock()
	return err
}

// Shutdown closes the listeners and waits, until ctx is done, for the open
// sessions to end. A session waiting for a command outside a transaction is
// told 421 4.3.2 at once; one in a transaction finishes it first.
func (s *Server) Shutdown(ctx context.Context) error {
	s.shutting.Store(true)
	err := s.closeListeners()
	if err == ErrServerClosed {
		return err
	}
	s.mu.Lock()
	for c := range s.conns {
		if c.waiting.Load() {
			// Wakes its read; the loop sees shutting and says goodbye.
			c.raw.SetReadDeadline(time.Now())
		}
	}
	s.mu.Unlock()
	return s.wait(ctx, err)
}

// StopAccepting closes the listeners but lets the open sessions go on, as
// long as their clients like, until ctx is done; then it closes them. It is
// for a listener that a reload removes while the server keeps running.
func (s *Server) StopAccepting(ctx context.Context) error {
	err := s.closeListeners()
	if err == ErrServerClosed {
		return err
	}
	if werr := s.wait(ctx, err); werr != nil {
		s.Close()
		return werr
	}
	return err
}

// wait waits for every session to end, or for ctx.
func (s *Server) wait(ctx context.Context, err error) error {
	idle := make(chan struct{})
	go func() {
		s.wg.Wait()
		close(idle)
	}()
	select {
	case <-ctx.Done():
		return ctx.Err()
	case <-idle:
		return err
	}
}

func (s *Server) closeListeners() error {
	s.mu.Lock()
	defer s.mu.Unlock()
	select {
	case <-s.done:
		return ErrServerClosed
	default:
		close(s.done)
	}
	var err error
	for _, l := range s.listeners {
		if e := l.Close(); e != nil && err == nil {
			err = e
		}
	}
	return err
}
