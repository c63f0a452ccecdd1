package main

// docs/apps.md's snippets, each run as the page has it against a relay,
// with only the host (localhost), the port and the certificate's file put
// in: the relay's certificate is self-signed, kept in a file, and trusted
// the way the page says to trust a private CA's.

import (
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"golang.org/x/crypto/bcrypt"

	"github.com/smarthost/smarthost/relay/relaytest"
)

// snippetEnv is a relay that knows app1 (app1-password, app1@example.com),
// its certificate in cert, its upstream a recording sink.
type snippetEnv struct {
	*relayEnv
	up   *relaytest.Sink
	cert string
	seen int
}

func newSnippetEnv(t *testing.T) *snippetEnv {
	t.Helper()
	up := sink(t, freePort(t))
	h, _ := bcrypt.GenerateFromPassword([]byte("app1-password"), bcrypt.MinCost)
	e := newRelayEnv(t, envOpts{upstream: "smtp://" + up.Addr,
		users: fmt.Sprintf("  app1:\n    password_hash: %q\n    addresses: [app1@example.com]\n", h)})
	// Postfix's smtp client reads the certificate as user postfix.
	certDir, err := os.MkdirTemp("", "snippets-")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { os.RemoveAll(certDir) })
	os.Chmod(certDir, 0o755)
	s := &snippetEnv{relayEnv: e, up: up, cert: filepath.Join(certDir, "cert.pem")}
	setConfig(t, e, "tls: {self_signed: true}", fmt.Sprintf("tls: {self_signed: true, cert_file: %q, key_file: %q}", s.cert, filepath.Join(certDir, "key.pem")))
	e.start(t)
	os.Chmod(s.cert, 0o644)
	return s
}

// fill puts the test relay into a snippet.
func (s *snippetEnv) fill(snippet string) string {
	return strings.NewReplacer("relay.example.com", "localhost", "587", port(s.starttls)).Replace(snippet)
}

// run runs cmd with the password and the certificate's trust in its
// environment, and fails the test when it fails.
func (s *snippetEnv) run(t *testing.T, cmd *exec.Cmd) string {
	t.Helper()
	cmd.Env = append(os.Environ(), "SMTP_PASSWORD=app1-password", "SSL_CERT_FILE="+s.cert, "NODE_EXTRA_CA_CERTS="+s.cert,
		"CURL_CA_BUNDLE="+s.cert, "NODE_PATH=/usr/share/nodejs")
	return runClient(t, cmd)
}

// arrived waits for the next message at the upstream: from app1, signed.
func (s *snippetEnv) arrived(t *testing.T, subject string) {
	t.Helper()
	s.seen++
	msgs := s.up.Wait(s.seen, 30*time.Second)
	if len(msgs) < s.seen {
		t.Fatalf("the upstream got %d messages, want %d", len(msgs), s.seen)
	}
	m := msgs[s.seen-1]
	if m.From != "app1@example.com" || !strings.Contains(string(m.Data), "Subject: "+subject+"\r\n") {
		t.Fatalf("the upstream got %s -> %v:\n%s", m.From, m.To, m.Data)
	}
	dkimVerify(t, s.records, m.Data)
}

