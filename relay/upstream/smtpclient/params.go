package smtpclient

import (
	"errors"
	"fmt"
	"slices"
	"strings"
	"unicode/utf8"
)

// Envelope is one transaction: the sender, the recipients, and the
// parameters of MAIL and RCPT.
type Envelope struct {
	From string
	// Size is the message's exact size in bytes: SIZE= (RFC 1870) to a
	// server that has SIZE, and the chunk's length with BDAT.
	Size int64
	// UTF8 asks for SMTPUTF8 (RFC 6531); an error if not offered.
	UTF8 bool
	// Ret and EnvID are the DSN parameters of MAIL (RFC 3461), sent to a
	// server that has DSN: Ret is "FULL", "HDRS" or "".
	Ret   string
	EnvID string
	Rcpts []Rcpt
}

// Rcpt is one recipient and its DSN parameters.
type Rcpt struct {
	Addr   string
	Notify []string // NEVER, or some of SUCCESS, FAILURE, DELAY
	// ORcpt is the original recipient; ORcptUTF8 sends it as type utf-8
	// (RFC 6533) rather than rfc822.
	ORcpt     string
	ORcptUTF8 bool
}

// ErrParam says a command could not be sent as asked: an address or a
// parameter that no server could take. It is about the message, not the
// session, which stays usable.
var ErrParam = errors.New("smtpclient: cannot be sent")

func paramErr(format string, args ...any) error {
	return fmt.Errorf("%w: %s", ErrParam, fmt.Sprintf(format, args...))
}

// mailCommand is MAIL FROM with the parameters the server takes.
func (c *Conn) mailCommand(e *Envelope) (string, error) {
	if err := checkAddr(e.From); err != nil {
		return "", err
	}
	var b strings.Builder
	fmt.Fprintf(&b, "MAIL FROM:<%s>", e.From)
	if ok, _ := c.Extension("8BITMIME"); ok {
		b.WriteString(" BODY=8BITMIME")
	}
	if ok, _ := c.Extension("SIZE"); ok && e.Size > 0 {
		fmt.Fprintf(&b, " SIZE=%d", e.Size)
	}
	if e.UTF8 {
		if ok, _ := c.Extension("SMTPUTF8"); !ok {
			return "", paramErr("SMTPUTF8 is not offered")
		}
		b.WriteString(" SMTPUTF8")
	}
	if ok, _ := c.Extension("DSN"); ok {
		switch e.Ret {
		case "":
		case "FULL", "HDRS":
			b.WriteString(" RET=" + e.Ret)
		default:
			return "", paramErr("RET=%q", e.Ret)
		}
		if e.EnvID != "" {
			if !printable(e.EnvID) {
				return "", paramErr("ENVID=%q is not printable ASCII", e.EnvID)
			}
			b.WriteString(" ENVID=" + xtext(e.EnvID))
		}
	}
	return b.String(), nil
}

// rcptCommand is RCPT TO with the DSN parameters, to a server with DSN.
func (c *Conn) rcptCommand(r *Rcpt) (string, error) {
	if err := checkAddr(r.Addr); err != nil {
		return "", err
	}
	var b strings.Builder
	fmt.Fprintf(&b, "RCPT TO:<%s>", r.Addr)
	if ok, _ := c.Extension("DSN"); !ok {
		return b.String(), nil
	}
	if len(r.Notify) > 0 {
		if err := checkNotify(r.Notify); err != nil {
			return "", err
		}
		b.WriteString(" NOTIFY=" + strings.Join(r.Notify, ","))
	}
	switch {
	case r.ORcpt == "":
	case r.ORcptUTF8:
		// RFC 6533 3: unitext to a server with SMTPUTF8, its 7-bit
		// form to one without.
		utf8ok, _ := c.Extension("SMTPUTF8")
		b.WriteString(" ORCPT=utf-8;" + utf8AddrText(r.ORcpt, utf8ok))
	case !printable(r.ORcpt):
		return "", paramErr("ORCPT=rfc822;%q is not printable ASCII", r.ORcpt)
	default:
		b.WriteString(" ORCPT=rfc822;" + xtext(r.ORcpt))
	}
	return b.String(), nil
}

// checkAddr refuses what would end the command line or the address early.
func checkAddr(a string) error {
	if strings.ContainsFunc(a, func(r rune) bool { return r < ' ' || r == 0x7f || r == '<' || r == '>' }) ||
		!utf8.ValidString(a) {
		return paramErr("address %q", a)
	}
	return nil
}

func checkNotify(n []string) error {
	for i, v := range n {
		if !slices.Contains([]string{"NEVER", "SUCCESS", "FAILURE", "DELAY"}, v) || slices.Contains(n[:i], v) ||
			(v == "NEVER" && len(n) > 1) {
			return paramErr("NOTIFY=%s", strings.Join(n, ","))
		}
	}
	return nil
}

func printable(s string) bool {
	return !strings.ContainsFunc(s, func(r rune) bool { return r < ' ' || r > '~' })
}

// xtext encodes s (printable ASCII) as RFC 3461 4 says: '+', '=' and
// space as "+XX".
func xtext(s string) string {
	var b strings.Builder
	for i := 0; i < len(s); i++ {
		if ch := s[i]; ch > ' ' && ch <= '~' && ch != '+' && ch != '=' {
			b.WriteByte(ch)
		} else {
			fmt.Fprintf(&b, "+%02X", ch)
		}
	}
	return b.String()
}

// utf8AddrText encodes a UTF-8 address as RFC 6533 3 says: utf-8-addr-
// unitext (UTF-8 as it is) when unitext, else utf-8-addr-xtext; what
// neither takes as it is goes as "\x{HEX}".
func utf8AddrText(s string, unitext bool) string {
	var b strings.Builder
	for _, r := range s {
		switch {
		case r > ' ' && r <= '~' && r != '+' && r != '=' && r != '\\', r > 0x7f && unitext:
			b.WriteRune(r)
		default:
			fmt.Fprintf(&b, `\x{%X}`, r)
		}
	}
	return b.String()
}
