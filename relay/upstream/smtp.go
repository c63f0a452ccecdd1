package upstream

import (
	"context"
	"crypto/tls"
	"errors"
	"fmt"
	"net/url"
	"strconv"

	"github.com/smarthost/smarthost/relay/queue"
	"github.com/smarthost/smarthost/relay/upstream/smtpclient"
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
		client: smtpclient.Config{Hostname: hostname, Timeout: u.Timeout, Discard: u.DisableExtensions},
	}
	if u.ClientCert != nil {
		d.tls.Certificates = []tls.Certificate{*u.ClientCert}
	}
	return &smtpTransport{u: u, dial: d, pool: newPool(u.MaxConnections, min(u.Timeout/2, maxStallWindow), d.dial)}, nil
}

// Close closes the idle sessions.
func (t *smtpTransport) Close() { t.pool.close() }

func (t *smtpTransport) Send(ctx context.Context, m *queue.Message, to []queue.Recipient) []queue.Outcome {
	if ctx.Err() != nil {
		return queue.Failed(len(to), fmt.Errorf("%w: %w", errConnect, context.Cause(ctx)))
	}
	p, fresh, err := t.pool.get(ctx)
	if err != nil {
		// Whatever refused us before MAIL FROM refused the connection, not
		// the message: temporary, so the next upstream gets a turn.
		return queue.Failed(len(to), fmt.Errorf("%w: %w", errConnect, err))
	}
	out, err := t.transaction(ctx, p.c, m, to)
	if err != nil && ctx.Err() == nil && !fresh && errors.Is(err, smtpclient.ErrNotAnswered) {
		// A pooled session that died while idle (the upstream restarted,
		// or dropped us) says nothing about the upstream now: dial it
		// again, once, before the route fails over.
		t.pool.discard(p)
		if p, err = t.pool.fresh(ctx); err != nil {
			return queue.Failed(len(to), fmt.Errorf("%w: %w", errConnect, err))
		}
		out, err = t.transaction(ctx, p.c, m, to)
	}
	if out == nil {
		out = all(len(to), outcome(err))
	}
	res := outcomes(p.c, out)
	if err != nil || ctx.Err() != nil {
		// A session whose context ended may have had its deadline moved
		// to the past after the last reply: it goes, whatever the outcome.
		t.pool.discard(p)
	} else {
		t.pool.release(p)
	}
	return res
}

// outcomes says, for the log and the message's history, where each
// recipient's outcome came from (the server's address, the TLS version)
// and what the server said: its reply to the message when it took it
// (with its queue ID), else its refusal.
func outcomes(c *smtpclient.Conn, errs []error) []queue.Outcome {
	addr, version := c.RemoteAddr().String(), ""
	if st, ok := c.TLS(); ok {
		version = queue.TLSVersion(st.Version)
	}
	out := make([]queue.Outcome, len(errs))
	for i, err := range errs {
		reply := c.Taken()
		if err != nil {
			reply = replyOf(err)
		}
		out[i] = queue.Outcome{Err: err, Addr: addr, TLS: version, Reply: reply}
	}
	return out
}

// transaction sends one message. A non-nil error leaves the session
// unusable, and applies to every recipient unless out says otherwise; a
// nil one leaves the session ready for the next message.
func (t *smtpTransport) transaction(ctx context.Context, c *smtpclient.Conn, m *queue.Message, to []queue.Recipient) ([]error, error) {
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
	env := &smtpclient.Envelope{From: m.From, Size: size, UTF8: utf8 && (m.SMTPUTF8 || needs), Ret: m.Ret, EnvID: m.EnvID}
	for _, r := range to {
		// RFC 6533: a UTF-8 original recipient goes as type utf-8.
		env.Rcpts = append(env.Rcpts, smtpclient.Rcpt{Addr: r.Addr, Notify: r.Notify, ORcpt: r.ORcpt,
			ORcptUTF8: r.ORcptType == "utf-8" || !isASCII(r.ORcpt)})
	}
	src, err := m.Open()
	if err != nil {
		return all(len(to), fmt.Errorf("%w: %w", errSpoolRead, err)), nil
	}
	defer src.Close()
	out, err := c.Send(ctx, env, src)
	if errors.Is(err, smtpclient.ErrBodyRead) {
		err = fmt.Errorf("%w: %w", errSpoolRead, err)
	}
	for i := range out {
		out[i] = outcome(out[i])
	}
	return out, err
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

func (t *smtpTransport) probe(ctx context.Context) error {
	c, err := t.dial.dial(ctx)
	if err != nil {
		return err
	}
	c.Quit(ctx)
	return nil
}
