package upstream

import (
	"bufio"
	"context"
	"crypto/tls"
	"errors"
	"fmt"
	"io"
	"net"
	"net/textproto"
	"strings"
	"time"

	"github.com/emersion/go-smtp"
)

// dialer opens authenticated sessions to one upstream: smtp:// with
// STARTTLS as the upstream's tls setting says, or smtps:// with TLS from
// the first byte.
type dialer struct {
	u        Upstream
	addr     string
	implicit bool
	tls      *tls.Config
	hostname string
}

// session is one connection to an upstream: go-smtp's client, and the
// connection it writes to, which DATA writes to directly (dotStuffer).
type session struct {
	*smtp.Client
	conn net.Conn
}

func (t *dialer) dial(ctx context.Context) (*session, error) {
	c, err := t.connect(ctx, t.u.TLS != "none")
	if err != nil && t.u.TLS == "opportunistic" && errors.Is(err, errStartTLS) {
		c, err = t.connect(ctx, false)
	}
	if err != nil {
		if ctx.Err() != nil {
			err = fmt.Errorf("%w (%w)", context.Cause(ctx), err)
		}
		return nil, err
	}
	stop := context.AfterFunc(ctx, func() { c.conn.SetDeadline(time.Now()) })
	err = login(ctx, c.Client, t.u)
	if !stop() {
		c.Close()
		return nil, fmt.Errorf("%w (%v)", context.Cause(ctx), err)
	}
	if err != nil {
		c.Close()
		// A refused login is our configuration, not the message's
		// fault: Send retries and fails over rather than bounce.
		return nil, fmt.Errorf("AUTH: %w", err)
	}
	return c, nil
}

var errStartTLS = errors.New("STARTTLS failed")

// defaultConnectTimeout is Postfix's smtp_connect_timeout.
const defaultConnectTimeout = 30 * time.Second

// connect opens a session up to and including EHLO (after TLS, if any).
func (t *dialer) connect(ctx context.Context, startTLS bool) (*session, error) {
	d := net.Dialer{Timeout: t.u.ConnectTimeout}
	raw, err := d.DialContext(ctx, "tcp", t.addr)
	if err != nil {
		return nil, err
	}
	var conn net.Conn = newBatched(raw)
	// Until EHLO is answered, ctx ending (the node leaving) ends the
	// wait; TLS handshakes follow ctx themselves.
	stop := context.AfterFunc(ctx, func() { raw.SetDeadline(time.Now()) })
	defer stop()
	conn.SetDeadline(time.Now().Add(t.u.Timeout))
	var under net.Conn
	switch {
	case t.implicit:
		tc := tls.Client(conn, t.tls)
		if err := tc.HandshakeContext(ctx); err != nil {
			conn.Close()
			return nil, fmt.Errorf("TLS: %w", err)
		}
		under = tc
	case startTLS:
		tc, err := t.startTLS(ctx, conn)
		if err != nil {
			conn.Close()
			return nil, fmt.Errorf("%w: %w", errStartTLS, err)
		}
		under = greeted{Conn: tc, r: io.MultiReader(strings.NewReader("220 TLS established\r\n"), tc)}
	default:
		under = conn
	}
	c := smtp.NewClient(under)
	conn.SetDeadline(time.Time{})
	// RFC 5321 4.5.3.2: 5 minutes for commands, 10 for the reply to the
	// final dot (the upstream may be delivering in the meantime).
	c.CommandTimeout = t.u.Timeout
	c.SubmissionTimeout = 2 * t.u.Timeout
	if err := c.Hello(t.hostname); err != nil {
		c.Close()
		if startTLS {
			err = fmt.Errorf("%w: %w", errStartTLS, err)
		}
		return nil, err
	}
	return &session{Client: c, conn: under}, nil
}

// startTLS does the plain-text part of a STARTTLS session itself (go-smtp's
// client would say EHLO localhost there): greeting, EHLO with our name,
// STARTTLS, handshake.
func (t *dialer) startTLS(ctx context.Context, conn net.Conn) (*tls.Conn, error) {
	tp := textproto.NewConn(conn)
	if _, _, err := tp.ReadResponse(220); err != nil {
		return nil, err
	}
	if err := tp.PrintfLine("EHLO %s", t.hostname); err != nil {
		return nil, err
	}
	_, ext, err := tp.ReadResponse(250)
	if err != nil {
		return nil, err
	}
	offered := false
	for _, line := range strings.Split(ext, "\n") {
		offered = offered || strings.EqualFold(strings.TrimSpace(line), "STARTTLS")
	}
	if !offered {
		return nil, errors.New("upstream does not offer STARTTLS")
	}
	if err := tp.PrintfLine("STARTTLS"); err != nil {
		return nil, err
	}
	if _, _, err := tp.ReadResponse(220); err != nil {
		return nil, err
	}
	tc := tls.Client(conn, t.tls)
	if err := tc.HandshakeContext(ctx); err != nil {
		return nil, fmt.Errorf("TLS: %w", err)
	}
	return tc, nil
}

// batched holds what is written to the upstream until the next read.
// go-smtp's client flushes after every command and every 4 KiB of DATA,
// but the upstream only has to see it all by the time we wait for its reply:
// one write per reply instead of one per chunk (a 10 KB message goes out,
// final dot included, in one write instead of four), under TLS too, as it
// sits below it. Every command is followed by a read of its reply, so
// nothing waits in the buffer while we wait for the upstream.
type batched struct {
	net.Conn
	w *bufio.Writer
}

func newBatched(c net.Conn) *batched { return &batched{Conn: c, w: bufio.NewWriterSize(c, 16<<10)} }

func (b *batched) Write(p []byte) (int, error) { return b.w.Write(p) }

func (b *batched) Read(p []byte) (int, error) {
	if b.w.Buffered() > 0 {
		if err := b.w.Flush(); err != nil {
			return 0, err
		}
	}
	return b.Conn.Read(p)
}

// Close sends what is left (a TLS close_notify), if it can at once.
func (b *batched) Close() error {
	if b.w.Buffered() > 0 {
		b.Conn.SetWriteDeadline(time.Now().Add(time.Second))
		b.w.Flush()
	}
	return b.Conn.Close()
}

// greeted hands go-smtp's client a session already past STARTTLS: it reads
// a greeting first, so one is supplied, and then the TLS stream.
type greeted struct {
	net.Conn
	r io.Reader
}

func (g greeted) Read(b []byte) (int, error) { return g.r.Read(b) }
