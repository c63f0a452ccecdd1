package upstream

import (
	"context"
	"crypto/tls"
	"errors"
	"fmt"
	"io"
	"net"
	"net/url"
	"time"

	"github.com/emersion/go-sasl"
	"github.com/emersion/go-smtp"

	"github.com/smarthost/smarthost/relay/queue"
)

// smtpTransport speaks SMTP to one upstream: smtp:// with STARTTLS as the
// upstream's tls setting says, or smtps:// with TLS from the first byte.
type smtpTransport struct {
	u        Upstream
	addr     string
	implicit bool
	tls      *tls.Config
	hostname string
	slots    chan struct{} // at most MaxConnections at once
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
		slots:    make(chan struct{}, u.MaxConnections),
	}, nil
}

func (t *smtpTransport) Send(ctx context.Context, m *queue.Message, to []string) []error {
	select {
	case t.slots <- struct{}{}:
		defer func() { <-t.slots }()
	case <-ctx.Done():
		return all(len(to), ctx.Err())
	}
	c, err := t.dial(ctx)
	if err != nil {
		// Whatever refused us before MAIL FROM refused the connection, not
		// the message: temporary, so the next upstream gets a turn.
		return all(len(to), err)
	}
	defer c.Close()
	out, err := t.transaction(c, m, to)
	if err != nil {
		return all(len(to), classify(err))
	}
	c.Quit()
	return out
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
			// fault: retry and fail over rather than bounce.
			return nil, fmt.Errorf("AUTH: %w", temporary(err))
		}
	}
	return c, nil
}

var errStartTLS = errors.New("STARTTLS failed")

// connect opens a session up to and including EHLO (after TLS, if any).
func (t *smtpTransport) connect(ctx context.Context, startTLS bool) (*smtp.Client, error) {
	d := net.Dialer{Timeout: t.u.Timeout}
	conn, err := d.DialContext(ctx, "tcp", t.addr)
	if err != nil {
		return nil, err
	}
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
		// go-smtp says EHLO localhost before STARTTLS; our name follows
		// in the EHLO after it.
		if c, err = smtp.NewClientStartTLS(conn, t.tls); err != nil {
			conn.Close()
			return nil, fmt.Errorf("%w: %w", errStartTLS, err)
		}
	default:
		c = smtp.NewClient(conn)
	}
	conn.SetDeadline(time.Time{})
	c.CommandTimeout = t.u.Timeout
	c.SubmissionTimeout = t.u.Timeout
	if err := c.Hello(t.hostname); err != nil {
		c.Close()
		if startTLS {
			err = fmt.Errorf("%w: %w", errStartTLS, err)
		}
		return nil, err
	}
	return c, nil
}

// transaction sends one message. A non-nil error applies to every recipient.
func (t *smtpTransport) transaction(c *smtp.Client, m *queue.Message, to []string) ([]error, error) {
	if err := c.Mail(m.From, nil); err != nil {
		return nil, err
	}
	out := make([]error, len(to))
	accepted := 0
	for i, r := range to {
		if err := c.Rcpt(r, nil); err != nil {
			out[i] = classify(err)
			continue
		}
		accepted++
	}
	if accepted == 0 {
		c.Reset()
		return out, nil
	}
	w, err := c.Data()
	if err != nil {
		return nil, err
	}
	src, err := m.Open()
	if err != nil {
		w.Close()
		return nil, err
	}
	defer src.Close()
	if _, err := io.Copy(w, src); err != nil {
		return nil, err
	}
	if err := w.Close(); err != nil {
		err = classify(err)
		for i := range out {
			if out[i] == nil {
				out[i] = err
			}
		}
	}
	return out, nil
}

// classify marks an upstream's 5xx answers permanent; everything else
// (network errors, timeouts, 4xx) stays temporary.
func classify(err error) error {
	var se *smtp.SMTPError
	if errors.As(err, &se) && se.Code/100 == 5 && !errors.Is(err, errTemporary) {
		return queue.Permanent(err)
	}
	return err
}

var errTemporary = errors.New("temporary")

type tempErr struct{ err error }

func (e tempErr) Error() string   { return e.err.Error() }
func (e tempErr) Unwrap() []error { return []error{e.err, errTemporary} }
func temporary(err error) error   { return tempErr{err} }

func (t *smtpTransport) probe(ctx context.Context) error {
	c, err := t.dial(ctx)
	if err != nil {
		return err
	}
	c.Quit()
	return nil
}
