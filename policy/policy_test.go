package policy

import (
	"context"
	"errors"
	"net/mail"
	"net/netip"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"golang.org/x/crypto/bcrypt"
)

func TestSplitAddressRefusesTricks(t *testing.T) {
	for _, a := range []string{
		"", "noat", "@example.com", "user@", "a@b@example.com", "user%evil.org@example.com",
		"evil.org!user@example.com", `"a@b"@example.com`, "user@exa mple.com", "user@.example.com",
		"user@example..com", "user@example.com.", "u@[1.2.3.4", "user@exam_ple.com", "us\x00er@example.com",
		"b@[127.0.0.1]", "b@[IPv6:::1]", "@a:b@example.com", "a b@example.com", "a\u00a0b@example.com", "b@localhost",
		"a\u202eb@example.com", "x@ex\u200bample.com",
	} {
		if l, d, ok := SplitAddress(a); ok {
			t.Errorf("SplitAddress(%q) = %q, %q; want refusal", a, l, d)
		}
	}
	for a, want := range map[string]string{"Bob@Example.COM": "example.com", "b.c+tag@mail.example.org": "mail.example.org",
		"ü@bücher.example": "xn--bcher-kva.example", "x@BÜCHER.example": "xn--bcher-kva.example", "x@xn--bcher-kva.example": "xn--bcher-kva.example"} {
		if _, d, ok := SplitAddress(a); !ok || d != want {
			t.Errorf("SplitAddress(%q) domain %q %v, want %q", a, d, ok, want)
		}
	}
}

func TestOwns(t *testing.T) {
	u := &User{Name: "alice", Addresses: []string{"alice@example.com", "*@app.example.com"}}
	for a, want := range map[string]bool{
		"alice@example.com": true, "ALICE@EXAMPLE.COM": true, "x@app.example.com": true, "x@APP.example.com": true,
		"bob@example.com": false, "alice@example.org": false, "x@sub.app.example.com": false,
		"alice@example.com.evil.org": false, "*@app.example.com": true, "": false, "alice%x@example.com": false,
		"alice@\u0435xample.com": false, // Cyrillic е: a look-alike domain is another domain
		"\u0430lice@example.com": false, // Cyrillic а in the local part
		"alice@EXAMPLE.com":      true, "x@APP.EXAMPLE.COM": true,
	} {
		if got := u.Owns(a); got != want {
			t.Errorf("Owns(%q) = %v, want %v", a, got, want)
		}
	}
}

func FuzzOwns(f *testing.F) {
	for _, s := range []string{"alice@example.com", "x@app.example.com", "a@b@app.example.com", "@app.example.com"} {
		f.Add(s)
	}
	u := &User{Addresses: []string{"alice@example.com", "*@app.example.com"}}
	f.Fuzz(func(t *testing.T, a string) {
		if !u.Owns(a) {
			return
		}
		// Whatever is owned must be at one of the two domains, with a
		// plain local part.
		l, d, ok := SplitAddress(a)
		if !ok || (d != "example.com" && d != "app.example.com") || strings.ContainsAny(l, "@%!\"") {
			t.Fatalf("Owns(%q) with local %q domain %q", a, l, d)
		}
		if d == "example.com" && !strings.EqualFold(l, "alice") {
			t.Fatalf("Owns(%q)", a)
		}
	})
}

func staticDir(t *testing.T) *Static {
	h, _ := bcrypt.GenerateFromPassword([]byte("pässwörd-€"), bcrypt.MinCost)
	s, err := ParseStatic([]byte("users:\n  Carol:\n    password_hash: \"" + string(h) + "\"\n    addresses: [carol@example.com]\n    class: bulk\n"))
	if err != nil {
		t.Fatal(err)
	}
	return s
}

