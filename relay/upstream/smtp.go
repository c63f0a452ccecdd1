package upstream

import (
	"bufio"
	"bytes"
	"context"
	"crypto/tls"
	"errors"
	"fmt"
	"io"
	"io/fs"
	"net/textproto"
	"net/url"
	"strconv"
	"time"

	"github.com/emersion/go-smtp"

	"github.com/smarthost/smarthost/relay/queue"
)

// smtpTransport speaks SMTP to one upstream through a pool of sessions.
type smtpTransport struct {
	u    Upstream
	dial *dialer
	pool *pool
}

func newSMTPTransport(u Upstream, pu *url.URL, hostname string) (*smtpTransport, error) {
	if u.Timeout <= 0 {
		return nil, errors.New("timeout must be set")
	}
	if u.MaxConnections <= 0 {
		u.MaxConnections = 1
	}
	if u.ConnectTimeout <= 0 || u.ConnectTimeout > u.Timeout {
		u.ConnectTimeout = min(defaultConnectTimeout, u.Timeout)
	}
	d := &dialer{
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
	}
	if u.ClientCert != nil {
		d.tls.Certificates = []tls.Certificate{*u.ClientCert}
	}
	return &smtpTransport{u: u, dial: d, pool: newPool(u.MaxConnections, min(u.Timeout/2, maxStallWindow), d.dial)}, nil
}

// Close closes the idle sessions.
func (t *smtpTransport) Close() { t.pool.close() }

func (t *smtpTransport) Send(ctx context.Context, m *queue.Message, to []queue.Recipient) []error {
	if ctx.Err() != nil {
		return all(len(to), fmt.Errorf("%w: %w", errConnect, context.Cause(ctx)))
	}
	p, fresh, err := t.pool.get(ctx)
	if err != nil {
		// Whatever refused us before MAIL FROM refused the connection, not
		// the message: temporary, so the next upstream gets a turn.
		return all(len(to), fmt.Errorf("%w: %w", errConnect, err))
	}
	out, err, cut := t.transact(ctx, p, m, to)
	if err != nil && !cut && !fresh && errors.Is(err, errIdleDied) {
		// A pooled session that died while idle (the upstream restarted,
		// or dropped us) says nothing about the upstream now: dial it
		// again, once, before the route fails over.
		t.pool.discard(p)
		if p, err = t.pool.fresh(ctx); err != nil {
			return all(len(to), fmt.Errorf("%w: %w", errConnect, err))
		}
		out, err, cut = t.transact(ctx, p, m, to)
	}
	if err != nil || cut {
		t.pool.discard(p)
	} else {
		t.pool.release(p)
	}
	if err != nil {
		return all(len(to), outcome(err))
	}
	return out
}

