// Package smtpclient speaks SMTP to one server over one connection, as a
// relay forwarding mail needs it: STARTTLS, AUTH through go-sasl, and
// transactions pipelined when the server offers it (RFC 2920), with BDAT
// (RFC 3030) when it offers CHUNKING too. Every read and write follows a
// context.Context as well as the command timeout.
//
// It replies with *Error for what the server refused, keeping the code,
// the enhanced code and the text apart; what those mean for a message is
// the caller's to decide.
package smtpclient

import (
	"bufio"
	"context"
	"crypto/tls"
	"errors"
	"fmt"
	"net"
	"slices"
	"strings"
	"time"
)

// Config says how a session introduces itself and how long it waits.
type Config struct {
	// Hostname is our EHLO name.
	Hostname string
	// Timeout bounds each reply; the reply to the end of a message gets
	// twice as long (RFC 5321 4.5.3.2: 5 and 10 minutes).
	Timeout time.Duration
	// Discard lists extensions to treat as not offered, whatever the
	// server says (as Postfix's smtp_discard_ehlo_keywords), such as
	// "PIPELINING" or "CHUNKING" for a server whose support is broken.
	Discard []string
}

// Conn is one SMTP session. Its methods are not safe for concurrent use;
// after any of them returns an error that is not an *Error (or a 421),
// the session is done and only Close remains.
type Conn struct {
	cfg  Config
	raw  net.Conn // the TCP connection, whose deadlines bound every exchange
	conn net.Conn // raw, or TLS over it
	r    *bufio.Reader
	w    *bufio.Writer
	ext  map[string]string // extensions of the last EHLO, upper-case keyword → parameters
	buf  []byte            // carries a message into the dot-stuffing writer
	ctx  context.Context   // of the exchange under way
	// taken is the reply to the end of the last message the server took.
	taken string
}

// aLongTimeAgo is a deadline that ends any read or write at once.
var aLongTimeAgo = time.Unix(1, 0)

var bufioFull = bufio.ErrBufferFull

// New starts a session on conn (a TCP connection, or TLS for an upstream
// that speaks TLS from the first byte): it reads the greeting and says
// EHLO (HELO to a server that knows no EHLO). On an error, conn is closed.
func New(ctx context.Context, conn net.Conn, cfg Config) (*Conn, error) {
	if cfg.Timeout <= 0 {
		cfg.Timeout = 5 * time.Minute
	}
	c := &Conn{cfg: cfg, raw: conn}
	c.setConn(conn)
	err := c.exchange(ctx, func() error {
		r, err := c.readReply()
		if err != nil {
			return err
		}
		if err := r.expect(2); err != nil {
			return err
		}
		return c.hello()
	})
	if err != nil {
		conn.Close()
		return nil, err
	}
	return c, nil
}

func (c *Conn) setConn(conn net.Conn) {
	c.conn = conn
	c.r = bufio.NewReaderSize(conn, 4096)
	c.w = bufio.NewWriterSize(timedWriter{c}, 32<<10)
}

// exchange runs fn, one exchange with the server, within ctx: ctx ending
// moves the connection's deadline to the past, which ends the read or
// write under way. An error then says the context's cause.
func (c *Conn) exchange(ctx context.Context, fn func() error) error {
	if ctx.Err() != nil {
		return context.Cause(ctx)
	}
	c.ctx = ctx
	defer func() { c.ctx = nil }()
	stop := context.AfterFunc(ctx, func() { c.raw.SetDeadline(aLongTimeAgo) })
	err := fn()
	if !stop() && err != nil {
		err = fmt.Errorf("%w (%w)", context.Cause(ctx), err)
	}
	return err
}

// arm gives the next read or write d, and no more than the exchange's
// context allows. Once that context has ended, the deadline stays in the
// past: the check after setting it catches the context ending meanwhile.
func (c *Conn) arm(d time.Duration) {
	t := time.Now().Add(d)
	if dl, ok := c.ctx.Deadline(); ok && dl.Before(t) {
		t = dl
	}
	c.raw.SetDeadline(t)
	if c.ctx.Err() != nil {
		c.raw.SetDeadline(aLongTimeAgo)
	}
}

// timedWriter gives every write to the connection a timeout of its own: a
// large message takes as long as it takes while it moves.
type timedWriter struct{ c *Conn }

