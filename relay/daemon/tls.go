package daemon

// The relay's TLS: its certificate (from files, or made for development),
// swapped by SIGHUP, and the session ticket keys it may share with the
// other nodes.

import (
	"bytes"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/hmac"
	"crypto/rand"
	"crypto/sha256"
	"crypto/tls"
	"crypto/x509"
	"crypto/x509/pkix"
	"encoding/pem"
	"errors"
	"fmt"
	"log/slog"
	"math/big"
	"net"
	"os"
	"sync"
	"sync/atomic"
	"time"

	"github.com/smarthost/smarthost/configs"
	"github.com/smarthost/smarthost/dkim"
)

// loadCert loads the relay's certificate. With tls.self_signed it makes
// one: in memory, or, when cert_file and key_file are named, into those
// files the first time (with create; check-config writes nothing) and from
// them after, so that an application can trust the same certificate
// across restarts.
func loadCert(f *configs.File, create bool, log *slog.Logger) (*tls.Certificate, error) {
	t := f.TLS
	if t.SelfSigned && t.CertFile == "" {
		return selfSigned(f.Hostname)
	}
	c, err := tls.LoadX509KeyPair(t.CertFile, t.KeyFile)
	if err != nil && t.SelfSigned && missing(t.CertFile) {
		if !create {
			return nil, nil // serve will make it
		}
		if err = writeSelfSigned(f.Hostname, t.CertFile, t.KeyFile); err == nil {
			c, err = tls.LoadX509KeyPair(t.CertFile, t.KeyFile)
			log.Warn("created a self-signed certificate; applications can trust this file", "file", t.CertFile, "names", []string{f.Hostname, "localhost", "127.0.0.1", "::1"})
		}
	}
	if err != nil {
		return nil, fmt.Errorf("cannot load certificate: %w", err)
	}
	return &c, nil
}

func missing(path string) bool {
	_, err := os.Stat(path)
	return errors.Is(err, os.ErrNotExist)
}

// writeSelfSigned writes a self-signed certificate for the key in keyFile,
// making that key first (owner-only, whole or not at all) unless a start
// cut short left one. The certificate appears whole or not at all too.
func writeSelfSigned(hostname, certFile, keyFile string) error {
	var key *ecdsa.PrivateKey
	if b, err := os.ReadFile(keyFile); err == nil {
		block, _ := pem.Decode(b)
		if block == nil {
			return fmt.Errorf("%s holds no PEM key", keyFile)
		}
		k, err := x509.ParsePKCS8PrivateKey(block.Bytes)
		if key, _ = k.(*ecdsa.PrivateKey); err != nil || key == nil {
			return fmt.Errorf("%s: not the ECDSA key of a self-signed certificate", keyFile)
		}
	} else {
		if key, err = ecdsa.GenerateKey(elliptic.P256(), rand.Reader); err != nil {
			return err
		}
		der, err := x509.MarshalPKCS8PrivateKey(key)
		if err != nil {
			return err
		}
		if err := dkim.WriteKey(keyFile, pem.EncodeToMemory(&pem.Block{Type: "PRIVATE KEY", Bytes: der})); err != nil {
			return err
		}
	}
	der, err := selfSignedDER(hostname, key)
	if err != nil {
		return err
	}
	tmp := certFile + ".tmp"
	if err := os.WriteFile(tmp, pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: der}), 0o644); err != nil {
		return err
	}
	return os.Rename(tmp, certFile)
}

// selfSigned makes an in-memory certificate for development.
func selfSigned(hostname string) (*tls.Certificate, error) {
	key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		return nil, err
	}
	der, err := selfSignedDER(hostname, key)
	return &tls.Certificate{Certificate: [][]byte{der}, PrivateKey: key}, err
}

// selfSignedDER makes a certificate for key, signed by itself, naming
// hostname, localhost and the loopback addresses.
func selfSignedDER(hostname string, key *ecdsa.PrivateKey) ([]byte, error) {
	serial, _ := rand.Int(rand.Reader, big.NewInt(1<<62))
	tmpl := &x509.Certificate{
		SerialNumber: serial,
		Subject:      pkix.Name{CommonName: hostname, Organization: []string{"smarthost self-signed"}},
		NotBefore:    time.Now().Add(-time.Hour),
		NotAfter:     time.Now().Add(10 * 365 * 24 * time.Hour),
		KeyUsage:     x509.KeyUsageDigitalSignature,
		ExtKeyUsage:  []x509.ExtKeyUsage{x509.ExtKeyUsageServerAuth},
		DNSNames:     []string{hostname, "localhost"},
		IPAddresses:  []net.IP{net.IPv4(127, 0, 0, 1), net.IPv6loopback},
	}
	return x509.CreateCertificate(rand.Reader, tmpl, tmpl, key.Public(), key)
}

// tlsMaterial serves the current certificate, and the session ticket keys
// shared with the other nodes (below); a reload swaps both.
type tlsMaterial struct {
	cert atomic.Pointer[tls.Certificate]

	mu           sync.Mutex
	secret       []byte
	sharedSealer *tls.Config // sealing with the keys of period, made at its first use
	period       int64
	ownSealer    *tls.Config // sealing with Go's own keys, without a secret
}

func (m *tlsMaterial) setCert(c *tls.Certificate) { m.cert.Store(c) }

