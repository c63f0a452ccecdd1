// Package dkim signs outgoing messages (RFC 6376, RFC 8463) with the keys of
// the domain in their From: address, and makes and publishes those keys.
package dkim

import (
	"crypto"
	"errors"
	"fmt"
	"strings"
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
	// Subdomains are domains of Domains whose keys also sign for their
	// subdomains (d= is then the parent: DMARC's relaxed alignment).
	Subdomains []string
}

// Signer holds the keys. It is immutable and safe for concurrent use.
type Signer struct {
	domains    map[string][]Key
	subdomains map[string]bool
	oversign   map[string]bool
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
	s := &Signer{domains: map[string][]Key{}, subdomains: map[string]bool{}, oversign: map[string]bool{}}
	for d, keys := range cfg.Domains {
		s.domains[strings.ToLower(d)] = keys
	}
	for _, d := range cfg.Subdomains {
		s.subdomains[strings.ToLower(d)] = true
	}
	for _, h := range cfg.Oversign {
		s.oversign[strings.ToLower(h)] = true
	}
	return s
}

// Begin starts signing a message whose From: domain is domain and whose
// header has the given field names (in any case, one entry per occurrence).
func (s *Signer) Begin(domain string, fields []string) (*Signing, error) {
	domain, keys := s.keysFor(strings.ToLower(domain))
	if len(keys) == 0 {
		return nil, fmt.Errorf("%w %q", ErrNoKey, domain)
	}
	count := map[string]int{}
	for _, f := range fields {
		count[strings.ToLower(f)]++
	}
	// Each present field once per occurrence, and once more for the
	// oversigned ones, so that nobody can add another after signing.
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
	return newSigning(domain, keys, hk), nil
}

// keysFor finds the keys that sign for domain, and the domain they sign
// as: its own, else those of the nearest parent whose keys sign its
// subdomains.
func (s *Signer) keysFor(domain string) (string, []Key) {
	if keys := s.domains[domain]; len(keys) > 0 {
		return domain, keys
	}
	for d := domain; ; {
		_, parent, ok := strings.Cut(d, ".")
		if !ok {
			return domain, nil
		}
		if s.subdomains[parent] {
			return parent, s.domains[parent]
		}
		d = parent
	}
}
