package upstream

import (
	"bufio"
	"context"
	"crypto/tls"
	"errors"
	"fmt"
	"io"
	"io/fs"
	"net"
	"net/textproto"
	"net/url"
	"strconv"
	"strings"
	"sync"
	"time"

	"github.com/emersion/go-sasl"
	"github.com/emersion/go-smtp"

	"github.com/smarthost/smarthost/relay/queue"
)

// idleCheck is how long a pooled connection may sit unused before it is
// asked for a NOOP before reuse; maxIdle is how long it is kept at all
// (servers drop idle clients after a few minutes, RFC 5321 4.5.3.2.7).
const (
	idleCheck = 15 * time.Second
	maxIdle   = 2 * time.Minute
)

// smtpTransport speaks SMTP to one upstream: smtp:// with STARTTLS as the
// upstream's tls setting says, or smtps:// with TLS from the first byte.
// It keeps up to MaxConnections sessions open, authenticated, and reuses
// them for message after message.
type smtpTransport struct {
	u        Upstream
	addr     string
	implicit bool
	tls      *tls.Config
	hostname string
	now      func() time.Time

	slots chan struct{} // one per open connection, idle or busy
	idle  chan *pooled  // sessions ready for the next message
	mu    sync.Mutex
	dials int64 // connections opened, for tests and metrics
}

type pooled struct {
	c        *smtp.Client
	lastUsed time.Time
	// buf carries the message into the DATA writer, which io.Copy would
	// otherwise allocate afresh for every message (32 KiB each).
	buf []byte
}

func newSMTPTransport(u Upstream, pu *url.URL, hostname string) (*smtpTransport, error) {
	if u.Timeout <= 0 {
		return nil, errors.New("timeout must be set")
	}
	if u.MaxConnections <= 0 {
		u.MaxConnections = 1
	}
	return &smtpTransport{
		u:        u,
		addr:     pu.Host,
		implicit: pu.Scheme == "smtps",
		tls: &tls.Config{
			ServerName:         pu.Hostname(),
			RootCAs:            u.RootCAs,
			InsecureSkipVerify: !u.TLSVerify,
			MinVersion:         tls.VersionTLS12,
		},
		hostname: hostname,
		now:      time.Now,
		slots:    make(chan struct{}, u.MaxConnections),
		idle:     make(chan *pooled, u.MaxConnections),
	}, nil
}

// Dials is the number of connections opened so far.
func (t *smtpTransport) Dials() int64 {
	t.mu.Lock()
	defer t.mu.Unlock()
	return t.dials
}

func (t *smtpTransport) Send(ctx context.Context, m *queue.Message, to []queue.Recipient) []error {
	p, fresh, err := t.get(ctx)
	if err != nil {
		// Whatever refused us before MAIL FROM refused the connection, not
		// the message: temporary, so the next upstream gets a turn.
		return all(len(to), fmt.Errorf("%w: %w", errConnect, err))
	}
	out, err := t.transaction(p, m, to)
	if err != nil && !fresh && errors.Is(err, errIdleDied) {
		// A pooled session that died while idle (the upstream restarted,
		// or dropped us) says nothing about the upstream now: dial it
		// again, once, before the route fails over.
		t.discard(p)
		if p, err = t.fresh(ctx); err != nil {
			return all(len(to), fmt.Errorf("%w: %w", errConnect, err))
		}
		out, err = t.transaction(p, m, to)
	}
	if err != nil {
		t.discard(p)
		return all(len(to), outcome(err))
	}
	t.release(p)
	return out
}

// get returns a ready session: a pooled one that still answers, or a new
// one (fresh) if fewer than MaxConnections are open; else it waits for
// either.
func (t *smtpTransport) get(ctx context.Context) (p *pooled, fresh bool, err error) {
	for {
		select {
		case p = <-t.idle:
		default:
			select {
			case p = <-t.idle:
			case t.slots <- struct{}{}:
				p, err := t.dialSlot(ctx)
				return p, true, err
			case <-ctx.Done():
				return nil, false, ctx.Err()
			}
		}
		age := t.now().Sub(p.lastUsed)
		if age > maxIdle || (age > idleCheck && p.c.Noop() != nil) {
			t.discard(p)
			continue
		}
		return p, false, nil
	}
}

