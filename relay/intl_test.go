package relay

import (
	"regexp"
	"strings"
	"testing"

	"github.com/emersion/go-sasl"
	"github.com/emersion/go-smtp"
	"golang.org/x/crypto/bcrypt"

	"github.com/smarthost/smarthost/policy"
	"github.com/smarthost/smarthost/ratelimit"
)

// zoeDirectory has alice and a user who owns a UTF-8 address.
func zoeDirectory(t *testing.T) policy.Directory {
	t.Helper()
	h, _ := bcrypt.GenerateFromPassword([]byte("zoe-pw"), bcrypt.MinCost)
	a, _ := bcrypt.GenerateFromPassword([]byte("alice-pw"), bcrypt.MinCost)
	s, err := policy.ParseStatic([]byte(`users:
  zoe:
    password_hash: "` + string(h) + `"
    addresses: ["zoë@example.com"]
  alice:
    password_hash: "` + string(a) + `"
    addresses: ["alice@example.com"]
`))
	if err != nil {
		t.Fatal(err)
	}
	return s
}

// SMTPUTF8 is kept with the message, with whether it is needed, and ORCPT
// keeps its type; a UTF-8 address without SMTPUTF8 is refused (RFC 6531).
func TestSMTPUTF8Kept(t *testing.T) {
	e := newEnv(t, testOpts{dir: zoeDirectory(t)})
	c := e.client(t, "zoe", "zoe-pw")
	wantReply(t, c.Mail("zoë@example.com", nil), 553, "5.6.7", "Must declare SMTPUTF8 to send a UTF-8 address")
	if err := c.Mail("zoë@example.com", &smtp.MailOptions{UTF8: true}); err != nil {
		t.Fatal(err)
	}
	if err := c.Rcpt("élise@exemple.fr", &smtp.RcptOptions{OriginalRecipient: "élise@exemple.fr", OriginalRecipientType: smtp.DSNAddressTypeUTF8}); err != nil {
		t.Fatal(err)
	}
	w, err := c.Data()
	if err != nil {
		t.Fatal(err)
	}
	w.Write([]byte("From: Zoë <zoë@example.com>\r\nSubject: héllo\r\n\r\nbody\r\n"))
	if err := w.Close(); err != nil {
		t.Fatal(err)
	}
	// Asked for, not needed: ASCII throughout.
	c = e.client(t, "alice", "alice-pw")
	if err := c.Mail("alice@example.com", &smtp.MailOptions{UTF8: true}); err != nil {
		t.Fatal(err)
	}
	c.Rcpt("b@example.org", nil)
	w, _ = c.Data()
	w.Write([]byte(goodMsg))
	if err := w.Close(); err != nil {
		t.Fatal(err)
	}
	var needs, asked int
	for _, m := range e.queued(t) {
		switch m.From {
		case "zoë@example.com":
			needs++
			r := m.Recipients[0]
			if !m.SMTPUTF8 || !m.UTF8 || r.ORcptType != "utf-8" || r.ORcpt != "élise@exemple.fr" || !strings.Contains(m.Prepend, "with UTF8SMTPSA id") {
				t.Errorf("UTF-8 message kept as %+v", m)
			}
		case "alice@example.com":
			asked++
			if !m.SMTPUTF8 || m.UTF8 {
				t.Errorf("ASCII message with SMTPUTF8 kept as %+v", m)
			}
		}
	}
	if needs != 1 || asked != 1 {
		t.Fatalf("queued %d and %d", needs, asked)
	}
}

// A malformed AUTH response gets 501 5.5.2 (RFC 4954 4) and counts as a
// failed login: with two failures allowed, the third try is locked out.
func TestMalformedAuthCounts(t *testing.T) {
	e := newEnv(t, testOpts{quotas: quotas(ratelimit.NewMemory(nil), false)})
	for _, tc := range []struct{ send, want string }{
		{"AUTH PLAIN !!notbase64!!\r\n", "501 5.5.2 Malformed authentication response"},
		{"AUTH PLAIN " + "YWxpY2UAYWxpY2UtcHc=" + "\r\n", "501 5.5.2 Malformed authentication response"}, // "alice\0alice-pw": two parts
	} {
		d := e.raw(t)
		d.send("EHLO c.test\r\n")
		d.expect("250 ")
		d.send(tc.send)
		d.expect(tc.want)
	}
	c := e.client(t, "", "")
	wantPrefix(t, c.Auth(sasl.NewPlainClient("", "alice", "alice-pw")), 454, smtp.EnhancedCode{4, 7, 0}, "Too many failed authentications")

	// In a LOGIN exchange too, and "*" cancels without counting.
	e = newEnv(t, testOpts{quotas: quotas(ratelimit.NewMemory(nil), false)})
	d := e.raw(t)
	d.send("EHLO c.test\r\nAUTH LOGIN\r\n")
	d.expect("250 ")
	d.expect("334 VXNlcm5hbWU6")
	d.send("*\r\n")
	d.expect("501 5.0.0 Authentication cancelled")
	d.send("AUTH LOGIN\r\n")
	d.expect("334 ")
	d.send("YWxpY2U=\r\n")
	d.expect("334 UGFzc3dvcmQ6")
	d.send("%%%\r\n")
	d.expect("501 5.5.2 Malformed authentication response")
	c = e.client(t, "alice", "alice-pw") // one failure: still allowed
	c.Close()
}

// Received: names the protocol (RFC 3848, 6531) and the TLS in use, and
// with headers.received: anonymous leaves the client out.
func TestReceivedField(t *testing.T) {
	for _, tc := range []struct {
		received string
		want     *regexp.Regexp
	}{
		{ReceivedFull, regexp.MustCompile(`^Received: from localhost \(\[127\.0\.0\.1\]\)\r\n\t\(using TLSv1\.3 with cipher TLS_[A-Z0-9_]+\)\r\n\tby relay\.test \(smarthost\) with ESMTPSA id [0-9A-F]{20}\r\n\tfor <b@example\.org>;\r\n\t[A-Z][a-z]{2}, `)},
		{ReceivedAnonymous, regexp.MustCompile(`^Received: by relay\.test \(smarthost\) with ESMTPSA id [0-9A-F]{20}\r\n\t\(using TLSv1\.3 with cipher TLS_[A-Z0-9_]+\)\r\n\tfor <b@example\.org>;\r\n\t`)},
	} {
		e := newEnv(t, testOpts{received: tc.received})
		c := e.client(t, "alice", "alice-pw")
		if err := send(c, "alice@example.com", []string{"b@example.org"}, goodMsg); err != nil {
			t.Fatal(err)
		}
		m := e.queued(t)[0]
		if !tc.want.MatchString(m.Prepend) {
			t.Errorf("%s: Received field\n%q\ndoes not match %s", tc.received, m.Prepend, tc.want)
		}
		if tc.received == ReceivedAnonymous && strings.Contains(m.Prepend, "127.0.0.1") {
			t.Errorf("anonymous Received: names the client: %q", m.Prepend)
		}
	}
}
