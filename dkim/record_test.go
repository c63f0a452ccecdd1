package dkim

import (
	"context"
	"crypto"
	"crypto/ed25519"
	"crypto/rand"
	"crypto/rsa"
	"crypto/x509"
	"encoding/base64"
	"fmt"
	"io"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/smarthost/smarthost/relay/relaytest"
)

var (
	testKeysOnce     sync.Once
	rsaKey, rsaOther crypto.Signer
	edKey, edOther   crypto.Signer
)

// testKeys are made once: RSA key generation under -race takes seconds.
func testKeys(t *testing.T) {
	t.Helper()
	testKeysOnce.Do(func() {
		for _, k := range []struct {
			algo string
			to   *crypto.Signer
		}{{"rsa2048", &rsaKey}, {"rsa2048", &rsaOther}, {"ed25519", &edKey}, {"ed25519", &edOther}} {
			_, pemText, err := GenerateKey(k.algo)
			if err != nil {
				t.Fatal(err)
			}
			// Through PEM, as the relay loads them.
			if *k.to, err = ParseKey(pemText); err != nil {
				t.Fatal(err)
			}
		}
	})
}

func record(t *testing.T, selector string, k crypto.Signer) string {
	t.Helper()
	_, v, err := DNSRecord("example.com", selector, k.Public())
	if err != nil {
		t.Fatal(err)
	}
	return v
}

// split cuts a record into strings of n bytes, as a zone holds a record
// longer than 255.
func split(v string, n int) []string {
	var out []string
	for len(v) > n {
		out = append(out, v[:n])
		v = v[n:]
	}
	return append(out, v)
}

// Each verdict of `smarthost dkim check`, against a DNS server on
// loopback answering as a zone would.
func TestCheckPublished(t *testing.T) {
	testKeys(t)
	srv := relaytest.StartDNS(t)
	pkcs1 := base64.StdEncoding.EncodeToString(x509.MarshalPKCS1PublicKey(rsaKey.Public().(*rsa.PublicKey)))
	cases := []struct {
		name    string
		key     crypto.Signer
		publish func(name string) // nil: nothing at the name (NXDOMAIN)
		want    Verdict
		reason  string // in Reason, or in Notes when OK
	}{
		{"rsa", rsaKey, func(n string) { srv.SetTXT(n, split(record(t, "s", rsaKey), 255)) }, OK, ""},
		{"rsa in 40-byte strings", rsaKey, func(n string) { srv.SetTXT(n, split(record(t, "s", rsaKey), 40)) }, OK, ""},
		{"rsa as RSAPublicKey", rsaKey, func(n string) { srv.SetTXT(n, split("v=DKIM1; k=rsa; p="+pkcs1, 255)) }, OK, ""},
		{"rsa no k=, spaces in p=", rsaKey, func(n string) {
			srv.SetTXT(n, split("v=DKIM1; h=sha256; s=email; t=s; p="+strings.Join(split(pkcs1, 64), " "), 255))
		}, OK, ""},
		{"ed25519", edKey, func(n string) { srv.SetTXT(n, []string{record(t, "s", edKey)}) }, OK, ""},
		{"ed25519 testing", edKey, func(n string) { srv.SetTXT(n, []string{record(t, "s", edKey) + "; t=y"}) }, OK, "t=y"},
		{"nxdomain", rsaKey, nil, Missing, "no TXT record is published there"},
		{"no txt", edKey, func(n string) { srv.SetTXT(n) }, Missing, "no TXT record"},
		{"another rsa key", rsaKey, func(n string) { srv.SetTXT(n, split(record(t, "s", rsaOther), 255)) }, Mismatched, "another public key"},
		{"another ed25519 key", edKey, func(n string) { srv.SetTXT(n, []string{record(t, "s", edOther)}) }, Mismatched, "another public key"},
		{"rsa key, ed25519 record", rsaKey, func(n string) { srv.SetTXT(n, []string{record(t, "s", edKey)}) }, Mismatched, "k=ed25519, but the key file holds an rsa key"},
		{"ed25519 key, no k=", edKey, func(n string) { srv.SetTXT(n, split("v=DKIM1; p="+pkcs1, 255)) }, Mismatched, "k=rsa"},
		{"revoked", rsaKey, func(n string) { srv.SetTXT(n, []string{"v=DKIM1; k=rsa; p="}) }, Revoked, "p= is empty"},
		{"revoked ed25519", edKey, func(n string) { srv.SetTXT(n, []string{"v=DKIM1; k=ed25519; p= "}) }, Revoked, "revoked"},
		{"sha1 only", rsaKey, func(n string) { srv.SetTXT(n, split("v=DKIM1; h=sha1; p="+pkcs1, 255)) }, Mismatched, "h=sha1"},
		{"not for email", edKey, func(n string) { srv.SetTXT(n, []string{record(t, "s", edKey) + "; s=other"}) }, Mismatched, "s=other"},
		{"two records", edKey, func(n string) { srv.SetTXT(n, []string{record(t, "s", edKey)}, []string{"v=spf1 -all"}) }, Mismatched, "2 TXT records there"},
		{"not dkim", edKey, func(n string) { srv.SetTXT(n, []string{"v=spf1 -all"}) }, Mismatched, "v=spf1 -all, not v=DKIM1"},
		{"no p=", edKey, func(n string) { srv.SetTXT(n, []string{"v=DKIM1; k=ed25519"}) }, Mismatched, "no p= tag"},
		{"malformed", edKey, func(n string) { srv.SetTXT(n, []string{"v=DKIM1; k=ed25519; p"}) }, Mismatched, "malformed"},
		{"bad base64", edKey, func(n string) { srv.SetTXT(n, []string{"v=DKIM1; k=ed25519; p=***"}) }, Mismatched, "base64"},
		{"broken key", wrongSigner{edKey, edOther}, func(n string) { srv.SetTXT(n, []string{record(t, "s", edKey)}) }, Broken, "own public key"},
		{"servfail", edKey, func(n string) { srv.Fail(n) }, Unanswered, "server misbehaving"},
	}
	lookup := Resolver(srv.Addr, 5*time.Second)
	for i, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			sel := fmt.Sprintf("c%d", i)
			name := sel + "._domainkey.example.com"
			srv.Remove(name)
			if c.publish != nil {
				c.publish(name)
			}
			got := CheckPublished(context.Background(), "Example.COM", Key{Selector: sel, Signer: c.key}, lookup)
			t.Logf("%s: %s %s %v", got.Name, got.Verdict, got.Reason, got.Notes)
			if got.Name != name || got.Verdict != c.want {
				t.Fatalf("%s: %s (%s), want %s", got.Name, got.Verdict, got.Reason, c.want)
			}
			said := got.Reason + strings.Join(got.Notes, " ")
			if c.want == OK && c.reason == "" && said != "" {
				t.Errorf("ok with %q", said)
			}
			if !strings.Contains(said, c.reason) {
				t.Errorf("reason %q, want it to say %q", said, c.reason)
			}
		})
	}
}

