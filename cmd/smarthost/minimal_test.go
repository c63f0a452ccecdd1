package main

import (
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/x509"
	"crypto/x509/pkix"
	"encoding/pem"
	"math/big"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"golang.org/x/crypto/bcrypt"

	"github.com/smarthost/smarthost/dkim"
)

// configs/minimal.yaml is the production starting point the README, the
// .deb and the image point to: check-config refuses it while the files it
// names are missing, and accepts it once they exist, with nothing else
// changed but where /etc/smarthost and /var/lib/smarthost are.
func TestMinimalConfig(t *testing.T) {
	root := t.TempDir()
	etc := filepath.Join(root, "etc", "smarthost")
	cfg := filepath.Join(root, "smarthost.yaml")
	text, err := os.ReadFile("../../configs/minimal.yaml")
	if err != nil {
		t.Fatal(err)
	}
	if n := strings.Count(string(text), "\n"); n > 45 {
		t.Errorf("minimal.yaml has %d lines; it is meant to be read in one go", n)
	}
	moved := strings.NewReplacer("/etc/smarthost/", etc+"/", "/var/lib/smarthost/", root+"/var/lib/smarthost/").Replace(string(text))
	os.WriteFile(cfg, []byte(moved), 0o600)

	out, err := runCLI("check-config", "--config", cfg)
	if exitCode(err) != 2 {
		t.Fatalf("check-config without the files: exit %d, want 2\n%s", exitCode(err), out)
	}
	if !strings.Contains(out, "upstream_password") {
		t.Errorf("check-config without the files does not name the password file:\n%s", out)
	}

	writeMinimalFiles(t, etc)
	out, err = runCLI("check-config", "--config", cfg)
	if exitCode(err) != 0 || !strings.Contains(out, "configuration is valid") || strings.Contains(out, "warning") {
		t.Fatalf("check-config with the files: exit %d\n%s", exitCode(err), out)
	}
	os.Remove(filepath.Join(etc, "users.yaml"))
	if out, err := runCLI("check-config", "--config", cfg); exitCode(err) != 2 || !strings.Contains(out, "users.yaml") {
		t.Errorf("check-config without the users file: exit %d, want 2 naming it\n%s", exitCode(err), out)
	}
}

// writeMinimalFiles puts into etc (what is /etc/smarthost) every file
// configs/minimal.yaml names: a certificate for relay.example.com, a users
// file, the DKIM key and the upstream's password. All are readable by
// anyone, for the image's unprivileged user; a real install keeps them
// 0640 or 0600 for the relay's user.
func writeMinimalFiles(t *testing.T, etc string) {
	t.Helper()
	for _, d := range []string{"tls", "dkim"} {
		if err := os.MkdirAll(filepath.Join(etc, d), 0o755); err != nil {
			t.Fatal(err)
		}
	}
	certPEM, keyPEM := testCertificate(t, "relay.example.com")
	hash, _ := bcrypt.GenerateFromPassword([]byte("app1-password"), bcrypt.MinCost)
	_, dkimPEM, err := dkim.GenerateKey("ed25519")
	if err != nil {
		t.Fatal(err)
	}
	files := map[string][]byte{
		"tls/fullchain.pem":       certPEM,
		"tls/privkey.pem":         keyPEM,
		"users.yaml":              []byte("users:\n  app1:\n    password_hash: \"" + string(hash) + "\"\n    addresses: [\"*@example.com\"]\n"),
		"dkim/example.com.s1.key": dkimPEM,
		"upstream_password":       []byte("upstream-secret\n"),
	}
	for name, b := range files {
		if err := os.WriteFile(filepath.Join(etc, name), b, 0o644); err != nil {
			t.Fatal(err)
		}
	}
}

// testCertificate makes a self-signed certificate and its key, as PEM.
func testCertificate(t *testing.T, host string) (certPEM, keyPEM []byte) {
	t.Helper()
	key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		t.Fatal(err)
	}
	tmpl := &x509.Certificate{
		SerialNumber: big.NewInt(time.Now().UnixNano()),
		Subject:      pkix.Name{CommonName: host},
		NotBefore:    time.Now().Add(-time.Hour),
		NotAfter:     time.Now().Add(24 * time.Hour),
		KeyUsage:     x509.KeyUsageDigitalSignature,
		ExtKeyUsage:  []x509.ExtKeyUsage{x509.ExtKeyUsageServerAuth},
		DNSNames:     []string{host, "localhost"},
	}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, tmpl, key.Public(), key)
	if err != nil {
		t.Fatal(err)
	}
	k, _ := x509.MarshalPKCS8PrivateKey(key)
	return pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: der}), pem.EncodeToMemory(&pem.Block{Type: "PRIVATE KEY", Bytes: k})
}
