package smtpd

import (
	"fmt"
	"strconv"
	"strings"
	"unicode/utf8"
)

func (c *Conn) handleGreet(cmd, arg string) {
	domain, _, _ := strings.Cut(arg, " ")
	if domain == "" {
		c.protocolError(cmd, ReplyHelloArg.With(cmd))
		return
	}
	c.helo, c.ehlo = domain, cmd == "EHLO"
	if c.Session() != nil {
		// RFC 5321 4.1.4: a later EHLO resets the state as RSET does.
		c.reset()
	} else {
		sess, err := c.srv.be.NewSession(c)
		if err != nil {
			c.helo = ""
			c.fail(cmd, err)
			return
		}
		c.setSession(sess)
	}
	hello := ReplyHello.With(c.srv.cfg.Domain)
	if cmd == "HELO" {
		c.reply(hello)
		return
	}
	caps := []string{"PIPELINING", "8BITMIME", "ENHANCEDSTATUSCODES"}
	if _, isTLS := c.TLSConnectionState(); c.ep.tls != nil && !isTLS {
		caps = append(caps, "STARTTLS")
	}
	if mechs := c.Session().AuthMechanisms(); len(mechs) > 0 {
		caps = append(caps, "AUTH "+strings.Join(mechs, " "))
	}
	caps = append(caps, "SMTPUTF8", "DSN")
	if n := c.srv.limits.Load().MaxMessageBytes; n > 0 {
		caps = append(caps, fmt.Sprintf("SIZE %d", n))
	} else {
		caps = append(caps, "SIZE")
	}
	if n := c.srv.limits.Load().MaxRecipients; n > 0 {
		caps = append(caps, fmt.Sprintf("LIMITS RCPTMAX=%d", n))
	}
	c.reply(hello, caps...)
}

func (c *Conn) handleMail(arg string) {
	if c.Session() == nil {
		c.protocolError("MAIL", ReplyHelloFirst)
		return
	}
	if c.fromReceived {
		c.protocolError("MAIL", ReplyNestedMail)
		return
	}
	from, args, ok := c.pathAndArgs("MAIL", "FROM", arg)
	if !ok {
		return
	}
	var opts MailOptions
	for _, a := range args {
		if r := mailParam(&opts, a[0], a[1], c.srv.limits.Load().MaxMessageBytes); r != nil {
			c.send("MAIL", r, nil)
			return
		}
	}
	if !opts.UTF8 && !isASCII(from) {
		c.send("MAIL", ReplyNeedSMTPUTF8, nil)
		return
	}
	if err := c.Session().Mail(from, opts); err != nil {
		r := c.srv.cfg.Hooks.ReplyFor("MAIL", err)
		// A client that keeps trying a MAIL refused for good (no AUTH, a
		// sender it does not own) is told to go like one that keeps
		// sending bad commands. A temporary refusal (a rate limit) may be
		// retried as often as the client likes.
		if r.Code/100 == 5 {
			if c.errors++; c.errors > c.srv.cfg.MaxErrors {
				c.send("MAIL", ReplyTooManyErrors, err)
				c.quit = true
				return
			}
		}
		c.send("MAIL", r, err)
		return
	}
	c.fromReceived = true
	c.utf8 = opts.UTF8
	c.reply(ReplySenderOK)
}