// The test signature is verified against the record go-msgauth looks up
// itself, not the one the tags were read from: here the zone changes
// between the two look-ups (as when a record is being replaced), the tags
// match, and only go-msgauth's verification can refuse.
func TestCheckPublishedVerifies(t *testing.T) {
	testKeys(t)
	srv := relaytest.StartDNS(t)
	name := "v._domainkey.example.com"
	var calls int
	var mu sync.Mutex
	inner := Resolver(srv.Addr, 5*time.Second)
	lookup := func(ctx context.Context, n string) ([]string, error) {
		mu.Lock()
		calls++
		first := calls == 1
		mu.Unlock()
		if !first {
			srv.SetTXT(name, []string{record(t, "v", edOther)})
		}
		return inner(ctx, n)
	}
	srv.SetTXT(name, []string{record(t, "v", edKey)})
	got := CheckPublished(context.Background(), "example.com", Key{Selector: "v", Signer: edKey}, lookup)
	if got.Verdict != Mismatched || !strings.Contains(got.Reason, "go-msgauth refuses the test signature") {
		t.Fatalf("%s (%s), want mismatched by go-msgauth", got.Verdict, got.Reason)
	}
}

// wrongSigner says it is one key and signs with another, as a damaged
// key or a faulty signing library would.
type wrongSigner struct{ pub, priv crypto.Signer }

func (w wrongSigner) Public() crypto.PublicKey { return w.pub.Public() }
func (w wrongSigner) Sign(r io.Reader, d []byte, o crypto.SignerOpts) ([]byte, error) {
	return w.priv.Sign(r, d, o)
}

func TestSelfCheck(t *testing.T) {
	testKeys(t)
	for _, k := range []crypto.Signer{rsaKey, edKey} {
		if err := SelfCheck("Example.com", Key{Selector: "s", Signer: k}); err != nil {
			t.Errorf("%T: %v", k, err)
		}
	}
	bad := []struct {
		name string
		key  Key
		want string
	}{
		{"rsa signs with another key", Key{Selector: "s", Signer: wrongSigner{rsaKey, rsaOther}}, "signature did not verify"},
		{"ed25519 signs with another key", Key{Selector: "s", Signer: wrongSigner{edKey, edOther}}, "signature did not verify"},
		{"selector breaks the signature", Key{Selector: "s; x", Signer: edKey}, "go-msgauth refuses the test signature"},
	}
	for _, c := range bad {
		err := SelfCheck("example.com", c.key)
		if err == nil || !strings.Contains(err.Error(), c.want) || !strings.Contains(err.Error(), "does not verify against the key's own public key") {
			t.Errorf("%s: %v, want it refused with %q", c.name, err, c.want)
		}
	}
}

// An Ed25519 key made here signs and verifies: the wrongSigner cases above
// fail for the reason they claim, not because of the key.
func TestWrongSignerIsTheFault(t *testing.T) {
	_, priv, _ := ed25519.GenerateKey(rand.Reader)
	if err := SelfCheck("example.com", Key{Selector: "s", Signer: wrongSigner{priv, priv}}); err != nil {
		t.Fatal(err)
	}
}
