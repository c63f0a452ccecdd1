package dkim

import (
	"bytes"
	"crypto"
	"crypto/ed25519"
	"crypto/rand"
	"crypto/rsa"
	"crypto/sha256"
	"encoding/base64"
	"fmt"
	"hash"
	"strconv"
	"strings"
	"time"
)

// Signing is one message being signed: write the whole message (header and
// body, CRLF line endings) to it, then call Finish.
//
// It is a signer of its own on RFC 6376's relaxed/relaxed canonicalization
// rather than go-msgauth's: go-msgauth canonicalizes and hashes the body
// once per signature, each through a goroutine and a pipe, and every key
// here signs the same canonical body with SHA-256. So the body is
// canonicalized and hashed once, in the caller's goroutine, and each key
// only hashes the header and signs. go-msgauth still verifies the result in
// the tests, beside dkimpy and Mail::DKIM.
type Signing struct {
	domain string
	keys   []Key
	hk     []string // the h= list
	now    time.Time

	head   []byte // the header block, until its end is seen
	scan   int    // where to look for the end of the header next
	inBody bool
	body   relaxedBody
	bh     hash.Hash
}

// Domain is the domain the signatures are made for (d=).
func (sg *Signing) Domain() string { return sg.domain }

func newSigning(domain string, keys []Key, hk []string) *Signing {
	sg := &Signing{domain: domain, keys: keys, hk: hk, now: time.Now(), bh: sha256.New()}
	sg.body.w = sg.bh
	return sg
}

func (sg *Signing) Write(p []byte) (int, error) {
	if sg.inBody {
		return sg.body.Write(p)
	}
	n := len(p)
	sg.head = append(sg.head, p...)
	i := bytes.Index(sg.head[sg.scan:], []byte("\r\n\r\n"))
	if i < 0 {
		sg.scan = max(0, len(sg.head)-3)
		return n, nil
	}
	end := sg.scan + i
	rest := sg.head[end+4:]
	sg.head = sg.head[:end+2]
	sg.inBody = true
	sg.body.Write(rest)
	return n, nil
}

// Abort ends a signing that will not be finished (the message was
// refused); it holds nothing that needs releasing, and is kept for the
// callers' sake.
func (sg *Signing) Abort() {}

// Names names the signatures Finish makes, as domain/selector.
func (sg *Signing) Names() []string {
	out := make([]string, len(sg.keys))
	for i, k := range sg.keys {
		out[i] = sg.domain + "/" + k.Selector
	}
	return out
}

// Finish returns the DKIM-Signature fields to put on top of the message.
func (sg *Signing) Finish() ([]byte, error) {
	sg.body.end()
	bh := base64.StdEncoding.EncodeToString(sg.bh.Sum(nil))
	fields := splitFields(sg.head)
	var out bytes.Buffer
	for _, k := range sg.keys {
		field, err := sg.sign(k, bh, fields)
		if err != nil {
			return nil, fmt.Errorf("dkim: %s: %w", k.Selector, err)
		}
		out.WriteString(field)
	}
	return out.Bytes(), nil
}

// sign makes one DKIM-Signature field.
func (sg *Signing) sign(k Key, bh string, fields [][]byte) (string, error) {
	algo, opts := "", crypto.Hash(0)
	switch k.Signer.Public().(type) {
	case *rsa.PublicKey:
		algo, opts = "rsa-sha256", crypto.SHA256
	case ed25519.PublicKey:
		algo = "ed25519-sha256" // RFC 8463: Ed25519 over the SHA-256 hash
	default:
		return "", fmt.Errorf("unsupported key type %T", k.Signer.Public())
	}
	var f strings.Builder
	f.WriteString("DKIM-Signature: v=1; a=" + algo + "; c=relaxed/relaxed; d=" + sg.domain + ";\r\n s=" +
		k.Selector + "; t=" + strconv.FormatInt(sg.now.Unix(), 10) + ";\r\n h=")
	line := 3
	for i, name := range sg.hk {
		if i > 0 {
			f.WriteByte(':')
			line++
		}
		if line+len(name) > 76 {
			f.WriteString("\r\n ")
			line = 1
		}
		f.WriteString(name)
		line += len(name)
	}
	f.WriteString(";\r\n bh=" + bh + ";\r\n b=")
	unsigned := f.String()

	h := sha256.New()
	for _, field := range pickFields(fields, sg.hk) {
		h.Write([]byte(relaxedHeader(field)))
	}
	self := relaxedHeader([]byte(unsigned))
	h.Write([]byte(strings.TrimSuffix(self, "\r\n")))
	sig, err := k.Signer.Sign(rand.Reader, h.Sum(nil), opts)
	if err != nil {
		return "", err
	}
	b := base64.StdEncoding.EncodeToString(sig)
	f.Reset()
	f.WriteString(unsigned)
	for len(b) > 72 {
		f.WriteString(b[:72] + "\r\n ")
		b = b[72:]
	}
	f.WriteString(b + "\r\n")
	return f.String(), nil
}

// pickFields returns the fields the h= list signs, in its order: for each
// name, the next instance of that field from the bottom of the header up
// (RFC 6376 section 5.4.2); a name with none left (an oversigned one)
// contributes nothing.
func pickFields(fields [][]byte, hk []string) [][]byte {
	byName := map[string][]int{}
	for i, f := range fields {
		name, _, _ := bytes.Cut(f, []byte(":"))
		n := strings.ToLower(strings.TrimRight(string(name), " \t"))
		byName[n] = append(byName[n], i)
	}
	var out [][]byte
	for _, name := range hk {
		idx := byName[name]
		if len(idx) == 0 {
			continue
		}
		out = append(out, fields[idx[len(idx)-1]])
		byName[name] = idx[:len(idx)-1]
	}
	return out
}
