//go:build openssl && cgo

package dkim

import (
	"crypto"
	"crypto/rand"
	"crypto/rsa"
	"crypto/sha256"
	"crypto/sha512"
	"strings"
	"sync"
	"testing"
)

// Keys loaded in an openssl build sign through libcrypto, from many
// goroutines at once, and every signature verifies.
func TestOpenSSLSigner(t *testing.T) {
	if !strings.HasPrefix(RSABackend, "OpenSSL") {
		t.Fatalf("RSABackend %q", RSABackend)
	}
	_, pemText, err := GenerateKey("rsa2048")
	if err != nil {
		t.Fatal(err)
	}
	k, err := ParseKey(pemText)
	if err != nil {
		t.Fatal(err)
	}
	if _, ok := k.(*opensslRSA); !ok {
		t.Fatalf("ParseKey gave %T, want the libcrypto signer", k)
	}
	pub := k.Public().(*rsa.PublicKey)
	var wg sync.WaitGroup
	for g := range 8 {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for i := range 50 {
				d := sha256.Sum256([]byte{byte(g), byte(i)})
				sig, err := k.Sign(nil, d[:], crypto.SHA256)
				if err != nil {
					t.Error(err)
					return
				}
				if err := rsa.VerifyPKCS1v15(pub, crypto.SHA256, d[:], sig); err != nil {
					t.Error(err)
					return
				}
			}
		}()
	}
	wg.Wait()
	// Anything but SHA-256 is left to Go.
	d := sha512.Sum512([]byte("x"))
	sig, err := k.Sign(nil, d[:], crypto.SHA512)
	if err != nil {
		t.Fatal(err)
	}
	if err := rsa.VerifyPKCS1v15(pub, crypto.SHA512, d[:], sig); err != nil {
		t.Fatal(err)
	}
	d2 := sha256.Sum256([]byte("pss"))
	pssOpts := &rsa.PSSOptions{Hash: crypto.SHA256, SaltLength: rsa.PSSSaltLengthEqualsHash}
	sig, err = k.Sign(rand.Reader, d2[:], pssOpts)
	if err != nil {
		t.Fatal(err)
	}
	if err := rsa.VerifyPSS(pub, crypto.SHA256, d2[:], sig, pssOpts); err != nil {
		t.Fatalf("a PSS request got something else: %v", err)
	}
}
