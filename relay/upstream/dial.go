package upstream

import (
	"context"
	"crypto/tls"
	"errors"
	"fmt"
	"net"
	"time"

	"github.com/smarthost/smarthost/relay/upstream/smtpclient"
)

// dialer opens authenticated sessions to one upstream: smtp:// with
// STARTTLS as the upstream's tls setting says, or smtps:// with TLS from
// the first byte.
type dialer struct {
	u        Upstream
	addr     string
	implicit bool
	tls      *tls.Config
	client   smtpclient.Config
}

// defaultConnectTimeout is Postfix's smtp_connect_timeout.
const defaultConnectTimeout = 30 * time.Second

// errStartTLS marks a STARTTLS that was refused or failed: with tls:
// opportunistic, the upstream is dialed again without it.
var errStartTLS = errors.New("STARTTLS failed")

func (t *dialer) dial(ctx context.Context) (*smtpclient.Conn, error) {
	c, err := t.connect(ctx, !t.implicit && t.u.TLS != "none")
	if err != nil && t.u.TLS == "opportunistic" && errors.Is(err, errStartTLS) {
		c, err = t.connect(ctx, false)
	}
	if err != nil {
		return nil, err
	}
	if err := login(ctx, c, t.u); err != nil {
		c.Close()
		// A refused login is our configuration, not the message's
		// fault: Send retries and fails over rather than bounce.
		return nil, fmt.Errorf("AUTH: %w", err)
	}
	return c, nil
}

// connect opens a session up to and including EHLO, after TLS if any.
func (t *dialer) connect(ctx context.Context, startTLS bool) (*smtpclient.Conn, error) {
	d := net.Dialer{Timeout: t.u.ConnectTimeout}
	raw, err := d.DialContext(ctx, "tcp", t.addr)
	if err != nil {
		if ctx.Err() != nil {
			err = fmt.Errorf("%w (%w)", context.Cause(ctx), err)
		}
		return nil, err
	}
	conn := raw
	if t.implicit {
		tc := tls.Client(raw, t.tls)
		hctx, cancel := context.WithTimeout(ctx, t.u.Timeout)
		err := tc.HandshakeContext(hctx)
		cancel()
		if err != nil {
			raw.Close()
			return nil, fmt.Errorf("TLS: %w", err)
		}
		conn = tc
	}
	c, err := smtpclient.New(ctx, conn, t.client)
	if err != nil || !startTLS {
		return c, err
	}
	err = c.StartTLS(ctx, t.tls)
	if errors.Is(err, smtpclient.ErrNoStartTLS) && t.u.TLS == "opportunistic" {
		return c, nil // not offered: plain text, on the same connection
	}
	if err != nil {
		c.Close()
		return nil, fmt.Errorf("%w: %w", errStartTLS, err)
	}
	return c, nil
}