// aeadSuites are the TLS 1.2 suites offered by default: forward secret
// and AEAD only, as Mozilla's "intermediate" profile has them. TLS 1.3's
// suites are all AEAD and not configurable.
var aeadSuites = []uint16{
	tls.TLS_ECDHE_ECDSA_WITH_AES_128_GCM_SHA256,
	tls.TLS_ECDHE_RSA_WITH_AES_128_GCM_SHA256,
	tls.TLS_ECDHE_ECDSA_WITH_AES_256_GCM_SHA384,
	tls.TLS_ECDHE_RSA_WITH_AES_256_GCM_SHA384,
	tls.TLS_ECDHE_ECDSA_WITH_CHACHA20_POLY1305_SHA256,
	tls.TLS_ECDHE_RSA_WITH_CHACHA20_POLY1305_SHA256,
}

// cbcSuites are what tls.cbc_ciphers adds back for old clients: the
// ECDHE CBC-SHA suites Go offered before. CBC with HMAC-SHA1 is what
// LUCKY13 attacks (Go's implementation is constant-time against it, but
// scanners rightly flag the suites).
var cbcSuites = []uint16{
	tls.TLS_ECDHE_ECDSA_WITH_AES_128_CBC_SHA,
	tls.TLS_ECDHE_RSA_WITH_AES_128_CBC_SHA,
	tls.TLS_ECDHE_ECDSA_WITH_AES_256_CBC_SHA,
	tls.TLS_ECDHE_RSA_WITH_AES_256_CBC_SHA,
}

// config is the server side's TLS configuration, which serves the
// certificate and the ticket keys of the moment.
func (m *tlsMaterial) config(t configs.TLS) *tls.Config {
	v := uint16(tls.VersionTLS12)
	if t.MinVersion == "1.3" {
		v = tls.VersionTLS13
	}
	suites := aeadSuites
	if t.CBCCiphers {
		suites = append(append([]uint16{}, aeadSuites...), cbcSuites...)
	}
	return &tls.Config{
		MinVersion:   v,
		CipherSuites: suites,
		GetCertificate: func(*tls.ClientHelloInfo) (*tls.Certificate, error) {
			if c := m.cert.Load(); c != nil {
				return c, nil
			}
			return nil, errors.New("no certificate")
		},
		// Session tickets are sealed and opened with the keys of the
		// moment (sealer), which a reload may change.
		WrapSession: func(cs tls.ConnectionState, ss *tls.SessionState) ([]byte, error) {
			return m.sealer().EncryptTicket(cs, ss)
		},
		UnwrapSession: func(ticket []byte, cs tls.ConnectionState) (*tls.SessionState, error) {
			return m.sealer().DecryptTicket(ticket, cs)
		},
	}
}

// minTicketSecret is the least tls.session_ticket_key_file may hold.
const minTicketSecret = 32

// ticketPeriod is how long one session ticket key seals new tickets; the
// key of the period before still opens them, so a ticket lives one to two
// periods, as with Go's own keys (which it rotates daily).
const ticketPeriod = 24 * time.Hour

// ticketKeys derives the session ticket keys of period n, and of the one
// before, from the secret that every node behind the load balancer shares:
// each node computes the same keys, without talking to the others, and a
// client resumes its session on whichever node it lands. Each key is
// HMAC-SHA256(secret, label and period), so the secret itself never seals a
// ticket, and a key found out opens two periods' tickets at most.
func ticketKeys(secret []byte, n int64) [][32]byte {
	keys := make([][32]byte, 2)
	for i := range keys {
		m := hmac.New(sha256.New, secret)
		fmt.Fprintf(m, "smarthost TLS session ticket key, period %d", n-int64(i))
		copy(keys[i][:], m.Sum(nil))
	}
	return keys
}

// loadTicketSecret reads tls.session_ticket_key_file (none: nil).
func loadTicketSecret(path string) ([]byte, error) {
	if path == "" {
		return nil, nil
	}
	b, err := os.ReadFile(path)
	if err != nil {
		return nil, err
	}
	if b = bytes.TrimSpace(b); len(b) < minTicketSecret {
		return nil, fmt.Errorf("holds %d bytes; at least %d random ones are needed (openssl rand -base64 48)", len(b), minTicketSecret)
	}
	return b, nil
}

// setTicketSecret takes tls.session_ticket_key_file's secret (nil: each
// process keeps Go's own keys); SIGHUP sets it again.
func (m *tlsMaterial) setTicketSecret(secret []byte) {
	m.mu.Lock()
	defer m.mu.Unlock()
	m.secret, m.sharedSealer = secret, nil
}

// sealer is the configuration whose keys seal and open session tickets:
// the keys of the current period derived from the shared secret, or
// without one this process's own (Go's, made at random and rotated).
func (m *tlsMaterial) sealer() *tls.Config {
	m.mu.Lock()
	defer m.mu.Unlock()
	if m.secret == nil {
		if m.ownSealer == nil {
			m.ownSealer = &tls.Config{}
		}
		return m.ownSealer
	}
	n := time.Now().Unix() / int64(ticketPeriod/time.Second)
	if m.sharedSealer == nil || n != m.period {
		c := &tls.Config{}
		c.SetSessionTicketKeys(ticketKeys(m.secret, n))
		m.sharedSealer, m.period = c, n
	}
	return m.sharedSealer
}
