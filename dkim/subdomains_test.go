package dkim

import (
	"errors"
	"strings"
	"testing"
)

// A parent domain's keys sign for its subdomains when the configuration
// says so, as d= the parent (aligned for DMARC's relaxed mode); never for
// look-alikes that merely end in its name, and never unasked.
func TestParentKeysSignSubdomains(t *testing.T) {
	ks := keys(t)
	dk := ks.signer.domains["example.com"]
	own := []Key{dk[1]} // mail.example.com has a key of its own
	s := New(Config{Domains: map[string][]Key{"Example.com": dk, "mail.example.com": own}, Subdomains: []string{"EXAMPLE.com"}})
	for domain, want := range map[string]string{
		"example.com":        "example.com",
		"hr.example.com":     "example.com",
		"a.b.example.com":    "example.com",
		"MAIL.example.com":   "mail.example.com",
		"x.mail.example.com": "example.com", // mail.example.com's keys do not sign its subdomains
		"notexample.com":     "",
		"example.com.evil":   "",
		"com":                "",
	} {
		sg, err := s.Begin(domain, fields(msg))
		if want == "" {
			if !errors.Is(err, ErrNoKey) {
				t.Errorf("%s: %v, want ErrNoKey", domain, err)
			}
			continue
		}
		if err != nil || sg.Domain() != want {
			t.Errorf("%s: signed as %v (%v), want %s", domain, sg, err, want)
		}
	}
	if _, err := ks.signer.Begin("hr.example.com", fields(msg)); !errors.Is(err, ErrNoKey) {
		t.Errorf("without Subdomains a subdomain was signed: %v", err)
	}

	// The signature of a subdomain's message verifies against the
	// parent's records.
	m := strings.Replace(msg, "alice@example.com", "alice@hr.example.com", 1)
	sg, err := s.Begin("hr.example.com", fields(m))
	if err != nil {
		t.Fatal(err)
	}
	sg.Write([]byte(m))
	sigs, err := sg.Finish()
	if err != nil {
		t.Fatal(err)
	}
	vs := ks.verify(t, string(sigs)+m)
	if len(vs) != 2 {
		t.Fatalf("%d signatures, want 2", len(vs))
	}
	for _, v := range vs {
		if v.Err != nil || v.Domain != "example.com" {
			t.Errorf("signature d=%s: %v", v.Domain, v.Err)
		}
	}
}