// fresh dials a new session in a slot that is free: the caller has just
// discarded one.
func (t *smtpTransport) fresh(ctx context.Context) (*pooled, error) {
	select {
	case t.slots <- struct{}{}:
		return t.dialSlot(ctx)
	case <-ctx.Done():
		return nil, ctx.Err()
	}
}

// dialSlot dials a session for a slot already taken, and gives the slot
// back if that fails.
func (t *smtpTransport) dialSlot(ctx context.Context) (*pooled, error) {
	c, err := t.dial(ctx)
	if err != nil {
		<-t.slots
		return nil, err
	}
	return &pooled{c: c, buf: make([]byte, 16<<10)}, nil
}

// release puts a session that ended a transaction cleanly back in the
// pool. It never blocks: there are never more sessions than slots.
func (t *smtpTransport) release(p *pooled) {
	p.lastUsed = t.now()
	t.idle <- p
}

// discard closes a session that failed or may be in an unknown state.
func (t *smtpTransport) discard(p *pooled) {
	p.c.Close()
	<-t.slots
}

// Close closes the idle sessions.
func (t *smtpTransport) Close() {
	for {
		select {
		case p := <-t.idle:
			p.c.Quit()
			<-t.slots
		default:
			return
		}
	}
}

func (t *smtpTransport) dial(ctx context.Context) (*smtp.Client, error) {
	c, err := t.connect(ctx, t.u.TLS != "none")
	if err != nil && t.u.TLS == "opportunistic" && errors.Is(err, errStartTLS) {
		c, err = t.connect(ctx, false)
	}
	if err != nil {
		return nil, err
	}
	if t.u.Username != "" {
		if err := c.Auth(sasl.NewPlainClient("", t.u.Username, t.u.Password)); err != nil {
			c.Close()
			// A refused login is our configuration, not the message's
			// fault: Send retries and fails over rather than bounce.
			return nil, fmt.Errorf("AUTH: %w", err)
		}
	}
	t.mu.Lock()
	t.dials++
	t.mu.Unlock()
	return c, nil
}

var errStartTLS = errors.New("STARTTLS failed")

// connect opens a session up to and including EHLO (after TLS, if any).
func (t *smtpTransport) connect(ctx context.Context, startTLS bool) (*smtp.Client, error) {
	d := net.Dialer{Timeout: t.u.Timeout}
	raw, err := d.DialContext(ctx, "tcp", t.addr)
	if err != nil {
		return nil, err
	}
	var conn net.Conn = newBatched(raw)
	conn.SetDeadline(time.Now().Add(t.u.Timeout))
	var c *smtp.Client
	switch {
	case t.implicit:
		tc := tls.Client(conn, t.tls)
		if err := tc.HandshakeContext(ctx); err != nil {
			conn.Close()
			return nil, fmt.Errorf("TLS: %w", err)
		}
		c = smtp.NewClient(tc)
	case startTLS:
		tc, err := t.startTLS(ctx, conn)
		if err != nil {
			conn.Close()
			return nil, fmt.Errorf("%w: %w", errStartTLS, err)
		}
		c = smtp.NewClient(greeted{Conn: tc, r: io.MultiReader(strings.NewReader("220 TLS established\r\n"), tc)})
	default:
		c = smtp.NewClient(conn)
	}
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
	return c, nil
}