func TestStatic(t *testing.T) {
	s := staticDir(t)
	u, err := s.Authenticate(context.Background(), "carol", "pässwörd-€")
	if err != nil || u.Name != "carol" || u.Class != "bulk" || !u.Owns("carol@example.com") {
		t.Fatalf("good login: %+v %v", u, err)
	}
	if u, err := s.Authenticate(context.Background(), "CAROL", "pässwörd-€"); err != nil || u.Name != "carol" {
		t.Fatalf("name is case-insensitive and canonical: %+v %v", u, err)
	}
	for _, c := range [][2]string{{"carol", "passwörd-€"}, {"carol", ""}, {"nobody", "pässwörd-€"}, {"", ""}} {
		if _, err := s.Authenticate(context.Background(), c[0], c[1]); !errors.Is(err, ErrBadCredentials) {
			t.Errorf("%q/%q: %v, want ErrBadCredentials", c[0], c[1], err)
		}
	}
	for _, bad := range []string{
		"users:\n  a:\n    password_hash: plain\n",
		"users:\n  a:\n    password_hash: \"$2a$04$abcdefghijklmnopqrstuuN7WsoeM8P3A3Lh6W5bJYzvF9k1Y1o8y\"\n    addresses: [\"a%b@c\"]\n",
		"users:\n  a:\n    pasword_hash: x\n",
	} {
		if _, err := ParseStatic([]byte(bad)); err == nil {
			t.Errorf("accepted users file %q", bad)
		}
	}
}

type countingDir struct {
	calls int
	err   error
}

func (c *countingDir) Authenticate(_ context.Context, u, p string) (*User, error) {
	c.calls++
	if c.err != nil {
		return nil, c.err
	}
	if p != "right" {
		return nil, ErrBadCredentials
	}
	return &User{Name: u}, nil
}

func TestCacheRemembersOnlySuccess(t *testing.T) {
	now := time.Unix(1000, 0)
	d := &countingDir{}
	c := NewCache(d, time.Minute, func() time.Time { return now })
	ctx := context.Background()
	for i := 0; i < 3; i++ {
		if _, err := c.Authenticate(ctx, "u", "right"); err != nil {
			t.Fatal(err)
		}
	}
	if d.calls != 1 {
		t.Fatalf("%d backend calls for 3 logins, want 1", d.calls)
	}
	for i := 0; i < 2; i++ {
		c.Authenticate(ctx, "u", "wrong")
	}
	if d.calls != 3 {
		t.Fatalf("failures cached: %d calls", d.calls)
	}
	now = now.Add(61 * time.Second)
	d.err = errors.New("backend down")
	if _, err := c.Authenticate(ctx, "u", "right"); err == nil || errors.Is(err, ErrBadCredentials) {
		t.Fatalf("after ttl with backend down: %v, want the backend error", err)
	}
	d.err = nil
	if _, err := c.Authenticate(ctx, "u", "right"); err != nil {
		t.Fatal(err)
	}
}

func TestCheckSenderAndRecipient(t *testing.T) {
	p := New(Config{
		TrustedNetworks:         []netip.Prefix{netip.MustParsePrefix("10.0.0.0/8")},
		TrustedSenders:          []string{"*@notify.example.com"},
		AllowedRecipientDomains: []string{"Example.org"},
	}, &countingDir{})
	alice := &User{Name: "alice", Addresses: []string{"alice@example.com"}}
	outside := Client{Addr: netip.MustParseAddr("192.0.2.1")}
	trusted := Client{Addr: netip.MustParseAddr("10.1.2.3")}
	authed := Client{Addr: netip.MustParseAddr("192.0.2.1"), User: alice}
	for _, tc := range []struct {
		c    Client
		from string
		want error
	}{
		{outside, "alice@example.com", ErrAuthRequired},
		{trusted, "app@notify.example.com", nil},
		{trusted, "alice@example.com", ErrSenderNotOwned},
		{authed, "alice@example.com", nil},
		{authed, "bob@example.com", ErrSenderNotOwned},
		{authed, "", ErrSenderNotOwned},
	} {
		if err := p.CheckSender(tc.c, tc.from); !errors.Is(err, tc.want) || (tc.want == nil && err != nil) {
			t.Errorf("CheckSender(%v, %q) = %v, want %v", tc.c.Addr, tc.from, err, tc.want)
		}
	}
	for _, tc := range []struct {
		c    Client
		to   string
		want error
	}{
		{outside, "x@example.org", ErrAuthRequired},
		{authed, "x@EXAMPLE.ORG", nil},
		{authed, "x@evil.org", ErrRelayDenied},
		{authed, "x%evil.org@example.org", ErrBadAddress},
		{trusted, "x@example.org", nil},
	} {
		if err := p.CheckRecipient(tc.c, tc.to); !errors.Is(err, tc.want) || (tc.want == nil && err != nil) {
			t.Errorf("CheckRecipient(%q) = %v, want %v", tc.to, err, tc.want)
		}
	}
	if err := p.CheckRecipient(authed, "x@anything.net"); err == nil {
		t.Error("allowed_recipient_domains ignored")
	}
	if err := New(Config{}, &countingDir{}).CheckRecipient(authed, "x@anything.net"); err != nil {
		t.Errorf("no domain list: %v", err)
	}
}