func (w timedWriter) Write(p []byte) (int, error) {
	w.c.arm(w.c.cfg.Timeout)
	return w.c.conn.Write(p)
}

// cmd sends one command and reads its reply.
func (c *Conn) cmd(format string, args ...any) (reply, error) {
	fmt.Fprintf(c.w, format+"\r\n", args...)
	if err := c.w.Flush(); err != nil {
		return reply{}, err
	}
	return c.readReply()
}

// hello says EHLO, and HELO if the server does not know it.
func (c *Conn) hello() error {
	r, err := c.cmd("EHLO %s", c.cfg.Hostname)
	if err != nil {
		return err
	}
	if r.code == 500 || r.code == 502 {
		c.ext = map[string]string{}
		if r, err = c.cmd("HELO %s", c.cfg.Hostname); err != nil {
			return err
		}
		return r.expect(2)
	}
	if err := r.expect(2); err != nil {
		return err
	}
	c.ext = map[string]string{}
	for _, l := range r.lines[1:] {
		kw, params, _ := strings.Cut(l, " ")
		kw = strings.ToUpper(kw)
		if !slices.ContainsFunc(c.cfg.Discard, func(d string) bool { return strings.EqualFold(d, kw) }) {
			c.ext[kw] = params
		}
	}
	return nil
}

// Extension reports whether the server offers an extension (its EHLO
// keyword, in any case), and the extension's parameters.
func (c *Conn) Extension(name string) (bool, string) {
	params, ok := c.ext[strings.ToUpper(name)]
	return ok, params
}

// ErrNoStartTLS says the server does not offer STARTTLS.
var ErrNoStartTLS = errors.New("smtpclient: the server does not offer STARTTLS")

// StartTLS upgrades the session (RFC 3207): STARTTLS, the handshake,
// and EHLO again, as the server forgets what it said before.
func (c *Conn) StartTLS(ctx context.Context, cfg *tls.Config) error {
	if ok, _ := c.Extension("STARTTLS"); !ok {
		return ErrNoStartTLS
	}
	return c.exchange(ctx, func() error {
		r, err := c.cmd("STARTTLS")
		if err != nil {
			return err
		}
		if err := r.expect(2); err != nil {
			return err
		}
		// Anything sent after the reply and before the handshake would be
		// taken as if it came over TLS (CVE-2011-0411): refuse it.
		if c.r.Buffered() > 0 {
			return errors.New("smtpclient: the server sent data before the TLS handshake")
		}
		tc := tls.Client(c.conn, cfg)
		c.arm(c.cfg.Timeout)
		if err := tc.HandshakeContext(ctx); err != nil {
			return err
		}
		c.setConn(tc)
		return c.hello()
	})
}

// TLS reports the session's TLS state, if it has one.
func (c *Conn) TLS() (tls.ConnectionState, bool) {
	if tc, ok := c.conn.(*tls.Conn); ok {
		return tc.ConnectionState(), true
	}
	return tls.ConnectionState{}, false
}

// RemoteAddr is the address of the server.
func (c *Conn) RemoteAddr() net.Addr { return c.raw.RemoteAddr() }

// Taken is the server's reply to the end of the message of the last Send,
// as it was sent ("250 2.0.0 Ok: queued as 4ZxYw1", lines joined by "\n"),
// when it took it; "" when it did not. It carries the server's own queue
// ID, which its administrators ask for.
func (c *Conn) Taken() string { return c.taken }

// simple sends a command that expects a 2xx reply.
func (c *Conn) simple(ctx context.Context, command string) error {
	return c.exchange(ctx, func() error {
		r, err := c.cmd("%s", command)
		if err != nil {
			return err
		}
		return r.expect(2)
	})
}

// Noop checks that the server still answers.
func (c *Conn) Noop(ctx context.Context) error { return c.simple(ctx, "NOOP") }

// Reset ends a transaction under way (RSET).
func (c *Conn) Reset(ctx context.Context) error { return c.simple(ctx, "RSET") }

// Quit says QUIT and closes the connection, whatever the server answers.
func (c *Conn) Quit(ctx context.Context) error {
	err := c.simple(ctx, "QUIT")
	c.conn.Close()
	return err
}

// Close closes the connection without a word.
func (c *Conn) Close() error { return c.conn.Close() }
