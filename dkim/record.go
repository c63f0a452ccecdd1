package dkim

import (
	"context"
	"crypto"
	"crypto/ed25519"
	"crypto/rsa"
	"crypto/x509"
	"encoding/base64"
	"errors"
	"fmt"
	"net"
	"slices"
	"strings"
	"time"
)

// Verdict is what a key's published record amounts to.
type Verdict string

const (
	OK         Verdict = "ok"
	Missing    Verdict = "missing"    // no TXT record at the name
	Mismatched Verdict = "mismatched" // a record, but not one that verifies this key's signatures
	Revoked    Verdict = "revoked"    // p= is empty: the domain withdrew the key
	Unanswered Verdict = "unanswered" // DNS gave no answer (timeout, SERVFAIL): nothing is known
	Broken     Verdict = "broken"     // the key fails SelfCheck, whatever DNS holds
)

// Published is what CheckPublished found for one key.
type Published struct {
	Name    string // selector._domainkey.domain
	Key     string // the key file's algorithm ("rsa-2048", "ed25519")
	Verdict Verdict
	Reason  string   // why, unless OK
	Notes   []string // worth knowing about a record that works
}

// CheckPublished looks up k's TXT record for domain, compares it with the
// private key (k=, p=, and the h=, s= and t= tags), then signs a test
// message with k and has go-msgauth verify it against the record it
// looks up, as a receiver would (opendkim-testkey does the same for
// OpenDKIM). A key that fails SelfCheck is Broken before any look-up.
func CheckPublished(ctx context.Context, domain string, k Key, lookup LookupTXT) Published {
	domain = strings.ToLower(domain)
	res := Published{Name: k.Selector + "._domainkey." + domain}
	algo, bits, err := keyAlgo(k.Signer.Public())
	if err != nil {
		return res.with(Mismatched, "%v", err)
	}
	res.Key = algo
	if bits > 0 {
		res.Key = fmt.Sprintf("%s-%d", algo, bits)
	}
	if err := SelfCheck(domain, k); err != nil {
		return res.with(Broken, "%v", err)
	}
	txts, err := lookup(ctx, res.Name)
	var dnsErr *net.DNSError
	switch {
	case errors.As(err, &dnsErr) && dnsErr.IsNotFound:
		// NXDOMAIN and a name with no TXT record look the same here.
		return res.with(Missing, "no TXT record is published there")
	case err != nil:
		return res.with(Unanswered, "%v", err)
	case len(txts) == 0:
		return res.with(Missing, "no TXT record is published there")
	case len(txts) > 1:
		return res.with(Mismatched, "%d TXT records there: RFC 6376 (section 3.6.2.2) leaves that undefined and go-msgauth, for one, refuses the key; keep only the DKIM one", len(txts))
	}
	v, notes, err := compareRecord(txts[0], k.Signer.Public())
	if err != nil {
		return res.with(v, "%v", err)
	}
	res.Notes = notes
	if err := verifyLive(ctx, domain, k, lookup); err != nil {
		if errors.Is(err, errLookup) {
			return res.with(Unanswered, "%v", err)
		}
		return res.with(Mismatched, "%v", err)
	}
	res.Verdict = OK
	return res
}

func (p Published) with(v Verdict, format string, args ...any) Published {
	p.Verdict, p.Reason = v, fmt.Sprintf(format, args...)
	return p
}

// compareRecord checks a record's tags against pub. A record that cannot
// verify pub's signatures is Mismatched (or Revoked) with the reason.
func compareRecord(rec string, pub crypto.PublicKey) (Verdict, []string, error) {
	tags, err := parseTags(rec)
	if err != nil {
		return Mismatched, nil, err
	}
	if v, ok := tags["v"]; ok && v != "DKIM1" {
		return Mismatched, nil, fmt.Errorf("v=%s, not v=DKIM1", v)
	}
	p, ok := tags["p"]
	if !ok {
		return Mismatched, nil, errors.New("the record has no p= tag: it is not a DKIM key record")
	}
	if p == "" {
		return Revoked, nil, errors.New("p= is empty: the key is revoked; sign with another selector, or publish this key again")
	}
	algo, _, err := keyAlgo(pub)
	if err != nil {
		return Mismatched, nil, err
	}
	k := tags["k"]
	if k == "" {
		k = "rsa" // RFC 6376 section 3.6.1
	}
	if k != algo {
		return Mismatched, nil, fmt.Errorf("k=%s, but the key file holds an %s key", k, algo)
	}
	if err := samePublicKey(algo, p, pub); err != nil {
		return Mismatched, nil, err
	}
	if h, ok := tags["h"]; ok && !slices.Contains(tagList(h), "sha256") {
		return Mismatched, nil, fmt.Errorf("h=%s does not allow sha256, the only hash signatures use", h)
	}
	if s, ok := tags["s"]; ok && !slices.Contains(tagList(s), "*") && !slices.Contains(tagList(s), "email") {
		return Mismatched, nil, fmt.Errorf("s=%s does not allow email", s)
	}
	var notes []string
	if slices.Contains(tagList(tags["t"]), "y") {
		notes = append(notes, "t=y: the domain is testing DKIM, and receivers may treat its signatures as absent; remove t=y when done")
	}
	return OK, notes, nil
}

