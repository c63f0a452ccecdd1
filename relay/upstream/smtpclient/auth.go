package smtpclient

import (
	"context"
	"encoding/base64"
	"errors"

	"github.com/emersion/go-sasl"
)

// Auth logs in with a SASL mechanism (RFC 4954). A refusal is an *Error
// (535, 454, ...); an error of the mechanism itself (a challenge it
// cannot answer, such as an XOAUTH2 server's JSON error) is returned as
// the mechanism gave it, after the exchange is cancelled with "*".
func (c *Conn) Auth(ctx context.Context, a sasl.Client) error {
	mech, ir, err := a.Start()
	if err != nil {
		return err
	}
	return c.exchange(ctx, func() error {
		r, err := c.authStart(mech, ir)
		for err == nil && r.code == 334 {
			var challenge, resp []byte
			challenge, err = base64.StdEncoding.DecodeString(firstLine(r))
			if err == nil {
				resp, err = a.Next(challenge)
			}
			if err != nil {
				// Cancel the exchange (RFC 4954 4); the server's answer
				// to that says nothing more than err does.
				if _, cerr := c.cmd("*"); cerr != nil {
					return errors.Join(err, cerr)
				}
				return err
			}
			r, err = c.cmd("%s", base64.StdEncoding.EncodeToString(resp))
		}
		if err != nil {
			return err
		}
		return r.expect(2)
	})
}

// authStart sends AUTH with the initial response, or, when that would not
// fit in a command line of 512 octets (RFC 4954 4), as the answer to the
// server's first (empty) challenge.
func (c *Conn) authStart(mech string, ir []byte) (reply, error) {
	if ir == nil {
		return c.cmd("AUTH %s", mech)
	}
	enc := "="
	if len(ir) > 0 {
		enc = base64.StdEncoding.EncodeToString(ir)
	}
	if len("AUTH ")+len(mech)+1+len(enc)+2 <= 512 {
		return c.cmd("AUTH %s %s", mech, enc)
	}
	r, err := c.cmd("AUTH %s", mech)
	if err != nil || r.code != 334 {
		return r, err
	}
	return c.cmd("%s", enc)
}

func firstLine(r reply) string {
	if len(r.lines) == 0 {
		return ""
	}
	return r.lines[0]
}
