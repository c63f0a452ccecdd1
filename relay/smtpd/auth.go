package smtpd

import (
	"encoding/base64"
	"strings"
)

func (c *Conn) handleAuth(arg string) {
	sess := c.Session()
	switch {
	case sess == nil:
		c.protocolError("AUTH", ReplyHelloFirst)
		return
	case c.didAuth:
		c.protocolError("AUTH", ReplyAuthDone)
		return
	case c.fromReceived:
		c.protocolError("AUTH", ReplyAuthInMail)
		return
	}
	parts := strings.Fields(arg)
	if len(parts) == 0 || len(parts) > 2 {
		c.protocolError("AUTH", ReplyAuthSyntax)
		return
	}
	// A malformed initial response is handed to the mechanism as the
	// answer to its first question, so that the session counts it like
	// any other malformed response.
	var initial []byte
	var bad error
	if len(parts) == 2 {
		if initial, bad = decodeSASL(parts[1]); bad != nil {
			initial = nil
		}
	}
	next := func(challenge []byte) ([]byte, error) {
		if bad != nil {
			err := bad
			bad = nil
			return nil, err
		}
		c.reply(ReplyAuthContinue.With(base64.StdEncoding.EncodeToString(challenge)))
		line, err := c.readLine()
		if err != nil {
			c.quit = true
			return nil, err
		}
		if line == "*" {
			return nil, ErrAuthCancelled
		}
		return decodeSASL(line)
	}
	err := sess.Auth(strings.ToUpper(parts[0]), initial, next)
	if c.quit {
		return // the connection failed during the exchange
	}
	if err != nil {
		c.fail("AUTH", err)
		return
	}
	c.didAuth = true
	c.reply(ReplyAuthOK)
}

// decodeSASL reads a base64 SASL response; "=" is an empty one (RFC 4954 4).
func decodeSASL(s string) ([]byte, error) {
	if s == "=" {
		return []byte{}, nil
	}
	b, err := base64.StdEncoding.DecodeString(s)
	if err != nil {
		return nil, ErrAuthMalformed
	}
	return b, nil
}
