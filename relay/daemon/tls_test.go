package daemon

import (
	"crypto/tls"
	"net"
	"strings"
	"testing"
	"time"

	"github.com/smarthost/smarthost/configs"
)

// Nodes that share a secret derive the same keys; the key that seals in a
// period still opens in the next one (a ticket lives one to two periods),
// and another secret gives other keys.
func TestTicketKeys(t *testing.T) {
	secret := []byte("0123456789abcdef0123456789abcdef")
	now, next := ticketKeys(secret, 100), ticketKeys(secret, 101)
	if len(now) != 2 || now[0] == now[1] {
		t.Fatalf("want two distinct keys, got %x", now)
	}
	if next[1] != now[0] {
		t.Error("the key sealing now does not open tickets in the next period")
	}
	if again := ticketKeys(secret, 100); again[0] != now[0] || again[1] != now[1] {
		t.Error("the same secret and period gave other keys")
	}
	if other := ticketKeys([]byte("another secret, as long as needed"), 100); other[0] == now[0] {
		t.Error("another secret gave the same key")
	}
}

// TLS 1.2 is AEAD only unless tls.cbc_ciphers brings the CBC-SHA suites
// back; a client that has nothing else is refused, then served.
func TestTLS12CipherSuites(t *testing.T) {
	cert, err := selfSigned("relay.test")
	if err != nil {
		t.Fatal(err)
	}
	h := &tlsMaterial{}
	h.setCert(cert)
	handshake := func(server *tls.Config, suite uint16) (uint16, error) {
		a, b := net.Pipe()
		defer a.Close()
		defer b.Close()
		go tls.Server(a, server).Handshake()
		c := tls.Client(b, &tls.Config{InsecureSkipVerify: true, MaxVersion: tls.VersionTLS12, CipherSuites: []uint16{suite}})
		b.SetDeadline(time.Now().Add(10 * time.Second))
		err := c.Handshake()
		return c.ConnectionState().CipherSuite, err
	}
	if _, err := handshake(h.config(configs.TLS{}), tls.TLS_ECDHE_ECDSA_WITH_AES_128_CBC_SHA); err == nil {
		t.Error("a TLS 1.2 client with only ECDHE-ECDSA-AES128-SHA got a session by default")
	}
	if got, err := handshake(h.config(configs.TLS{}), tls.TLS_ECDHE_ECDSA_WITH_AES_128_GCM_SHA256); err != nil || got != tls.TLS_ECDHE_ECDSA_WITH_AES_128_GCM_SHA256 {
		t.Errorf("AES-GCM by default: %v, suite %x", err, got)
	}
	if got, err := handshake(h.config(configs.TLS{CBCCiphers: true}), tls.TLS_ECDHE_ECDSA_WITH_AES_128_CBC_SHA); err != nil || got != tls.TLS_ECDHE_ECDSA_WITH_AES_128_CBC_SHA {
		t.Errorf("ECDHE-ECDSA-AES128-SHA with cbc_ciphers: %v, suite %x", err, got)
	}
	for _, s := range aeadSuites {
		if tls.CipherSuiteName(s) == "" || !strings.Contains(tls.CipherSuiteName(s), "GCM") && !strings.Contains(tls.CipherSuiteName(s), "CHACHA20") {
			t.Errorf("%s in the default list is not AEAD", tls.CipherSuiteName(s))
		}
	}
}