func header(t *testing.T, s string) mail.Header {
	m, err := mail.ReadMessage(strings.NewReader(s + "\r\n"))
	if err != nil {
		t.Fatal(err)
	}
	return m.Header
}

func TestCheckHeader(t *testing.T) {
	alice := Client{User: &User{Name: "alice", Addresses: []string{"alice@example.com", "*@app.example.com"}}}
	p := New(Config{EnforceHeaderFrom: true}, nil)
	for h, want := range map[string]error{
		"From: Alice <alice@example.com>\r\n":                               nil,
		"From: \"bob@example.com\" <alice@example.com>\r\n":                 ErrHeaderNotOwned, // the name a reader sees is bob's
		"From: \"Alice (alice@example.com)\" <alice@example.com>\r\n":       nil,
		"From: alice@example.com (Bob Boss)\r\n":                            nil,
		"From: undisclosed:;\r\n":                                           ErrHeaderMissing,
		"From: team: alice@example.com, bob@example.com;\r\n":               ErrHeaderNotOwned,
		"From: x@app.example.com\r\nSender: alice@example.com\r\n":          nil,
		"From: bob@example.com\r\n":                                         ErrHeaderNotOwned,
		"From: alice@example.com, bob@example.com\r\n":                      ErrHeaderNotOwned,
		"From: alice@example.com\r\nSender: bob@example.com\r\n":            ErrHeaderNotOwned,
		"From: alice@example.com\r\nFrom: bob@example.com\r\n":              ErrHeaderMissing,
		"Subject: none\r\n":                                                 ErrHeaderMissing,
		"From: not an address\r\n":                                          ErrHeaderMissing,
		"From: alice@example.com\r\nSender: a@app.example.com, b@x.org\r\n": ErrHeaderMissing,
	} {
		if err := p.CheckHeader(alice, header(t, h)); !errors.Is(err, want) || (want == nil && err != nil) {
			t.Errorf("CheckHeader(%q) = %v, want %v", h, err, want)
		}
	}
	if err := New(Config{EnforceHeaderFrom: false}, nil).CheckHeader(alice, header(t, "From: bob@example.com\r\n")); err != nil {
		t.Errorf("enforce_header_from off: %v", err)
	}
}

type slowDir struct {
	calls atomic.Int32
	gate  chan struct{}
}

func (d *slowDir) Authenticate(context.Context, string, string) (*User, error) {
	d.calls.Add(1)
	<-d.gate
	return &User{Name: "u"}, nil
}

// Twenty connections logging in at once with the same credentials cost one
// backend check, not twenty.
func TestCacheSharesConcurrentFirstLogins(t *testing.T) {
	d := &slowDir{gate: make(chan struct{})}
	c := NewCache(d, time.Minute, nil)
	var wg sync.WaitGroup
	for i := 0; i < 20; i++ {
		wg.Add(1)
		go func() {
			defer wg.Done()
			if _, err := c.Authenticate(context.Background(), "u", "p"); err != nil {
				t.Error(err)
			}
		}()
	}
	close(d.gate) // late arrivals join the flight or find its result cached
	wg.Wait()
	if n := d.calls.Load(); n != 1 {
		t.Fatalf("%d backend checks for 20 simultaneous logins, want 1", n)
	}
}

func BenchmarkCheckSenderAndHeader(b *testing.B) {
	p := New(Config{EnforceHeaderFrom: true}, nil)
	c := Client{User: &User{Name: "alice", Addresses: []string{"alice@example.com", "*@app.example.com"}}}
	m, _ := mail.ReadMessage(strings.NewReader("From: Alice <alice@example.com>\r\nSender: x@app.example.com\r\n\r\n"))
	for i := 0; i < b.N; i++ {
		if p.CheckSender(c, "x@app.example.com") != nil || p.CheckHeader(c, m.Header) != nil {
			b.Fatal("refused")
		}
	}
}
