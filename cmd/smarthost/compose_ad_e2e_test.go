package main

// The compose stack's "ad" profile: one relay whose users are in a Samba
// AD domain controller (deploy/compose/samba-ad/, an image built from
// Debian's samba-ad-dc with scripts/samba-ad.sh), with Redis, Mailpit and
// the stack's DKIM key.

import (
	"os"
	"strings"
	"testing"
	"time"

	"github.com/smarthost/smarthost/relay/relaytest"
)

func TestComposeStackAD(t *testing.T) {
	s := newStack(t, "smarthost-ad-test")
	s.flags = []string{"--profile", "ad"}
	s.smtp = freePort(t)
	web := freePort(t)
	s.mailpit = "http://" + web
	s.env = append(os.Environ(), "AD_SMTP_PORT="+port(s.smtp), "MAILPIT_PORT="+port(web),
		"SMARTHOST_BACK_SUBNET="+s.subnet(157)+".0/24", "SMARTHOST_HAPROXY_IP="+s.haproxyIP())
	t.Cleanup(func() {
		if t.Failed() {
			out, _ := s.compose("logs", "--no-color", "--tail", "60", "relay-ad", "samba-ad")
			t.Logf("compose logs:\n%s", out)
		}
		s.compose("down", "-v", "--remove-orphans")
	})
	if out, err := s.compose("up", "-d", "relay-ad"); err != nil {
		t.Fatalf("compose up relay-ad: %v\n%s", err, out)
	}
	relaytest.Eventually(t, "the AD relay", 120*time.Second, func() bool { return s.smtpUp() })

	const config = "/etc/smarthost/smarthost.yaml"
	// The stack publishes no DNS, so the DKIM record is reported missing
	// (exit 1); every other probe, the DC's above all, must be ok.
	out, _ := s.compose("exec", "-T", "relay-ad", "/smarthost", "check-config", "--probe", "--config", config)
	if strings.Count(out, "ok (service bind): Active Directory, base_dn found, required_group found") != 2 {
		t.Fatalf("check-config --probe against the DC and its Global Catalog:\n%s", out)
	}
	for _, line := range strings.Split(strings.TrimSpace(out), "\n") {
		switch {
		case strings.HasSuffix(line, "configuration is valid"), strings.Contains(line, ": ok"):
		case strings.HasPrefix(line, "dkim ") && strings.Contains(line, ": missing: "):
		default:
			t.Errorf("check-config --probe: unexpected line %q in:\n%s", line, out)
		}
	}

	// CORP\alice as her proxyAddresses alias: queued, signed, delivered.
	out, code := swaks(t, "--server", s.smtp, "--tls", "--auth-user", `CORP\alice`, "--auth-password", "Alice-Passw0rd!",
		"--from", "alice.alias@example.com", "--to", "someone@example.org", "--h-Subject", "compose ad alias")
	if code != 0 {
		t.Fatalf("swaks as alice.alias@: %d\n%s", code, out)
	}
	raw := s.signedArrives(t, "compose ad alias")
	if !strings.Contains(string(raw), "From: alice.alias@example.com") {
		t.Errorf("not alice's alias in From:\n%s", raw)
	}

	// Someone else's address, and a disabled account.
	out, _ = swaks(t, "--server", s.smtp, "--tls", "--auth-user", "alice@corp.example.test", "--auth-password", "Alice-Passw0rd!",
		"--from", "b.builder@example.com", "--to", "someone@example.org")
	if !strings.Contains(out, "553 5.7.1") {
		t.Errorf("alice as bob's alias:\n%s", out)
	}
	out, _ = swaks(t, "--server", s.smtp, "--tls", "--auth-user", "dave", "--auth-password", "Dave-Passw0rd!",
		"--from", "dave@example.com", "--to", "someone@example.org")
	if !strings.Contains(out, "535 5.7.8") {
		t.Errorf("dave, disabled:\n%s", out)
	}
	if logs, _ := s.compose("logs", "--no-color", "relay-ad"); !strings.Contains(logs, `"reason":"disabled"`) {
		t.Errorf(`no "reason":"disabled" in the relay's log:\n%s`, logs)
	}
}
