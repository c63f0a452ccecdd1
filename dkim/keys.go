package dkim

import (
	"crypto"
	"crypto/ed25519"
	"crypto/rand"
	"crypto/rsa"
	"crypto/x509"
	"encoding/base64"
	"encoding/pem"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"strings"
)

// LoadKey reads a PEM private key: PKCS#1 or PKCS#8 RSA, or PKCS#8 Ed25519.
func LoadKey(path string) (crypto.Signer, error) {
	b, err := os.ReadFile(path)
	if err != nil {
		return nil, fmt.Errorf("dkim: %w", err)
	}
	k, err := ParseKey(b)
	if err != nil {
		return nil, fmt.Errorf("dkim: %s: %w", path, err)
	}
	return k, nil
}

// ParseKey parses PEM text.
func ParseKey(b []byte) (crypto.Signer, error) {
	blk, _ := pem.Decode(b)
	if blk == nil {
		return nil, errors.New("no PEM block")
	}
	switch blk.Type {
	case "RSA PRIVATE KEY":
		k, err := x509.ParsePKCS1PrivateKey(blk.Bytes)
		if err != nil {
			return nil, err
		}
		return checkSize(k)
	case "PRIVATE KEY":
		k, err := x509.ParsePKCS8PrivateKey(blk.Bytes)
		if err != nil {
			return nil, err
		}
		switch k := k.(type) {
		case *rsa.PrivateKey:
			return checkSize(k)
		case ed25519.PrivateKey:
			return k, nil
		}
		return nil, fmt.Errorf("unsupported key type %T (use RSA or Ed25519)", k)
	}
	return nil, fmt.Errorf("unsupported PEM block %q", blk.Type)
}

// checkSize refuses RSA keys that verifiers must ignore (RFC 8301: under
// 1024 bits); KeyWarning complains about those under 2048.
func checkSize(k *rsa.PrivateKey) (crypto.Signer, error) {
	if k.N.BitLen() < 1024 {
		return nil, fmt.Errorf("RSA key of %d bits is refused by verifiers (RFC 8301): use 2048 or more", k.N.BitLen())
	}
	return rsaSigner(k)
}

// KeyWarning says what is weak about a usable key, or "".
func KeyWarning(k crypto.Signer) string {
	if r, ok := k.Public().(*rsa.PublicKey); ok && r.N.BitLen() < 2048 {
		return fmt.Sprintf("RSA key of %d bits: large receivers want 2048 or more; rotate to a new selector", r.N.BitLen())
	}
	return ""
}

// ErrUnknownAlgorithm is a key algorithm other than rsa2048, rsa4096 and
// ed25519.
var ErrUnknownAlgorithm = errors.New("dkim: unknown algorithm")

// GenerateKey makes a key for algo rsa2048, rsa4096 or ed25519 and returns it
// with its PKCS#8 PEM text.
func GenerateKey(algo string) (crypto.Signer, []byte, error) {
	var k crypto.Signer
	var err error
	switch algo {
	case "", "rsa2048":
		k, err = rsa.GenerateKey(rand.Reader, 2048)
	case "rsa4096":
		k, err = rsa.GenerateKey(rand.Reader, 4096)
	case "ed25519":
		_, k, err = ed25519.GenerateKey(rand.Reader)
	default:
		return nil, nil, fmt.Errorf("%w %q (use rsa2048, rsa4096 or ed25519)", ErrUnknownAlgorithm, algo)
	}
	if err != nil {
		return nil, nil, err
	}
	der, err := x509.MarshalPKCS8PrivateKey(k)
	if err != nil {
		return nil, nil, err
	}
	return k, pem.EncodeToMemory(&pem.Block{Type: "PRIVATE KEY", Bytes: der}), nil
}

// WriteKey writes PEM text to path with owner-only permissions, refusing to
// replace an existing key. The key appears whole or not at all: it is
// written and synced under a temporary name first, then linked into place
// (which fails if path exists), so that a full disk or a crash never
// leaves a cut-off key that a later start would take for the real one.
func WriteKey(path string, pemText []byte) error {
	dir := filepath.Dir(path)
	if err := os.MkdirAll(dir, 0o700); err != nil {
		return fmt.Errorf("dkim: %w", err)
	}
	f, err := os.CreateTemp(dir, "."+filepath.Base(path)+".tmp*")
	if err != nil {
		return fmt.Errorf("dkim: %w", err)
	}
	defer os.Remove(f.Name())
	_, err = f.Write(pemText)
	if err == nil {
		err = f.Sync()
	}
	if cerr := f.Close(); err == nil {
		err = cerr
	}
	if err == nil {
		err = os.Link(f.Name(), path)
	}
	if err != nil {
		return fmt.Errorf("dkim: write key %s: %w", path, err)
	}
	if d, err := os.Open(dir); err == nil {
		d.Sync()
		d.Close()
	}
	return nil
}

// MakeKey makes a key for algo and writes it to path (WriteKey: never
// replacing one). It returns the key as read back from its text, so that
// it signs as a loaded key does (in the openssl build, by libcrypto).
func MakeKey(path, algo string) (crypto.Signer, error) {
	_, pemText, err := GenerateKey(algo)
	if err != nil {
		return nil, err
	}
	if err := WriteKey(path, pemText); err != nil {
		return nil, err
	}
	return ParseKey(pemText)
}

// Keygen makes a key for domain and selector in dir, in the file
// DOMAIN.SELECTOR.key, and returns its path and its DNS record as a
// zone-file line. With keep, a key already there is kept instead of
// refused (several nodes share one key: the first to start makes it).
func Keygen(dir, domain, selector, algo string, keep bool) (path, record string, err error) {
	domain = strings.ToLower(domain)
	path = filepath.Join(dir, domain+"."+selector+".key")
	var k crypto.Signer
	if keep {
		k, _ = LoadKey(path)
	}
	if k == nil {
		if k, err = MakeKey(path, algo); err != nil {
			return "", "", err
		}
	}
	name, value, err := DNSRecord(domain, selector, k.Public())
	if err != nil {
		return "", "", err
	}
	return path, ZoneLine(name, value), nil
}

// DNSRecord returns the TXT record that publishes pub for domain and selector.
func DNSRecord(domain, selector string, pub crypto.PublicKey) (name, value string, err error) {
	name = selector + "._domainkey." + domain
	switch pub := pub.(type) {
	case *rsa.PublicKey:
		der, err := x509.MarshalPKIXPublicKey(pub)
		if err != nil {
			return "", "", err
		}
		return name, "v=DKIM1; k=rsa; p=" + base64.StdEncoding.EncodeToString(der), nil
	case ed25519.PublicKey:
		return name, "v=DKIM1; k=ed25519; p=" + base64.StdEncoding.EncodeToString(pub), nil
	}
	return "", "", fmt.Errorf("dkim: unsupported public key %T", pub)
}

// ZoneLine is the record as a zone-file line; TXT strings are split at 255
// bytes as DNS requires, which RSA keys exceed.
func ZoneLine(name, value string) string {
	var parts []string
	for len(value) > 255 {
		parts = append(parts, `"`+value[:255]+`"`)
		value = value[255:]
	}
	parts = append(parts, `"`+value+`"`)
	return fmt.Sprintf("%s. IN TXT ( %s )", name, strings.Join(parts, " "))
}
