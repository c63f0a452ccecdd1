package smtpd

import (
	"errors"
	"fmt"
	"strconv"
	"strings"

	"github.com/emersion/go-smtp"
)

func (c *Conn) handleGreet(ehlo bool, arg string) {
	domain, _, _ := strings.Cut(arg, " ")
	if domain == "" {
		c.protocolError(501, smtp.EnhancedCode{5, 5, 4}, "Domain or address argument required")
		return
	}
	c.helo = domain
	if c.currentSession() != nil {
		// RFC 5321 4.1.4: a later EHLO resets the state as RSET does.
		c.reset()
	} else {
		sess, err := c.srv.be.NewSession(c)
		if err != nil {
			c.helo = ""
			c.replyErr(err, 451, smtp.EnhancedCode{4, 0, 0}, "Cannot start a session, try again later")
			return
		}
		c.setSession(sess)
	}
	if !ehlo {
		c.reply(250, smtp.EnhancedCode{2, 0, 0}, "Hello "+domain)
		return
	}
	caps := []string{"Hello " + domain, "PIPELINING", "8BITMIME", "ENHANCEDSTATUSCODES"}
	if _, isTLS := c.TLSConnectionState(); c.srv.cfg.TLS != nil && !isTLS {
		caps = append(caps, "STARTTLS")
	}
	if mechs := c.authMechanisms(); c.authAllowed() && len(mechs) > 0 {
		caps = append(caps, "AUTH "+strings.Join(mechs, " "))
	}
	if c.srv.cfg.EnableSMTPUTF8 {
		caps = append(caps, "SMTPUTF8")
	}
	if c.srv.cfg.EnableDSN {
		caps = append(caps, "DSN")
	}
	if n := c.srv.cfg.MaxMessageBytes; n > 0 {
		caps = append(caps, fmt.Sprintf("SIZE %d", n))
	} else {
		caps = append(caps, "SIZE")
	}
	if n := c.srv.cfg.MaxRecipients; n > 0 {
		caps = append(caps, fmt.Sprintf("LIMITS RCPTMAX=%d", n))
	}
	c.reply(250, smtp.NoEnhancedCode, caps...)
}

func (c *Conn) handleMail(arg string) {
	if c.currentSession() == nil {
		c.protocolError(503, smtp.EnhancedCode{5, 5, 1}, "Please introduce yourself first")
		return
	}
	if c.fromReceived {
		c.protocolError(503, smtp.EnhancedCode{5, 5, 1}, "Nested MAIL command")
		return
	}
	from, args, ok := c.pathAndArgs("MAIL", "FROM:", arg)
	if !ok {
		return
	}
	opts := &smtp.MailOptions{}
	for key, value := range args {
		if code, ec, msg := c.mailParam(opts, key, value); code != 0 {
			c.reply(code, ec, msg)
			return
		}
	}
	if err := c.currentSession().Mail(from, opts); err != nil {
		// A client that keeps trying a MAIL refused for good (no AUTH, a
		// sender it does not own) is told to go like one that keeps
		// sending bad commands. A temporary refusal (a rate limit) may be
		// retried as often as the client likes.
		var se *smtp.SMTPError
		if errors.As(err, &se) && se.Code/100 == 5 {
			c.protocolError(se.Code, se.EnhancedCode, se.Message)
			return
		}
		c.replyErr(err, 451, smtp.EnhancedCode{4, 0, 0}, "Requested action aborted, try again later")
		return
	}
	c.fromReceived = true
	c.reply(250, smtp.EnhancedCode{2, 0, 0}, fmt.Sprintf("Roger, accepting mail from <%s>", from))
}

// pathAndArgs reads the argument of MAIL ("FROM:<path> params") or RCPT
// ("TO:<path> params"); on a syntax error it has replied already.
func (c *Conn) pathAndArgs(cmd, prefix, arg string) (string, map[string]string, bool) {
	syntax := fmt.Sprintf("Was expecting %s arg syntax of %s<address>", cmd, prefix)
	rest, ok := cutPrefixFold(arg, prefix)
	if !ok {
		c.protocolError(501, smtp.EnhancedCode{5, 5, 2}, syntax)
		return "", nil, false
	}
	p := parser{s: strings.TrimSpace(rest)}
	var path string
	var err error
	if cmd == "MAIL" {
		path, err = p.parseReversePath()
	} else {
		path, err = p.parsePath()
	}
	if err != nil {
		c.protocolError(501, smtp.EnhancedCode{5, 5, 2}, syntax)
		return "", nil, false
	}
	args, err := parseArgs(p.s)
	if err != nil {
		c.protocolError(501, smtp.EnhancedCode{5, 5, 4}, "Unable to parse "+cmd+" ESMTP parameters")
		return "", nil, false
	}
	return path, args, true
}

