package main

import (
	"fmt"
	"os"
	"strings"
	"testing"

	"github.com/smarthost/smarthost/relay/relaytest"
)

func ldapEnv(t testing.TB, name string) string { return relaytest.Service(t, name) }

// ldapRelay is a relay whose users come from the test slapd (or, with url,
// from somewhere else).
func ldapRelay(t *testing.T, url string, extra ...string) *relayEnv {
	if url == "" {
		url = ldapEnv(t, "SMARTHOST_TEST_LDAP_URL")
	}
	e := newRelayEnv(t, envOpts{extra: strings.Join(extra, "")})
	text, _ := os.ReadFile(e.config)
	auth := fmt.Sprintf(`auth:
  backend: ldap
  ldap:
    urls: [%q]
    start_tls: true
    ca_file: %q
    bind_dn: %q
    bind_password: ${SMARTHOST_TEST_LDAP_BIND_PW}
    base_dn: %q
    user_filter: "(&(objectClass=inetOrgPerson)(uid={username}))"
    address_attributes: [mail]
    class_attribute: employeeType
    required_group: %q
    timeout: 2s
`, url, ldapEnv(t, "SMARTHOST_TEST_LDAP_CA"), ldapEnv(t, "SMARTHOST_TEST_LDAP_BIND_DN"),
		ldapEnv(t, "SMARTHOST_TEST_LDAP_BASE"), ldapEnv(t, "SMARTHOST_TEST_LDAP_GROUP"))
	cfg := string(text)
	start := strings.Index(cfg, "auth:\n")
	end := strings.Index(cfg, "policy:\n")
	cfg = cfg[:start] + auth + cfg[end:]
	os.WriteFile(e.config, []byte(cfg), 0o600)
	return e
}

func swaksAs(t *testing.T, e *relayEnv, user, pass, from string) string {
	out, _ := swaks(t, "--server", e.starttls, "--tls", "--auth", "PLAIN", "--auth-user", user, "--auth-password", pass,
		"--from", from, "--to", "rcpt@example.org", "--h-Subject", "ldap e2e")
	return out
}

func TestLDAPUsersEndToEnd(t *testing.T) {
	e := ldapRelay(t, "")
	out, err := probe(t, e.config)
	if exitCode(err) != 0 || !strings.Contains(out, "ok (service bind)") {
		t.Fatalf("probe: exit %d\n%s", exitCode(err), out)
	}
	e.start(t)
	if out := swaksAs(t, e, "alice", "alice-secret", "alice.smith@example.com"); queuedRe.FindString(out) == "" {
		t.Errorf("alice as her second address:\n%s", out)
	}
	if out := swaksAs(t, e, "carol", "pässwörd-€", "carol@example.com"); queuedRe.FindString(out) == "" {
		t.Errorf("carol with a non-ASCII password:\n%s", out)
	}
	if out := swaksAs(t, e, "alice", "alice-secret", "bob@example.com"); !strings.Contains(out, "553 5.7.1 Sender address rejected: not owned by user") {
		t.Errorf("alice as bob:\n%s", out)
	}
	for _, c := range [][2]string{{"alice", "wrong"}, {"dave", "dave-secret"}, {"al*", "alice-secret"}} {
		if out := swaksAs(t, e, c[0], c[1], "alice@example.com"); !strings.Contains(out, "535 5.7.8 Authentication credentials invalid") {
			t.Errorf("%s: want 535:\n%s", c[0], out)
		}
	}
}

func TestLDAPDownIs454(t *testing.T) {
	e := ldapRelay(t, "ldap://"+freePort(t))
	e.start(t)
	out := swaksAs(t, e, "alice", "alice-secret", "alice@example.com")
	if !strings.Contains(out, "454 4.7.0 Temporary authentication failure") {
		t.Fatalf("LDAP down:\n%s", out)
	}
}
