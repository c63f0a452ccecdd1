package dkim

import (
	"context"
	"errors"
	"fmt"
	"strings"

	msgdkim "github.com/emersion/go-msgauth/dkim"
)

// Signatures are made by our own signer (sign.go), which is built for
// speed; they are checked here by go-msgauth's verifier, which is written
// from the RFC by other people and is what many Go receivers run. A key
// passes only if a signature of ours verifies there: that catches a key,
// selector or signer that would make signatures no receiver accepts.

// testMessage is the message a key signs to be checked: fixed, so that a
// failure does not depend on what is being sent, and made of the fields
// that every signature covers.
func testMessage(domain string) string {
	return "From: smarthost DKIM check <dkim-check@" + domain + ">\r\n" +
		"To: dkim-check@" + domain + "\r\n" +
		"Subject: DKIM key check\r\n" +
		"Date: Mon, 02 Jan 2006 15:04:05 +0000\r\n" +
		"Message-ID: <dkim-check@" + domain + ">\r\n" +
		"\r\n" +
		"This message checks that a key signs what a verifier accepts.\r\n" +
		" Lines with  spaces,\ttabs \r\n\r\nand empty lines at the end.\r\n\r\n\r\n"
}

// errLookup marks a failure to reach DNS, as opposed to an answer that
// refuses the signature.
var errLookup = errors.New("key lookup failed")

// signAndVerify signs the test message for domain with k alone and has
// go-msgauth verify it, finding the key's record through lookup.
func signAndVerify(domain string, k Key, lookup func(name string) ([]string, error)) error {
	domain = strings.ToLower(domain)
	m := testMessage(domain)
	sg, err := New(Config{Domains: map[string][]Key{domain: {k}}}).Begin(domain, []string{"From", "To", "Subject", "Date", "Message-ID"})
	if err != nil {
		return err
	}
	sg.Write([]byte(m))
	sig, err := sg.Finish()
	if err != nil {
		return err
	}
	vs, err := msgdkim.VerifyWithOptions(strings.NewReader(string(sig)+m), &msgdkim.VerifyOptions{LookupTXT: lookup, MaxVerifications: 2})
	if err != nil {
		return fmt.Errorf("go-msgauth: %w", err)
	}
	if len(vs) != 1 {
		return fmt.Errorf("go-msgauth found %d signatures in the test message, want 1", len(vs))
	}
	if err := vs[0].Err; err != nil {
		if msgdkim.IsTempFail(err) {
			return fmt.Errorf("%w: %v", errLookup, err)
		}
		return fmt.Errorf("go-msgauth refuses the test signature: %w", err)
	}
	return nil
}

// SelfCheck signs a fixed message with k as domain's key and verifies it
// with go-msgauth against the record made from k's own public key (no
// DNS). A key that fails it would sign mail no receiver accepts, so the
// relay refuses it at start and at reload.
func SelfCheck(domain string, k Key) error {
	name, value, err := DNSRecord(strings.ToLower(domain), k.Selector, k.Signer.Public())
	if err != nil {
		return err
	}
	err = signAndVerify(domain, k, func(n string) ([]string, error) {
		if !strings.EqualFold(n, name) {
			return nil, fmt.Errorf("the signature names the record %s, not %s", n, name)
		}
		return []string{value}, nil
	})
	if err != nil {
		return fmt.Errorf("a test signature with selector %q of %s does not verify against the key's own public key: %w", k.Selector, strings.ToLower(domain), err)
	}
	return nil
}

// LookupTXT returns the TXT records at name, the strings of each record
// joined, as net.Resolver.LookupTXT does.
type LookupTXT func(ctx context.Context, name string) ([]string, error)

// verifyLive signs the test message with k and has go-msgauth verify it
// against the record lookup finds, as a receiver would.
func verifyLive(ctx context.Context, domain string, k Key, lookup LookupTXT) error {
	return signAndVerify(domain, k, func(name string) ([]string, error) {
		return lookup(ctx, name)
	})
}
