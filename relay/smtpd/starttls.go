package smtpd

import (
	"context"
	"crypto/tls"
)

// handleStartTLS upgrades the connection to TLS (RFC 3207).
func (c *Conn) handleStartTLS(arg string) {
	if _, isTLS := c.TLSConnectionState(); isTLS {
		c.protocolError("STARTTLS", ReplyTLSActive)
		return
	}
	if c.ep.tls == nil {
		c.send("STARTTLS", ReplyTLSUnavailable, nil)
		return
	}
	if arg != "" {
		c.protocolError("STARTTLS", ReplyNoArguments.With("STARTTLS"))
		return
	}
	c.reply(ReplyReadyTLS)
	tc := tls.Server(c.conn, c.ep.tls)
	c.conn = tc
	if err := c.handshake(tc); err != nil {
		// Nothing sensible can be said: the stream is neither TLS nor SMTP.
		c.quit = true
		return
	}
	// RFC 3207 4.2: forget everything learnt before TLS, and (init) drop
	// whatever was pipelined behind STARTTLS in the clear.
	c.init()
	c.setSession(nil)
	c.helo = ""
	c.didAuth = false
	c.reset()
}

// handshake runs a TLS handshake (implicit TLS, or after STARTTLS) within
// WriteTimeout.
func (c *Conn) handshake(tc *tls.Conn) error {
	ctx, cancel := context.WithTimeout(context.Background(), c.srv.cfg.WriteTimeout)
	defer cancel()
	return tc.HandshakeContext(ctx)
}