// samePublicKey reports whether the base64 p= is pub: for RSA a
// SubjectPublicKeyInfo or (as some publish it) a bare RSAPublicKey.
func samePublicKey(algo, p string, pub crypto.PublicKey) error {
	b, err := base64.StdEncoding.DecodeString(strings.Join(strings.Fields(p), ""))
	if err != nil {
		return fmt.Errorf("p= is not base64: %v", err)
	}
	var published crypto.PublicKey
	switch algo {
	case "rsa":
		if published, err = x509.ParsePKIXPublicKey(b); err != nil {
			if published, err = x509.ParsePKCS1PublicKey(b); err != nil {
				return fmt.Errorf("p= is not an RSA public key: %v", err)
			}
		}
	case "ed25519":
		if len(b) != ed25519.PublicKeySize {
			return fmt.Errorf("p= has %d bytes, an Ed25519 public key %d", len(b), ed25519.PublicKeySize)
		}
		published = ed25519.PublicKey(b)
	}
	if e, ok := pub.(interface{ Equal(crypto.PublicKey) bool }); !ok || !e.Equal(published) {
		return errors.New("p= is another public key than the key file's: publish the record `smarthost dkim dns` prints")
	}
	return nil
}

// keyAlgo names pub as k= does, with its size for RSA.
func keyAlgo(pub crypto.PublicKey) (string, int, error) {
	switch pub := pub.(type) {
	case *rsa.PublicKey:
		return "rsa", pub.N.BitLen(), nil
	case ed25519.PublicKey:
		return "ed25519", 0, nil
	}
	return "", 0, fmt.Errorf("unsupported public key %T", pub)
}

// parseTags parses a tag=value list (RFC 6376 section 3.2).
func parseTags(rec string) (map[string]string, error) {
	tags := map[string]string{}
	for _, t := range strings.Split(rec, ";") {
		if strings.TrimSpace(t) == "" {
			continue
		}
		name, value, ok := strings.Cut(t, "=")
		name = strings.TrimSpace(name)
		if !ok || name == "" {
			return nil, fmt.Errorf("the record is malformed at %q: want tag=value pairs separated by \";\"", strings.TrimSpace(t))
		}
		if _, dup := tags[name]; dup {
			return nil, fmt.Errorf("the record has %s= twice", name)
		}
		tags[name] = strings.TrimSpace(value)
	}
	return tags, nil
}

// tagList splits a colon-separated tag value.
func tagList(v string) []string {
	var out []string
	for _, s := range strings.Split(v, ":") {
		if s = strings.TrimSpace(s); s != "" {
			out = append(out, s)
		}
	}
	return out
}

// Resolver returns a TXT look-up through the DNS server at addr
// (host:port, or a host on port 53), or through the system's resolver
// when addr is "". Names
// are looked up as absolute, never with the search domains of
// /etc/resolv.conf; each look-up gives up after timeout.
func Resolver(addr string, timeout time.Duration) LookupTXT {
	r := net.DefaultResolver
	if addr != "" {
		if _, _, err := net.SplitHostPort(addr); err != nil {
			addr = net.JoinHostPort(addr, "53")
		}
		var d net.Dialer
		r = &net.Resolver{PreferGo: true, Dial: func(ctx context.Context, network, _ string) (net.Conn, error) {
			return d.DialContext(ctx, network, addr)
		}}
	}
	return func(ctx context.Context, name string) ([]string, error) {
		ctx, cancel := context.WithTimeout(ctx, timeout)
		defer cancel()
		txts, err := r.LookupTXT(ctx, strings.TrimSuffix(name, ".")+".")
		if e, ok := err.(*net.DNSError); ok && addr != "" {
			// It names the server of /etc/resolv.conf, not the one asked.
			c := *e
			c.Server = addr
			err = &c
		}
		return txts, err
	}
}
