package relay

import (
	"crypto"
	"crypto/ed25519"
	"crypto/rand"
	"errors"
	"io"
	"strings"
	"testing"

	"github.com/smarthost/smarthost/dkim"
)

// brokenKey is a key whose signing fails (an HSM gone away, say).
type brokenKey struct{ ed25519.PrivateKey }

func (brokenKey) Sign(io.Reader, []byte, crypto.SignerOpts) ([]byte, error) {
	return nil, errors.New("hsm: device not ready")
}

func signerFor(t *testing.T, k crypto.Signer) *dkim.Signer {
	t.Helper()
	return dkim.New(dkim.Config{Domains: map[string][]dkim.Key{"example.com": {{Selector: "s1", Signer: k}}}, Oversign: []string{"from"}})
}

func TestSignedBeforeSpooling(t *testing.T) {
	_, k, _ := ed25519.GenerateKey(rand.Reader)
	e := newEnv(t, testOpts{signer: signerFor(t, k)})
	c := e.client(t, "alice", "alice-pw")
	if err := send(c, "alice@example.com", []string{"b@x.org"}, goodMsg); err != nil {
		t.Fatal(err)
	}
	m := e.queued(t)[0]
	if !strings.HasPrefix(m.Prepend, "DKIM-Signature: ") || !strings.Contains(m.Prepend, "d=example.com") || !strings.Contains(m.Prepend, "s=s1") {
		t.Fatalf("prepend does not start with the signature:\n%s", m.Prepend)
	}
}

func TestSigningFailureIsTemporary(t *testing.T) {
	_, k, _ := ed25519.GenerateKey(rand.Reader)
	e := newEnv(t, testOpts{signer: signerFor(t, brokenKey{k})})
	c := e.client(t, "alice", "alice-pw")
	wantReply(t, send(c, "alice@example.com", []string{"b@x.org"}, goodMsg), 451, "4.3.0", "Internal error, try again later")
	if n := len(e.queued(t)); n != 0 {
		t.Fatalf("%d messages queued unsigned after a signing failure", n)
	}
}

func TestMissingKey(t *testing.T) {
	_, k, _ := ed25519.GenerateKey(rand.Reader)
	msg := "From: x@app.example.com\r\n\r\nno key for app.example.com\r\n"
	e := newEnv(t, testOpts{signer: signerFor(t, k), rejectNoKey: true})
	c := e.client(t, "alice", "alice-pw")
	wantReply(t, send(c, "x@app.example.com", []string{"b@x.org"}, msg), 550, "5.7.1", "Sender domain has no signing key here")

	e = newEnv(t, testOpts{signer: signerFor(t, k)})
	c = e.client(t, "alice", "alice-pw")
	if err := send(c, "x@app.example.com", []string{"b@x.org"}, msg); err != nil {
		t.Fatalf("send_unsigned: %v", err)
	}
	if p := e.queued(t)[0].Prepend; strings.Contains(p, "DKIM-Signature") {
		t.Fatalf("signed without a key for the domain:\n%s", p)
	}
}