// mailParam applies one MAIL FROM parameter, or says what reply refuses it.
func (c *Conn) mailParam(opts *smtp.MailOptions, key, value string) (int, smtp.EnhancedCode, string) {
	bad := smtp.EnhancedCode{5, 5, 4}
	switch key {
	case "SIZE":
		size, err := strconv.ParseInt(value, 10, 64)
		if err != nil || size < 0 {
			return 501, bad, "Unable to parse SIZE as an integer"
		}
		if n := c.srv.cfg.MaxMessageBytes; n > 0 && size > n {
			return 552, smtp.EnhancedCode{5, 3, 4}, "Message too large"
		}
		opts.Size = size
	case "SMTPUTF8":
		if !c.srv.cfg.EnableSMTPUTF8 || value != "" {
			return 504, bad, "SMTPUTF8 is not implemented"
		}
		opts.UTF8 = true
	case "BODY":
		switch b := smtp.BodyType(strings.ToUpper(value)); b {
		case smtp.Body7Bit, smtp.Body8BitMIME:
			opts.Body = b
		default:
			return 501, bad, "Unknown BODY value"
		}
	case "RET":
		if !c.srv.cfg.EnableDSN {
			return 504, bad, "RET is not implemented"
		}
		switch r := smtp.DSNReturn(strings.ToUpper(value)); r {
		case smtp.DSNReturnFull, smtp.DSNReturnHeaders:
			opts.Return = r
		default:
			return 501, bad, "Unknown RET value"
		}
	case "ENVID":
		if !c.srv.cfg.EnableDSN {
			return 504, bad, "ENVID is not implemented"
		}
		v, err := decodeXtext(value)
		if err != nil || v == "" || len(v) > 100 || !isPrintableASCII(v) {
			return 501, bad, "Malformed ENVID parameter value"
		}
		opts.EnvelopeID = v
	case "AUTH":
		// RFC 4954 5: the original submitter, when another server relays.
		v, err := decodeXtext(value)
		if err != nil || v == "" {
			return 501, bad, "Malformed AUTH parameter value"
		}
		if v == "<>" {
			v = ""
		} else {
			p := parser{s: v}
			if v, err = p.parseMailbox(); err != nil || p.s != "" {
				return 501, bad, "Malformed AUTH parameter mailbox"
			}
		}
		opts.Auth = &v
	default:
		return 555, bad, "Unknown MAIL FROM parameter"
	}
	return 0, smtp.EnhancedCode{}, ""
}

func (c *Conn) handleRcpt(arg string) {
	if !c.fromReceived {
		c.protocolError(503, smtp.EnhancedCode{5, 5, 1}, "Missing MAIL FROM command")
		return
	}
	to, args, ok := c.pathAndArgs("RCPT", "TO:", arg)
	if !ok {
		return
	}
	if n := c.srv.cfg.MaxRecipients; n > 0 && c.recipients >= n {
		c.reply(452, smtp.EnhancedCode{4, 5, 3}, fmt.Sprintf("Maximum limit of %d recipients reached", n))
		return
	}
	opts := &smtp.RcptOptions{}
	for key, value := range args {
		if code, ec, msg := c.rcptParam(opts, key, value); code != 0 {
			c.reply(code, ec, msg)
			return
		}
	}
	if err := c.currentSession().Rcpt(to, opts); err != nil {
		c.replyErr(err, 451, smtp.EnhancedCode{4, 0, 0}, "Requested action aborted, try again later")
		return
	}
	c.recipients++
	c.reply(250, smtp.EnhancedCode{2, 0, 0}, fmt.Sprintf("I'll make sure <%s> gets this", to))
}

func (c *Conn) rcptParam(opts *smtp.RcptOptions, key, value string) (int, smtp.EnhancedCode, string) {
	bad := smtp.EnhancedCode{5, 5, 4}
	switch key {
	case "NOTIFY":
		if !c.srv.cfg.EnableDSN {
			return 504, bad, "NOTIFY is not implemented"
		}
		notify, ok := parseNotify(value)
		if !ok {
			return 501, bad, "Malformed NOTIFY parameter value"
		}
		opts.Notify = notify
	case "ORCPT":
		if !c.srv.cfg.EnableDSN {
			return 504, bad, "ORCPT is not implemented"
		}
		typ, addr, err := decodeTypedAddress(value)
		if err != nil || addr == "" {
			return 501, bad, "Malformed ORCPT parameter value"
		}
		opts.OriginalRecipientType = typ
		opts.OriginalRecipient = addr
	default:
		return 555, bad, "Unknown RCPT TO parameter"
	}
	return 0, smtp.EnhancedCode{}, ""
}

// parseNotify reads NOTIFY=NEVER or a set of SUCCESS, FAILURE and DELAY
// (RFC 3461 4.1), each at most once.
func parseNotify(value string) ([]smtp.DSNNotify, bool) {
	var out []smtp.DSNNotify
	seen := map[smtp.DSNNotify]bool{}
	for _, v := range strings.Split(value, ",") {
		n := smtp.DSNNotify(strings.ToUpper(v))
		switch n {
		case smtp.DSNNotifyNever, smtp.DSNNotifySuccess, smtp.DSNNotifyFailure, smtp.DSNNotifyDelayed:
		default:
			return nil, false
		}
		if seen[n] {
			return nil, false
		}
		seen[n] = true
		out = append(out, n)
	}
	if seen[smtp.DSNNotifyNever] && len(out) > 1 {
		return nil, false
	}
	return out, true
}