// transact is transaction, cut short if ctx ends first (the node is
// leaving, and hands the message to its peers): moving the session's
// deadline to now ends whatever read or write it waits on, which go-smtp's
// client would not do for a context. cut says the session is spoilt,
// whatever the outcome.
func (t *smtpTransport) transact(ctx context.Context, p *pooled, m *queue.Message, to []queue.Recipient) (out []error, err error, cut bool) {
	stop := context.AfterFunc(ctx, func() { p.c.conn.SetDeadline(time.Now()) })
	out, err = t.transaction(p, m, to)
	if cut = !stop(); cut && err != nil {
		err = fmt.Errorf("%w (%w)", context.Cause(ctx), err)
	}
	return out, err, cut
}

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
	if out, err := mail(c.Client, m.From, mo, len(to)); out != nil || err != nil {
		return out, err
	}
	out := make([]error, len(to))
	accepted := 0
	for i, r := range to {
		if err := c.Rcpt(r.Addr, rcptOptions(r, dsn)); err != nil {
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
	return out, t.data(c, p, m, out)
}

// mail sends MAIL FROM. A refusal applies to all n recipients (out), and
// leaves the session usable; err is set when it does not.
func mail(c *smtp.Client, from string, mo *smtp.MailOptions, n int) (out []error, err error) {
	err = c.Mail(from, mo)
	switch {
	case err == nil:
		return nil, nil
	case closing(err):
		var se *smtp.SMTPError
		if !errors.As(err, &se) {
			err = fmt.Errorf("%w: %w", errIdleDied, err)
		}
		return nil, err
	case !isReply(4)(err) && !isReply(5)(err):
		// Refused by the client library before it was sent: nothing is
		// under way, the session is fine.
		return all(n, outcome(err)), nil
	}
	// The sender was refused: every recipient shares its fate, and the
	// session stays usable after RSET.
	if rerr := c.Reset(); rerr != nil {
		return nil, err
	}
	return all(n, outcome(err)), nil
}

// rcptOptions are a recipient's DSN parameters, for an upstream with DSN.
func rcptOptions(r queue.Recipient, dsn bool) *smtp.RcptOptions {
	if !dsn || len(r.Notify) == 0 && r.ORcpt == "" {
		return nil
	}
	ro := &smtp.RcptOptions{}
	for _, n := range r.Notify {
		ro.Notify = append(ro.Notify, smtp.DSNNotify(n))
	}
	if r.ORcpt != "" {
		// RFC 6533: a UTF-8 original recipient goes as type utf-8, as
		// unitext to an upstream with SMTPUTF8 and as its xtext downgrade
		// to one without (go-smtp picks).
		ro.OriginalRecipient, ro.OriginalRecipientType = r.ORcpt, smtp.DSNAddressTypeRFC822
		if r.ORcptType == "utf-8" || !isASCII(r.ORcpt) {
			ro.OriginalRecipientType = smtp.DSNAddressTypeUTF8
		}
	}
	return ro
}

// data sends the message to the accepted recipients (those nil in out) and
// records the upstream's answer to the final dot in out.
//
// The message goes to the connection through dotStuffer, not through
// go-smtp's DATA writer, which escapes dots and line ends byte by byte
// (about 5 % of the relay's CPU): only the final CRLF goes through
// go-smtp's writer, so that its Close sends the dot without adding a line.
func (t *smtpTransport) data(c *session, p *pooled, m *queue.Message, out []error) error {
	w, err := c.Data()
	if err != nil {
		return err
	}
	src, err := m.Open()
	if err != nil {
		w.Close()
		return fmt.Errorf("%w: %w", errSpoolRead, err)
	}
	defer src.Close()
	if p.bw == nil {
		p.bw = bufio.NewWriterSize(nil, 32<<10)
	}
	p.bw.Reset(c.conn)
	ds := &dotStuffer{w: p.bw, bol: true}
	_, err = io.CopyBuffer(ds, src, p.buf)
	if err == nil {
		err = ds.finish(w)
	}
	p.bw.Reset(nil)
	if err != nil {
		var pe *fs.PathError
		if errors.As(err, &pe) {
			err = fmt.Errorf("%w: %w", errSpoolRead, err)
		}
		return err
	}
	if err := w.Close(); err != nil {
		if closing(err) {
			return err
		}
		err = outcome(err)
		for i := range out {
			if out[i] == nil {
				out[i] = err
			}
		}
	}
	return nil
}

// dotStuffer writes a message as the content of DATA: a '.' that starts a
// line gets another in front (RFC 5321 section 4.5.2), a run of lines at a
// time. The last two bytes are held back for finish.
type dotStuffer struct {
	w    *bufio.Writer
	bol  bool // at the beginning of a line
	tail [2]byte
	n    int // bytes in tail
}

func (d *dotStuffer) Write(p []byte) (int, error) {
	written := len(p)
	switch {
	case d.n+len(p) <= 2:
		d.n += copy(d.tail[d.n:], p)
		return written, nil
	case len(p) >= 2:
		d.stuff(d.tail[:d.n])
		d.stuff(p[:len(p)-2])
		d.n = copy(d.tail[:], p[len(p)-2:])
	default: // one byte, two held
		d.stuff(d.tail[:1])
		d.tail[0], d.tail[1] = d.tail[1], p[0]
	}
	return written, nil
}

func (d *dotStuffer) stuff(p []byte) {
	for len(p) > 0 {
		if d.bol && p[0] == '.' {
			d.w.WriteByte('.')
		}
		i := bytes.IndexByte(p, '\n')
		if i < 0 {
			d.w.Write(p)
			d.bol = false
			return
		}
		d.w.Write(p[:i+1])
		d.bol = true
		p = p[i+1:]
	}
}

// finish sends what is buffered, then the message's last line end
// through dw (go-smtp's DATA writer), which then ends DATA with just the
// dot. A message that does not end in CRLF gets one, as go-smtp would add.
func (d *dotStuffer) finish(dw io.Writer) error {
	if d.n == 2 && d.tail == [2]byte{'\r', '\n'} {
		d.n = 0
	} else {
		d.stuff(d.tail[:d.n])
		d.n = 0
	}
	if err := d.w.Flush(); err != nil {
		return err
	}
	_, err := io.WriteString(dw, "\r\n")
	return err
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
	c, err := t.dial.dial(ctx)
	if err != nil {
		return err
	}
	c.Quit()
	return nil
}