func TestAppSnippets(t *testing.T) {
	s := newSnippetEnv(t)
	t.Run("nodemailer", func(t *testing.T) {
		need(t, "/usr/share/nodejs/nodemailer/package.json")
		need(t, "/usr/bin/node")
		out := s.run(t, exec.Command("/usr/bin/node", "-e", s.fill(docSnippet(t, "docs/apps.md", "nodemailer"))))
		if !strings.Contains(out, "250 2.0.0 OK: queued as ") {
			t.Errorf("nodemailer printed %q", out)
		}
		s.arrived(t, "Hello from nodemailer")
	})
	t.Run("python-smtplib", func(t *testing.T) {
		code := docSnippet(t, "docs/apps.md", "python-smtplib")
		if readme := docSnippet(t, "README.md", "python-smtplib"); readme != code {
			t.Fatalf("the README's smtplib snippet differs from docs/apps.md's:\n%s", readme)
		}
		s.run(t, exec.Command(python, "-c", s.fill(code)))
		s.arrived(t, "Hello from smtplib")
	})
	t.Run("django", func(t *testing.T) {
		need(t, python, "-c", "import django")
		settings := s.fill(docSnippet(t, "docs/apps.md", "django"))
		s.run(t, exec.Command(python, "-c", `
import os, sys
ns = {}
exec(sys.argv[1], {"os": os}, ns)
from django.conf import settings
settings.configure(**ns)
import django
django.setup()
from django.core.mail import send_mail
print(send_mail("Hello from Django", "Sent through smarthost.", None, ["you@example.org"]))
`, settings))
		s.arrived(t, "Hello from Django")
	})
	t.Run("phpmailer", func(t *testing.T) {
		need(t, "/usr/bin/php")
		need(t, "/usr/share/php/libphp-phpmailer/autoload.php")
		script := filepath.Join(t.TempDir(), "send.php")
		code := strings.Replace(s.fill(docSnippet(t, "docs/apps.md", "phpmailer")), `"vendor/autoload.php"`, `"/usr/share/php/libphp-phpmailer/autoload.php"`, 1)
		os.WriteFile(script, []byte(code), 0o600)
		s.run(t, exec.Command("/usr/bin/php", script))
		s.arrived(t, "Hello from PHPMailer")
	})
	t.Run("msmtp", func(t *testing.T) {
		need(t, "/usr/bin/msmtp")
		rc := filepath.Join(t.TempDir(), "msmtprc")
		conf := strings.Replace(s.fill(docSnippet(t, "docs/apps.md", "msmtp")), "tls_trust_file system", "tls_trust_file "+s.cert, 1)
		os.WriteFile(rc, []byte(conf), 0o600)
		cmd := exec.Command("/usr/bin/msmtp", "-C", rc, "-t")
		cmd.Stdin = strings.NewReader("From: app1@example.com\nTo: you@example.org\nSubject: Hello from msmtp\n\nSent through smarthost.\n")
		s.run(t, cmd)
		s.arrived(t, "Hello from msmtp")
	})
	t.Run("postfix", func(t *testing.T) {
		dir, err := os.MkdirTemp("", "nullclient-") // read by Postfix's own user
		if err != nil {
			t.Fatal(err)
		}
		t.Cleanup(func() { os.RemoveAll(dir) })
		os.Chmod(dir, 0o755)
		sasl := filepath.Join(dir, "sasl_passwd")
		os.WriteFile(sasl, []byte(s.fill(docSnippet(t, "docs/apps.md", "postfix-sasl"))), 0o644)
		main := strings.NewReplacer("/etc/postfix/sasl_passwd", sasl, "/etc/ssl/certs/ca-certificates.crt", s.cert).
			Replace(s.fill(docSnippet(t, "docs/apps.md", "postfix-main")))
		// localhost is in /etc/hosts, not in DNS, where Postfix looks by
		// default; relay.example.com would be in DNS.
		pf := relaytest.StartPostfix(t, relaytest.PostfixOptions{Main: append([]string{"myhostname = app-host.example.com", "smtp_host_lookup = native", "smtp_tls_loglevel = 1"},
			strings.Split(strings.TrimSpace(main), "\n")...)})
		if err := pf.Sendmail("app1@example.com", []string{"you@example.org"},
			"From: app1@example.com\nTo: you@example.org\nSubject: Hello from Postfix\n\nSent through smarthost.\n"); err != nil {
			t.Fatal(err)
		}
		s.arrived(t, "Hello from Postfix")
		if !strings.Contains(pf.Log(), "Verified TLS connection established to localhost") {
			t.Errorf("the null client did not verify the relay's certificate:\n%s", pf.Log())
		}
	})
	t.Run("curl", func(t *testing.T) {
		need(t, "/usr/bin/curl")
		dir := t.TempDir()
		os.WriteFile(filepath.Join(dir, "message.eml"), []byte("From: app1@example.com\r\nTo: you@example.org\r\nSubject: Hello from curl\r\n\r\nSent through smarthost.\r\n"), 0o600)
		cmd := exec.Command("/bin/sh", "-ec", s.fill(docSnippet(t, "docs/apps.md", "curl")))
		cmd.Dir = dir
		s.run(t, cmd)
		s.arrived(t, "Hello from curl")
	})
}
