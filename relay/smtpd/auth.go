package smtpd

import (
	"crypto/tls"
	"encoding/base64"
	"strings"

	"github.com/emersion/go-smtp"
)

func (c *Conn) authAllowed() bool {
	_, isTLS := c.TLSConnectionState()
	return isTLS || c.srv.cfg.AllowInsecureAuth
}

func (c *Conn) authMechanisms() []string {
	if s, ok := c.currentSession().(smtp.AuthSession); ok {
		return s.AuthMechanisms()
	}
	return nil
}

func (c *Conn) handleAuth(arg string) {
	cur := c.currentSession()
	sess, ok := cur.(smtp.AuthSession)
	switch {
	case cur == nil:
		c.protocolError(503, smtp.EnhancedCode{5, 5, 1}, "Please introduce yourself first")
		return
	case c.didAuth:
		c.protocolError(503, smtp.EnhancedCode{5, 5, 1}, "Already authenticated")
		return
	case c.fromReceived:
		c.protocolError(503, smtp.EnhancedCode{5, 5, 1}, "AUTH not allowed during a mail transaction")
		return
	case !ok:
		c.reply(502, smtp.EnhancedCode{5, 5, 1}, "AUTH not supported")
		return
	case !c.authAllowed():
		c.reply(538, smtp.EnhancedCode{5, 7, 11}, "Encryption required")
		return
	}
	parts := strings.Fields(arg)
	if len(parts) == 0 || len(parts) > 2 {
		c.protocolError(501, smtp.EnhancedCode{5, 5, 4}, "Syntax: AUTH mechanism [initial-response]")
		return
	}
	var resp []byte
	if len(parts) == 2 {
		var err error
		if resp, err = decodeSASL(parts[1]); err != nil {
			c.reply(501, smtp.EnhancedCode{5, 5, 2}, "Invalid base64 data")
			return
		}
	}
	server, err := sess.Auth(strings.ToUpper(parts[0]))
	if err != nil {
		c.replyErr(err, 454, smtp.EnhancedCode{4, 7, 0}, "Temporary authentication failure")
		return
	}
	for {
		challenge, done, err := server.Next(resp)
		if err != nil {
			c.replyErr(err, 454, smtp.EnhancedCode{4, 7, 0}, "Temporary authentication failure")
			return
		}
		if done {
			break
		}
		c.reply(334, smtp.NoEnhancedCode, base64.StdEncoding.EncodeToString(challenge))
		line, err := c.readLine()
		if err != nil {
			c.quit = true
			return
		}
		if line == "*" {
			c.reply(501, smtp.EnhancedCode{5, 0, 0}, "Negotiation cancelled")
			return
		}
		if resp, err = decodeSASL(line); err != nil {
			c.reply(501, smtp.EnhancedCode{5, 5, 2}, "Invalid base64 data")
			return
		}
	}
	c.didAuth = true
	c.reply(235, smtp.EnhancedCode{2, 7, 0}, "Authentication succeeded")
}

// decodeSASL reads a base64 SASL response; "=" is an empty one (RFC 4954 4).
func decodeSASL(s string) ([]byte, error) {
	if s == "=" {
		return []byte{}, nil
	}
	return base64.StdEncoding.DecodeString(s)
}

func (c *Conn) handleStartTLS(arg string) {
	if _, isTLS := c.TLSConnectionState(); isTLS {
		c.protocolError(503, smtp.EnhancedCode{5, 5, 1}, "Already running in TLS")
		return
	}
	if c.srv.cfg.TLS == nil {
		c.reply(502, smtp.EnhancedCode{5, 5, 1}, "TLS not supported")
		return
	}
	if arg != "" {
		c.protocolError(501, smtp.EnhancedCode{5, 5, 4}, "STARTTLS takes no arguments")
		return
	}
	c.reply(220, smtp.EnhancedCode{2, 0, 0}, "Ready to start TLS")
	tc := tls.Server(c.conn, c.srv.cfg.TLS)
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
