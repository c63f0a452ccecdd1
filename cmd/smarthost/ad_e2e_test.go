package main

// The relay against the real Samba AD domain controller that scripts/test.sh
// starts (scripts/samba-ad.sh), configured as docs/active-directory.md
// says: the "ad" preset, LDAPS with the DC's own CA, a required group,
// class and recipient rules from attributes of AD's base schema.

import (
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/smarthost/smarthost/relay/relaytest"
)

func adEnv(t testing.TB, name string) string { return relaytest.Service(t, "SMARTHOST_TEST_AD_"+name) }

// adRelay is a relay whose users are the test DC's. Messages of the class
// bulk go to the outbox bulk/, the others to outbox/.
func adRelay(t *testing.T, extra string) *relayEnv {
	dir := t.TempDir()
	e := newRelayEnv(t, envOpts{extra: extra, upstreams: fmt.Sprintf(`upstreams:
  - {name: up, url: "file://%s/outbox"}
  - {name: bulk, url: "file://%s/bulk"}
routes:
  - {match: {classes: [bulk]}, upstreams: [bulk]}
  - upstreams: [up]`, dir, dir)})
	e.outbox = filepath.Join(dir, "outbox")
	text, _ := os.ReadFile(e.config)
	auth := fmt.Sprintf(`auth:
  backend: ldap
  ldap:
    preset: ad
    urls: [%q]
    ca_file: %q
    bind_dn: %q
    bind_password: ${SMARTHOST_TEST_AD_BIND_PW}
    base_dn: %q
    required_group: %q
    class_attribute: msDS-cloudExtensionAttribute1
    recipient_rules_attribute: msDS-cloudExtensionAttribute2
    timeout: 2s
`, adEnv(t, "LDAPS_URL"), adEnv(t, "CA"), adEnv(t, "BIND_DN"), adEnv(t, "BASE"), adEnv(t, "GROUP"))
	cfg := string(text)
	start, end := strings.Index(cfg, "auth:\n"), strings.Index(cfg, "policy:\n")
	cfg = cfg[:start] + auth + cfg[end:]
	if err := os.WriteFile(e.config, []byte(cfg), 0o600); err != nil {
		t.Fatal(err)
	}
	return e
}

func swaksTo(t *testing.T, e *relayEnv, user, pass, from, to string) string {
	out, _ := swaks(t, "--server", e.starttls, "--tls", "--auth", "PLAIN", "--auth-user", user, "--auth-password", pass,
		"--from", from, "--to", to, "--h-Subject", "ad e2e")
	return out
}

func TestActiveDirectory(t *testing.T) {
	web := freePort(t)
	e := adRelay(t, fmt.Sprintf("metrics: {listen: %q}\n", web))
	out, err := probe(t, e.config)
	if exitCode(err) != 0 || strings.Contains(out, "warning") ||
		!strings.Contains(out, "ok (service bind): Active Directory, base_dn found, required_group found") {
		t.Fatalf("check-config --probe: exit %d\n%s", exitCode(err), out)
	}
	p := e.start(t)
	const queued, refused = "250 2.0.0 OK: queued as", "535 5.7.8 Authentication credentials invalid"

	t.Run("the three login forms, sending as a proxyAddresses alias", func(t *testing.T) {
		for _, login := range []string{"alice", `CORP\alice`, "alice@corp.example.test"} {
			if out := swaksTo(t, e, login, "Alice-Passw0rd!", "alice.alias@corp.example.test", "x@example.org"); !strings.Contains(out, queued) {
				t.Errorf("%s as alice.alias@:\n%s", login, out)
			}
		}
		if out := swaksTo(t, e, "alice", "Alice-Passw0rd!", "b.builder@corp.example.test", "x@example.org"); !strings.Contains(out, "553 5.7.1 Sender address rejected: not owned by user") {
			t.Errorf("alice as bob's alias:\n%s", out)
		}
		if out := swaksTo(t, e, "alice", "wrong", "alice@corp.example.test", "x@example.org"); !strings.Contains(out, refused) {
			t.Errorf("a wrong password:\n%s", out)
		}
	})

	t.Run("nested group, class and recipient rules", func(t *testing.T) {
		if out := swaksTo(t, e, "robert.builder@corp.example.test", "Bob-Passw0rd!", "b.builder@corp.example.test", "x@partner.example"); !strings.Contains(out, queued) {
			t.Errorf("bob, in the group through a nested one:\n%s", out)
		}
		if out := swaksTo(t, e, `CORP\bob`, "Bob-Passw0rd!", "bob@corp.example.test", "ceo@example.org"); !strings.Contains(out, "550 5.7.1") {
			t.Errorf("bob to a recipient his rules deny:\n%s", out)
		}
		if out := swaksTo(t, e, "carol", "Carol-Passw0rd!", "carol@corp.example.test", "x@example.org"); !strings.Contains(out, refused) {
			t.Errorf("carol, in no group:\n%s", out)
		}
		// bob's class, bulk, routes his message to its own outbox.
		relaytest.Eventually(t, "bob's message in the outbox of class bulk", 10*time.Second, func() bool {
			files, _ := filepath.Glob(filepath.Join(filepath.Dir(e.outbox), "bulk", "*.eml"))
			return len(files) == 1
		})
	})

	states := map[string]string{"dave": "disabled", "erin": "password_must_change", "frank": "expired", "grace": "locked", "heidi": "password_expired"}
	t.Run("account states: 535 on the wire, the reason in the log and the metrics", func(t *testing.T) {
		for user, reason := range states {
			out := swaksTo(t, e, user, strings.ToUpper(user[:1])+user[1:]+"-Passw0rd!", user+"@corp.example.test", "x@example.org")
			if !strings.Contains(out, refused) || strings.Contains(out, reason) {
				t.Errorf("%s: want a plain 535:\n%s", user, out)
			}
		}
		log := p.logText()
		for user, reason := range states {
			if !strings.Contains(log, "reason="+reason) || !strings.Contains(log, "CN="+user+",") {
				t.Errorf("%s: no reason=%s in the log", user, reason)
			}
		}
		_, text := httpGet(t, "http://"+web+"/metrics")
		for _, reason := range states {
			if v := metric(text, `smarthost_auth_total{result="`+reason+`"}`); v != 1 {
				t.Errorf(`smarthost_auth_total{result=%q} = %v, want 1`, reason, v)
			}
		}
	})

	t.Run("DC stopped: 454, then recovery", func(t *testing.T) {
		resume := relaytest.Freeze(t, "SMARTHOST_TEST_AD_PIDFILE")
		// A login not made before: the login cache cannot answer it.
		out := swaksTo(t, e, `corp\Bob`, "Bob-Passw0rd!", "bob@corp.example.test", "x@example.org")
		if !strings.Contains(out, "454 4.7.0 Temporary authentication failure") {
			t.Errorf("DC stopped:\n%s", out)
		}
		resume()
		relaytest.Eventually(t, "a login once the DC runs again", 30*time.Second, func() bool {
			out = swaksTo(t, e, `corp\Bob`, "Bob-Passw0rd!", "bob@corp.example.test", "x@example.org")
			return strings.Contains(out, queued)
		})
	})
}
