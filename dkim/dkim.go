// Package dkim signs outgoing messages (RFC 6376, RFC 8463) with the keys of
// the domain in their From: address, and makes and publishes those keys.
package dkim

import (
	"bytes"
	"crypto"
	"errors"
	"fmt"
	"strings"

	msgdkim "github.com/emersion/go-msgauth/dkim"
)

// ErrNoKey means no key is configured for the message's domain; the caller
// applies on_missing_key. Any other error from signing is temporary.
var ErrNoKey = errors.New("dkim: no key for domain")

// Key is one selector of a domain.
type Key struct {
	Selector string
	Signer   crypto.Signer
}

// Config is the dkim section of the configuration, with keys loaded.
type Config struct {
	Domains  map[string][]Key // lower-case domain → keys; each signs
	Oversign []string         // fields signed once more than they occur
}

// Signer holds the keys. It is immutable and safe for concurrent use.
type Signer struct {
	domains  map[string][]Key
	oversign map[string]bool
}

// signed are the fields we sign when present (RFC 6376 section 5.4.1).
var signed = []string{
	"from", "sender", "reply-to", "subject", "date", "to", "cc", "message-id",
	"in-reply-to", "references", "mime-version", "content-type",
	"content-transfer-encoding", "content-id", "content-description",
	"resent-date", "resent-from", "resent-sender", "resent-to", "resent-cc", "resent-message-id",
	"list-id", "list-help", "list-unsubscribe", "list-unsubscribe-post", "list-subscribe",
	"list-post", "list-owner", "list-archive",
}

func New(cfg Config) *Signer {
	s := &Signer{domains: map[string][]Key{}, oversign: map[string]bool{}}
	for d, keys := range cfg.Domains {
		s.domains[strings.ToLower(d)] = keys
	}
	for _, h := range cfg.Oversign {
		s.oversign[strings.ToLower(h)] = true
	}
	return s
}

// Signing is one message being signed: write the whole message (header and
// body, CRLF line endings) to it, then call Finish.
type Signing struct {
	signers []*msgdkim.Signer
}

// Begin starts signing a message whose From: domain is domain and whose
// header has the given field names (in any case, one entry per occurrence).
func (s *Signer) Begin(domain string, fields []string) (*Signing, error) {
	keys := s.domains[strings.ToLower(domain)]
	if len(keys) == 0 {
		return nil, fmt.Errorf("%w %q", ErrNoKey, domain)
	}
	count := map[string]int{}
	for _, f := range fields {
		count[strings.ToLower(f)]++
	}
	// Each present field once per occurrence, and once more for the
	// oversigned ones, so that nobody can add another after signing. Every
	// key is listed once per needed slot only: go-msgauth panics on
	// inconsistent lists.
	var hk []string
	for _, f := range signed {
		n := count[f]
		if s.oversign[f] {
			n++
		}
		for i := 0; i < n; i++ {
			hk = append(hk, f)
		}
	}
	if count["from"] == 0 {
		return nil, errors.New("dkim: message has no From field")
	}
	sg := &Signing{}
	for _, k := range keys {
		ms, err := msgdkim.NewSigner(&msgdkim.SignOptions{
			Domain:                 strings.ToLower(domain),
			Selector:               k.Selector,
			Signer:                 k.Signer,
			HeaderCanonicalization: msgdkim.CanonicalizationRelaxed,
			BodyCanonicalization:   msgdkim.CanonicalizationRelaxed,
			HeaderKeys:             hk,
		})
		if err != nil {
			sg.abort()
			return nil, fmt.Errorf("dkim: %s: %w", k.Selector, err)
		}
		sg.signers = append(sg.signers, ms)
	}
	return sg, nil
}

func (sg *Signing) Write(p []byte) (int, error) {
	for _, s := range sg.signers {
		if _, err := s.Write(p); err != nil {
			return 0, fmt.Errorf("dkim: %w", err)
		}
	}
	return len(p), nil
}

// Abort ends a signing that will not be finished (the message was
// refused), so that it holds nothing.
func (sg *Signing) Abort() {
	sg.abort()
}

func (sg *Signing) abort() {
	for _, s := range sg.signers {
		s.Close()
	}
	sg.signers = nil
}

// Finish returns the DKIM-Signature fields to put on top of the message.
func (sg *Signing) Finish() ([]byte, error) {
	var b bytes.Buffer
	for i, s := range sg.signers {
		if err := s.Close(); err != nil {
			sg.signers = sg.signers[i+1:]
			sg.abort()
			return nil, fmt.Errorf("dkim: %w", err)
		}
		b.WriteString(s.Signature())
	}
	sg.signers = nil
	return b.Bytes(), nil
}