// startTLS does the plain-text part of a STARTTLS session itself (go-smtp's
// client would say EHLO localhost there): greeting, EHLO with our name,
// STARTTLS, handshake.
func (t *smtpTransport) startTLS(ctx context.Context, conn net.Conn) (*tls.Conn, error) {
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

// errIdleDied marks a session that failed at its first command, MAIL FROM,
// without an answer: one that died while it sat in the pool.
var errIdleDied = errors.New("pooled connection closed")

// transaction sends one message. A non-nil error applies to every recipient
// and leaves the session unusable; a nil error leaves it ready for the next
// MAIL FROM.
func (t *smtpTransport) transaction(p *pooled, m *queue.Message, to []queue.Recipient) ([]error, error) {
	c := p.c
	// What the upstream cannot take is refused here, before a command is
	// sent: the session stays ready for the next message.
	utf8, _ := c.Extension("SMTPUTF8")
	needs := needsUTF8(m, to)
	if !utf8 && needs {
		return all(len(to), errNoSMTPUTF8), nil
	}
	size := int64(len(m.Prepend)) + m.Size
	if ok, limit := c.Extension("SIZE"); ok {
		if n, err := strconv.ParseInt(limit, 10, 64); err == nil && n > 0 && size > n {
			return all(len(to), errTooLarge), nil
		}
	}
	dsn, _ := c.Extension("DSN")
	mo := &smtp.MailOptions{Size: size, UTF8: utf8 && (m.SMTPUTF8 || needs)}
	if dsn {
		mo.Return, mo.EnvelopeID = smtp.DSNReturn(m.Ret), m.EnvID
	}
	if err := c.Mail(m.From, mo); err != nil {
		if closing(err) {
			var se *smtp.SMTPError
			if !errors.As(err, &se) {
				err = fmt.Errorf("%w: %w", errIdleDied, err)
			}
			return nil, err
		}
		if !isReply(4)(err) && !isReply(5)(err) {
			// Refused by the client library before it was sent: nothing
			// is under way, the session is fine.
			return all(len(to), outcome(err)), nil
		}
		// The sender was refused: every recipient shares its fate, and
		// the session stays usable after RSET.
		if rerr := c.Reset(); rerr != nil {
			return nil, err
		}
		return all(len(to), outcome(err)), nil
	}
	out := make([]error, len(to))
	accepted := 0
	for i, r := range to {
		var ro *smtp.RcptOptions
		if dsn && (len(r.Notify) > 0 || r.ORcpt != "") {
			ro = &smtp.RcptOptions{}
			for _, n := range r.Notify {
				ro.Notify = append(ro.Notify, smtp.DSNNotify(n))
			}
			if r.ORcpt != "" {
				// RFC 6533: a UTF-8 original recipient goes as type
				// utf-8, as unitext to an upstream with SMTPUTF8 and as
				// its xtext downgrade to one without (go-smtp picks).
				ro.OriginalRecipient, ro.OriginalRecipientType = r.ORcpt, smtp.DSNAddressTypeRFC822
				if r.ORcptType == "utf-8" || !isASCII(r.ORcpt) {
					ro.OriginalRecipientType = smtp.DSNAddressTypeUTF8
				}
			}
		}
		if err := c.Rcpt(r.Addr, ro); err != nil {
			if closing(err) {
				return nil, err
			}
			out[i] = outcome(err)
			continue
		}
		accepted++
	}
	if accepted == 0 {
		if err := c.Reset(); err != nil {
			return nil, err
		}
		return out, nil
	}
	w, err := c.Data()
	if err != nil {
		return nil, err
	}
	src, err := m.Open()
	if err != nil {
		w.Close()
		return nil, fmt.Errorf("%w: %w", errSpoolRead, err)
	}
	defer src.Close()
	if _, err := io.CopyBuffer(w, src, p.buf); err != nil {
		var pe *fs.PathError
		if errors.As(err, &pe) {
			err = fmt.Errorf("%w: %w", errSpoolRead, err)
		}
		return nil, err
	}
	if err := w.Close(); err != nil {
		if closing(err) {
			return nil, err
		}
		err = outcome(err)
		for i := range out {
			if out[i] == nil {
				out[i] = err
			}
		}
	}
	return out, nil
}

// needsUTF8 reports whether a message can only go with SMTPUTF8: it says
// so (a UTF-8 address or header when it was received), or an address of
// its envelope is UTF-8 (a spool from before the flag was kept).
func needsUTF8(m *queue.Message, to []queue.Recipient) bool {
	if m.UTF8 || !isASCII(m.From) {
		return true
	}
	for _, r := range to {
		if !isASCII(r.Addr) {
			return true
		}
	}
	return false
}

func isASCII(s string) bool {
	for i := 0; i < len(s); i++ {
		if s[i] >= 0x80 {
			return false
		}
	}
	return true
}

// closing reports whether err ends the session: a 421 (RFC 5321 3.8) or no
// SMTP reply at all (a network error). An error the client library raised
// before sending anything does not.
func closing(err error) bool {
	var se *smtp.SMTPError
	if errors.As(err, &se) {
		return se.Code == 421
	}
	return isNetwork(err) || isTLS(err) || isAs[textproto.ProtocolError](err) ||
		errors.Is(err, context.Canceled) || errors.Is(err, context.DeadlineExceeded)
}

func (t *smtpTransport) probe(ctx context.Context) error {
	c, err := t.dial(ctx)
	if err != nil {
		return err
	}
	c.Quit()
	return nil
}
