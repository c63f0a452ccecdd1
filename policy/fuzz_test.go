package policy

import (
	"net/mail"
	"strings"
	"testing"
)

func FuzzSplitAddress(f *testing.F) {
	for _, s := range []string{"a@example.com", "A@Bücher.Example", "u%x@y.com", `"a b"@c.d`, "@a:b@c.d", "a@[1.2.3.4]", "a@b.c.", "a@xn--bcher-kva.example", "\u202e@x.y"} {
		f.Add(s)
	}
	f.Fuzz(func(t *testing.T, addr string) {
		local, domain, ok := SplitAddress(addr)
		if !ok {
			return
		}
		if strings.ContainsAny(local, "@%!\"\\ \r\n\x00") || local == "" {
			t.Fatalf("local part %q of %q", local, addr)
		}
		for _, r := range domain {
			if !(r >= 'a' && r <= 'z' || r >= '0' && r <= '9' || r == '-' || r == '.') {
				t.Fatalf("domain %q of %q is not lower-case A-labels", domain, addr)
			}
		}
		// Parsing is stable: the normal form parses to itself.
		l2, d2, ok2 := SplitAddress(local + "@" + domain)
		if !ok2 || l2 != local || d2 != domain {
			t.Fatalf("%q -> %q@%q -> %q@%q %v", addr, local, domain, l2, d2, ok2)
		}
	})
}

// FuzzCheckHeader: whatever header text a client sends, a message passes
// only if every From: and Sender: address is the user's own.
func FuzzCheckHeader(f *testing.F) {
	for _, s := range []string{
		"From: alice@example.com\r\n",
		"From: \"ceo@example.com\" <alice@example.com>\r\n",
		"From: a@example.com, b@example.com\r\nSender: alice@example.com\r\n",
		"From: team: alice@example.com;\r\n",
		"From: =?UTF-8?Q?ceo=40example.com?= <alice@example.com>\r\n",
		"From: alice@example.com (comment)\r\nFrom: x@y.z\r\n",
	} {
		f.Add(s)
	}
	u := &User{Name: "alice", Addresses: []string{"alice@example.com", "*@app.example.com"}}
	p := New(Config{EnforceHeaderFrom: true}, nil)
	f.Fuzz(func(t *testing.T, hdr string) {
		m, err := mail.ReadMessage(strings.NewReader(hdr + "\r\n"))
		if err != nil {
			return
		}
		if p.CheckHeader(Client{User: u}, m.Header) != nil {
			return
		}
		for _, field := range []string{"From", "Sender"} {
			for _, v := range m.Header[field] {
				list, err := mail.ParseAddressList(v)
				if err != nil {
					t.Fatalf("passed with an unparsable %s: %q", field, v)
				}
				for _, a := range list {
					if !u.Owns(a.Address) {
						t.Fatalf("passed with %s %q", field, a.Address)
					}
				}
			}
		}
	})
}
