package smtpclient

import (
	"errors"
	"fmt"
	"net/textproto"
	"strconv"
	"strings"
	"time"
)

// EnhancedCode is a reply's enhanced status code (RFC 3463), such as
// {5, 1, 1}; the zero value means the reply had none.
type EnhancedCode [3]int

func (e EnhancedCode) String() string { return fmt.Sprintf("%d.%d.%d", e[0], e[1], e[2]) }

// Error is a reply that refused what was asked (4xx, 5xx), or one that
// was not the reply expected. Code, Enhanced and Text are kept apart, as
// the server sent them: what they mean for a message is the caller's
// to decide.
type Error struct {
	Code     int
	Enhanced EnhancedCode
	Text     string // the reply's text, without codes; lines joined by "\n"
}

// Error is the reply as it came: "550 5.1.1 no such user".
func (e *Error) Error() string {
	if e.Enhanced == (EnhancedCode{}) {
		return fmt.Sprintf("%d %s", e.Code, e.Text)
	}
	return fmt.Sprintf("%d %s %s", e.Code, e.Enhanced, e.Text)
}

// Temporary reports a 4xx reply.
func (e *Error) Temporary() bool { return e.Code/100 == 4 }

// reply is one server reply, possibly of several lines.
type reply struct {
	code  int
	lines []string // text of each line, after the code and separator
}

func (r reply) err() *Error {
	e := &Error{Code: r.code}
	var text []string
	for i, l := range r.lines {
		code, rest, ok := enhanced(r.code, l)
		if ok && (i == 0 || code == e.Enhanced) {
			e.Enhanced, l = code, rest
		}
		text = append(text, l)
	}
	e.Text = strings.Join(text, "\n")
	return e
}

// text is the reply as it was sent, lines joined by "\n".
func (r reply) text() string {
	lines := make([]string, len(r.lines))
	for i, l := range r.lines {
		sep := "-"
		if i == len(r.lines)-1 {
			sep = " "
		}
		lines[i] = fmt.Sprintf("%d%s%s", r.code, sep, l)
	}
	return strings.Join(lines, "\n")
}

// expect returns nil when the reply's class is want's (2 for 2xx), and
// the reply as an *Error otherwise.
func (r reply) expect(want int) error {
	if r.code/100 == want {
		return nil
	}
	return r.err()
}

// maxReplyLines bounds what one reply may hold in memory: EHLO answers
// have a line per extension, a few dozen at most.
const maxReplyLines = 256

// readReply reads one reply (RFC 5321 4.2): lines of a three-digit code,
// '-' before every line but the last, and text.
func (c *Conn) readReply() (reply, error) { return c.readReplyWithin(c.cfg.Timeout) }

// readReplyWithin reads a reply that may take d to come.
func (c *Conn) readReplyWithin(d time.Duration) (reply, error) {
	c.arm(d)
	var r reply
	for {
		line, err := c.r.ReadSlice('\n')
		if errors.Is(err, bufioFull) {
			return r, textproto.ProtocolError("reply line too long")
		}
		if err != nil {
			return r, err
		}
		s := strings.TrimRight(string(line), "\r\n")
		if len(s) < 3 || (len(s) > 3 && s[3] != ' ' && s[3] != '-') {
			return r, textproto.ProtocolError("malformed reply: " + strconv.Quote(s))
		}
		code, err := strconv.Atoi(s[:3])
		if err != nil || code < 200 || code > 599 || (r.code != 0 && code != r.code) {
			return r, textproto.ProtocolError("malformed reply: " + strconv.Quote(s))
		}
		r.code = code
		if len(s) > 4 {
			r.lines = append(r.lines, s[4:])
		} else {
			r.lines = append(r.lines, "")
		}
		if len(s) == 3 || s[3] == ' ' {
			return r, nil
		}
		if len(r.lines) == maxReplyLines {
			return r, textproto.ProtocolError("reply of too many lines")
		}
	}
}

// enhanced splits an enhanced status code off the start of a reply's
// text: one whose class is the reply's own ("550 5.1.1 ...").
func enhanced(code int, text string) (EnhancedCode, string, bool) {
	word, rest, _ := strings.Cut(text, " ")
	parts := strings.Split(word, ".")
	if len(parts) != 3 {
		return EnhancedCode{}, text, false
	}
	var e EnhancedCode
	for i, p := range parts {
		n, err := strconv.Atoi(p)
		if err != nil || len(p) > 3 || n < 0 {
			return EnhancedCode{}, text, false
		}
		e[i] = n
	}
	if e[0] != code/100 {
		return EnhancedCode{}, text, false
	}
	return e, rest, true
}
