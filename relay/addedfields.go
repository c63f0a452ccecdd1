package relay

// The fields a submission server adds to a message (RFC 6409 section 8):
// Received:, and Message-ID: and Date: when the client left them out.

import (
	"bytes"
	"crypto/tls"
	"fmt"
	"net/mail"
	"strings"
	"time"

	"github.com/smarthost/smarthost/relay/queue"
)

// addedFields are the fields a submission server adds (RFC 6409 section 8),
// and their names: always a Received: trace field, and Message-ID: and Date:
// when missing.
func (s *session) addedFields(id string, h mail.Header, peer bool) ([]byte, []string) {
	now := time.Now()
	var b bytes.Buffer
	b.WriteString(s.received(id, now))
	names := []string{"Received"}
	if peer {
		return b.Bytes(), names
	}
	if h.Get("Message-Id") == "" {
		fmt.Fprintf(&b, "Message-ID: <%s@%s>\r\n", id, s.conn.ServerDomain())
		names = append(names, "Message-ID")
	}
	if h.Get("Date") == "" {
		fmt.Fprintf(&b, "Date: %s\r\n", now.Format(time.RFC1123Z))
		names = append(names, "Date")
	}
	return b.Bytes(), names
}

// received is our Received: field, as Postfix writes it: who the client
// said it was and its address (unless Deps.Received is anonymous, for a
// gateway whose internal host names must not leak), the TLS version and
// cipher, and the protocol by the names of RFC 3848 and RFC 6531 (ESMTPSA:
// ESMTP with TLS and AUTH; UTF8SMTPSA, the same with SMTPUTF8).
func (s *session) received(id string, now time.Time) string {
	var b strings.Builder
	b.WriteString("Received:")
	tlsNote := ""
	if s.tls {
		tlsNote = fmt.Sprintf("(using %s with cipher %s)", queue.TLSVersion(s.tlsVersion), tls.CipherSuiteName(s.tlsCipher))
	}
	if s.deps.Received != ReceivedAnonymous {
		fmt.Fprintf(&b, " from %s ([%s])\r\n\t", sanitizeHelo(s.helo), s.client.Addr)
		if tlsNote != "" {
			b.WriteString(tlsNote + "\r\n\t")
			tlsNote = ""
		}
	} else {
		b.WriteString(" ")
	}
	fmt.Fprintf(&b, "by %s (smarthost) with %s id %s", s.conn.ServerDomain(), s.protocol(), id)
	if tlsNote != "" {
		b.WriteString("\r\n\t" + tlsNote)
	}
	if len(s.rcpts) == 1 {
		fmt.Fprintf(&b, "\r\n\tfor <%s>", s.rcpts[0])
	}
	fmt.Fprintf(&b, ";\r\n\t%s\r\n", now.Format(time.RFC1123Z))
	return b.String()
}

// protocol is the "with" of the Received: field (RFC 3848, RFC 6531 3.7.3).
func (s *session) protocol() string {
	p := "ESMTP"
	switch {
	case s.utf8:
		p = "UTF8SMTP"
	case !s.conn.ESMTP():
		return "SMTP"
	}
	if s.tls {
		p += "S"
	}
	if s.client.User != nil {
		p += "A"
	}
	return p
}

// needsUTF8 reports whether a message sent with SMTPUTF8 really needs it:
// a UTF-8 address, or UTF-8 in its header (RFC 6532). One that does not can
// go to an upstream without SMTPUTF8, as Postfix delivers it.
func needsUTF8(from string, to []string, header, added []byte) bool {
	ascii := func(b []byte) bool {
		for _, c := range b {
			if c >= 0x80 {
				return false
			}
		}
		return true
	}
	if !ascii([]byte(from)) || !ascii(header) || !ascii(added) {
		return true
	}
	for _, t := range to {
		if !ascii([]byte(t)) {
			return true
		}
	}
	return false
}

// sanitizeHelo keeps a client's EHLO argument from forging trace structure.
func sanitizeHelo(h string) string {
	h = strings.Map(func(r rune) rune {
		if r < 0x21 || r > 0x7e || r == '(' || r == ')' || r == ';' {
			return '_'
		}
		return r
	}, h)
	if len(h) > 255 {
		h = h[:255]
	}
	return h
}