// pathAndArgs reads the argument of MAIL ("FROM:<path> params") or RCPT
// ("TO:<path> params"); on a syntax error it has replied already.
func (c *Conn) pathAndArgs(cmd, prefix, arg string) (string, [][2]string, bool) {
	rest, ok := cutPrefixFold(arg, prefix+":")
	if !ok {
		c.protocolError(cmd, ReplyPathSyntax.With(cmd+" "+prefix))
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
	if err != nil || !utf8.ValidString(path) {
		c.protocolError(cmd, ReplyPathSyntax.With(cmd+" "+prefix))
		return "", nil, false
	}
	args, bad := parseArgs(p.s)
	if bad != "" {
		c.protocolError(cmd, ReplyParamSyntax.With(bad))
		return "", nil, false
	}
	return path, args, true
}

// mailParam applies one MAIL FROM parameter, or says what reply refuses it.
func mailParam(opts *MailOptions, key, value string, maxSize int64) *Reply {
	switch key {
	case "SIZE":
		size, err := strconv.ParseInt(value, 10, 64)
		if err != nil || size < 0 {
			return ReplyParamSyntax.With(key)
		}
		if maxSize > 0 && size > maxSize {
			return ReplyTooLarge
		}
		opts.Size = size
	case "SMTPUTF8":
		if value != "" {
			return ReplyParamSyntax.With(key)
		}
		opts.UTF8 = true
	case "BODY":
		switch b := strings.ToUpper(value); b {
		case "7BIT", "8BITMIME":
			opts.Body = b
		default:
			return ReplyParamSyntax.With(key)
		}
	case "RET":
		switch r := strings.ToUpper(value); r {
		case "FULL", "HDRS":
			opts.Return = r
		default:
			return ReplyParamSyntax.With(key)
		}
	case "ENVID":
		v, err := decodeXtext(value)
		if err != nil || v == "" || len(v) > 100 || !isPrintableASCII(v) {
			return ReplyParamSyntax.With(key)
		}
		opts.EnvelopeID = v
	case "AUTH":
		// RFC 4954 5: the original submitter, when another server relays.
		v, err := decodeXtext(value)
		if err != nil || v == "" {
			return ReplyParamSyntax.With(key)
		}
		if v == "<>" {
			v = ""
		} else {
			p := parser{s: v}
			if v, err = p.parseMailbox(); err != nil || p.s != "" {
				return ReplyParamSyntax.With(key)
			}
		}
		opts.Auth = &v
	default:
		return ReplyParamUnknown.With("MAIL FROM", key)
	}
	return nil
}

func (c *Conn) handleRcpt(arg string) {
	if !c.fromReceived {
		c.protocolError("RCPT", ReplyNeedMail)
		return
	}
	to, args, ok := c.pathAndArgs("RCPT", "TO", arg)
	if !ok {
		return
	}
	if n := c.srv.limits.Load().MaxRecipients; n > 0 && c.recipients >= n {
		c.send("RCPT", ReplyTooManyRcpts.With(n), nil)
		return
	}
	var opts RcptOptions
	for _, a := range args {
		if r := rcptParam(&opts, a[0], a[1]); r != nil {
			c.send("RCPT", r, nil)
			return
		}
	}
	if !c.utf8 && !isASCII(to) {
		c.send("RCPT", ReplyNeedSMTPUTF8, nil)
		return
	}
	if err := c.Session().Rcpt(to, opts); err != nil {
		c.fail("RCPT", err)
		return
	}
	c.recipients++
	c.reply(ReplyRecipientOK)
}

func rcptParam(opts *RcptOptions, key, value string) *Reply {
	switch key {
	case "NOTIFY":
		notify, ok := parseNotify(value)
		if !ok {
			return ReplyParamSyntax.With(key)
		}
		opts.Notify = notify
	case "ORCPT":
		typ, addr, err := decodeTypedAddress(value)
		if err != nil || addr == "" {
			return ReplyParamSyntax.With(key)
		}
		opts.ORcptType, opts.ORcpt = typ, addr
	default:
		return ReplyParamUnknown.With("RCPT TO", key)
	}
	return nil
}

// parseNotify reads NOTIFY=NEVER or a set of SUCCESS, FAILURE and DELAY
// (RFC 3461 4.1), each at most once.
func parseNotify(value string) ([]string, bool) {
	var out []string
	seen := map[string]bool{}
	for _, v := range strings.Split(value, ",") {
		n := strings.ToUpper(v)
		switch n {
		case "NEVER", "SUCCESS", "FAILURE", "DELAY":
		default:
			return nil, false
		}
		if seen[n] {
			return nil, false
		}
		seen[n] = true
		out = append(out, n)
	}
	if seen["NEVER"] && len(out) > 1 {
		return nil, false
	}
	return out, true
}

func isASCII(s string) bool {
	for i := 0; i < len(s); i++ {
		if s[i] >= 0x80 {
			return false
		}
	}
	return true
}
