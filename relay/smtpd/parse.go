package smtpd

import (
	"errors"
	"fmt"
	"strconv"
	"strings"
	"unicode/utf8"
)

// cutPrefixFold is strings.CutPrefix, ignoring case.
func cutPrefixFold(s, prefix string) (string, bool) {
	if len(s) < len(prefix) || !strings.EqualFold(s[:len(prefix)], prefix) {
		return "", false
	}
	return s[len(prefix):], true
}

// parseCmd splits a command line into its verb, upper-cased, and the rest.
// A verb is letters only (SMTP's are four, and STARTTLS).
func parseCmd(line string) (cmd, arg string, err error) {
	cmd, arg, _ = strings.Cut(line, " ")
	if cmd == "" || len(cmd) > 16 {
		return "", "", fmt.Errorf("bad command %q", cmd)
	}
	for i := 0; i < len(cmd); i++ {
		if c := cmd[i] | 0x20; c < 'a' || c > 'z' {
			return "", "", fmt.Errorf("bad command %q", cmd)
		}
	}
	return strings.ToUpper(cmd), strings.TrimSpace(arg), nil
}

// parseArgs reads the ESMTP parameters after a path: KEY or KEY=VALUE,
// keys upper-cased, each at most once, in order. bad names the parameter
// that is malformed or given twice.
func parseArgs(s string) (args [][2]string, bad string) {
	seen := map[string]bool{}
	for _, a := range strings.Fields(s) {
		k, v, _ := strings.Cut(a, "=")
		k = strings.ToUpper(k)
		if k == "" || strings.Contains(v, "=") {
			return nil, "ESMTP"
		}
		if seen[k] {
			return nil, k
		}
		seen[k] = true
		args = append(args, [2]string{k, v})
	}
	return args, ""
}

// parser reads the paths of MAIL and RCPT (RFC 5321 4.1.2). It is loose on
// purpose about what a mailbox may hold: the policy package parses every
// address strictly, once, and refuses what it does not understand.
type parser struct {
	s string
}

func (p *parser) accept(ch byte) bool {
	if len(p.s) == 0 || p.s[0] != ch {
		return false
	}
	p.s = p.s[1:]
	return true
}

func (p *parser) parseReversePath() (string, error) {
	if rest, ok := strings.CutPrefix(p.s, "<>"); ok {
		p.s = rest
		return "", nil
	}
	return p.parsePath()
}

func (p *parser) parsePath() (string, error) {
	bracket := p.accept('<')
	if p.accept('@') {
		// A source route ("@a,@b:") is ignored, as RFC 5321 C says.
		i := strings.IndexByte(p.s, ':')
		if i < 0 {
			return "", errors.New("malformed source route")
		}
		p.s = p.s[i+1:]
	}
	mbox, err := p.parseMailbox()
	if err != nil {
		return "", err
	}
	if bracket && !p.accept('>') {
		return "", errors.New("missing '>'")
	}
	return mbox, nil
}

func (p *parser) parseMailbox() (string, error) {
	local, err := p.parseLocalPart()
	if err != nil {
		return "", err
	}
	if local == "" || !p.accept('@') {
		return "", errors.New("malformed mailbox")
	}
	end := strings.IndexAny(p.s, " \t>")
	if end < 0 {
		end = len(p.s)
	}
	domain := p.s[:end]
	p.s = p.s[end:]
	if domain == "" {
		return "", errors.New("empty domain")
	}
	return local + "@" + domain, nil
}

func (p *parser) parseLocalPart() (string, error) {
	var sb strings.Builder
	if p.accept('"') {
		for len(p.s) > 0 {
			ch := p.s[0]
			p.s = p.s[1:]
			switch ch {
			case '"':
				return sb.String(), nil
			case '\\':
				if len(p.s) == 0 {
					return "", errors.New("malformed quoted-string")
				}
				ch = p.s[0]
				p.s = p.s[1:]
			}
			sb.WriteByte(ch)
		}
		return "", errors.New("unterminated quoted-string")
	}
	for len(p.s) > 0 {
		switch ch := p.s[0]; ch {
		case '@':
			return sb.String(), nil
		case '(', ')', '<', '>', '[', ']', ':', ';', '\\', ',', '"', ' ', '\t':
			return "", errors.New("malformed dot-string")
		default:
			sb.WriteByte(ch)
			p.s = p.s[1:]
		}
	}
	return sb.String(), nil
}

// decodeXtext undoes RFC 3461 4 xtext: "+" and two hex digits for a byte;
// every other character printable ASCII other than "+" and "=".
func decodeXtext(s string) (string, error) {
	var b strings.Builder
	for i := 0; i < len(s); i++ {
		ch := s[i]
		switch {
		case ch == '+':
			if i+3 > len(s) {
				return "", errors.New("incomplete hexchar")
			}
			v, err := strconv.ParseUint(s[i+1:i+3], 16, 8)
			if err != nil {
				return "", errors.New("bad hexchar")
			}
			b.WriteByte(byte(v))
			i += 2
		case ch < '!' || ch > '~' || ch == '=':
			return "", errors.New("bad xtext character")
		default:
			b.WriteByte(ch)
		}
	}
	return b.String(), nil
}

// decodeUTF8AddrXtext undoes RFC 6533 utf-8-addr-xtext and -unitext:
// UTF-8 as is, and "\x{HEX}" for a code point; no controls, space, "+",
// "=" or other "\".
func decodeUTF8AddrXtext(s string) (string, error) {
	var b strings.Builder
	for len(s) > 0 {
		if rest, ok := strings.CutPrefix(s, `\x{`); ok {
			hex, after, ok := strings.Cut(rest, "}")
			if !ok || len(hex) < 2 || len(hex) > 6 {
				return "", errors.New("bad escape")
			}
			v, err := strconv.ParseUint(hex, 16, 21)
			if err != nil || !utf8.ValidRune(rune(v)) || v == 0 {
				return "", errors.New("bad escape")
			}
			b.WriteRune(rune(v))
			s = after
			continue
		}
		r, n := utf8.DecodeRuneInString(s)
		if r == utf8.RuneError || r <= ' ' || r == 0x7f || r == '+' || r == '=' || r == '\\' {
			return "", errors.New("bad utf-8-addr-xtext character")
		}
		b.WriteRune(r)
		s = s[n:]
	}
	return b.String(), nil
}

// decodeTypedAddress reads an ORCPT value: "rfc822;" xtext, or "utf-8;"
// utf-8-addr-xtext or -unitext (RFC 6533 3). The type comes back in
// lower case.
func decodeTypedAddress(val string) (string, string, error) {
	typ, addr, ok := strings.Cut(val, ";")
	if !ok || typ == "" || addr == "" {
		return "", "", errors.New("bad typed address")
	}
	var err error
	switch t := strings.ToLower(typ); t {
	case "rfc822":
		addr, err = decodeXtext(addr)
		if err == nil && !isPrintableASCII(addr) {
			err = errors.New("not printable ASCII")
		}
		return t, addr, err
	case "utf-8":
		addr, err = decodeUTF8AddrXtext(addr)
		return t, addr, err
	}
	return "", "", fmt.Errorf("unknown address type %q", typ)
}

func isPrintableASCII(s string) bool {
	for i := 0; i < len(s); i++ {
		if s[i] < ' ' || s[i] > '~' {
			return false
		}
	}
	return true
}
