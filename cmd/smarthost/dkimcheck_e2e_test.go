package main

import (
	"context"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/smarthost/smarthost/dkim"
	"github.com/smarthost/smarthost/relay/relaytest"
)

// publishRecords puts the records `smarthost dkim dns` prints for config
// into srv, each as the strings it prints (an RSA-2048 record in two), and
// returns them by name.
func publishRecords(t *testing.T, srv *relaytest.DNS, config string) map[string][]string {
	t.Helper()
	out, err := runCLI("dkim", "dns", "--config", config)
	if err != nil {
		t.Fatalf("dkim dns: %v\n%s", err, out)
	}
	recs := map[string][]string{}
	re := regexp.MustCompile(`"([^"]*)"`)
	for _, line := range strings.Split(strings.TrimSpace(out), "\n") {
		name, _, _ := strings.Cut(line, " ")
		var strs []string
		for _, m := range re.FindAllStringSubmatch(line, -1) {
			strs = append(strs, m[1])
		}
		recs[strings.TrimSuffix(name, ".")] = strs
		srv.SetTXT(name, strs)
	}
	return recs
}

// probe runs check-config --probe on config, with its DKIM records
// published on a DNS server of the test's.
func probe(t *testing.T, config string) (string, error) {
	t.Helper()
	srv := relaytest.StartDNS(t)
	publishRecords(t, srv, config)
	return runCLI("check-config", "--probe", "--config", config, "--resolver", srv.Addr)
}

const (
	edName  = "e2e._domainkey.example.com"
	rsaName = "e2ersa._domainkey.example.com"
)

// smarthost dkim check, and check-config --probe, against a DNS server on
// loopback: each verdict, its line and the exit code.
func TestDKIMCheck(t *testing.T) {
	e := newRelayEnv(t, envOpts{})
	srv := relaytest.StartDNS(t)
	check := func(args ...string) (string, int) {
		out, err := runCLI(append(args, "--config", e.config, "--resolver", srv.Addr)...)
		return out, exitCode(err)
	}
	_, otherEd, _ := dkim.GenerateKey("ed25519")
	other, _ := dkim.ParseKey(otherEd)
	_, otherRecord, _ := dkim.DNSRecord("example.com", "e2e", other.Public())

	out, code := check("dkim", "check")
	if code != 1 || !strings.Contains(out, "dkim "+edName+" (ed25519): missing: no TXT record is published there\n") ||
		!strings.Contains(out, "dkim "+rsaName+" (rsa-2048): missing: no TXT record is published there\n") ||
		!strings.Contains(out, "smarthost dkim dns --config "+e.config+" prints the records to publish") {
		t.Fatalf("nothing published (NXDOMAIN): exit %d\n%s", code, out)
	}
	recs := publishRecords(t, srv, e.config)
	if len(recs[rsaName]) < 2 {
		t.Fatalf("the RSA record is in %d string(s), want it split as DNS needs", len(recs[rsaName]))
	}
	out, code = check("dkim", "check")
	if code != 0 || !strings.Contains(out, "dkim "+edName+" (ed25519): ok\n") || !strings.Contains(out, "dkim "+rsaName+" (rsa-2048): ok\n") ||
		strings.Contains(out, "prints the records") {
		t.Fatalf("both published: exit %d\n%s", code, out)
	}
	out, code = check("check-config", "--probe")
	if code != 0 || !strings.Contains(out, "dkim "+edName+" (ed25519): ok\n") || !strings.Contains(out, "dkim "+rsaName+" (rsa-2048): ok\n") {
		t.Fatalf("check-config --probe, both published: exit %d\n%s", code, out)
	}

	for _, c := range []struct {
		what     string
		ed, rsa  []string // the records' strings; nil: the name has no TXT record
		edLine   string
		rsaLine  string
		exitCode int
	}{
		{"no TXT at the name", nil, recs[rsaName], "missing: no TXT record is published there", "ok", 1},
		{"another key", []string{otherRecord}, recs[rsaName], "mismatched: p= is another public key than the key file's", "ok", 1},
		{"revoked", recs[edName], []string{"v=DKIM1; k=rsa; p="}, "ok", "revoked: p= is empty", 1},
		{"ed25519 record at the RSA key's name", recs[edName], recs[edName], "ok", "mismatched: k=ed25519, but the key file holds an rsa key", 1},
		{"testing", []string{recs[edName][0] + "; t=y"}, recs[rsaName], "ok (t=y: the domain is testing DKIM", "ok", 0},
	} {
		if c.ed == nil {
			srv.SetTXT(edName)
		} else {
			srv.SetTXT(edName, c.ed)
		}
		srv.SetTXT(rsaName, c.rsa)
		for _, cmd := range [][]string{{"dkim", "check"}, {"check-config", "--probe"}} {
			out, code := check(cmd...)
			if code != c.exitCode || !strings.Contains(out, "dkim "+edName+" (ed25519): "+c.edLine) ||
				!strings.Contains(out, "dkim "+rsaName+" (rsa-2048): "+c.rsaLine) {
				t.Errorf("%s: smarthost %s: exit %d, want %d\n%s", c.what, strings.Join(cmd, " "), code, c.exitCode, out)
			}
		}
	}
	// A create_if_missing key that serve has not made yet has no record
	// to check.
	os.Remove(filepath.Join(e.dir, "dkim", "e2e.key"))
	if out, code := check("dkim", "check"); code != 1 || !strings.Contains(out, "dkim "+edName+": no key yet: serve makes it at its first start") {
		t.Errorf("a key not made yet: exit %d\n%s", code, out)
	}
	if out, err := runCLI("dkim", "check", "--config", filepath.Join(e.dir, "missing.yaml")); exitCode(err) != 2 {
		t.Errorf("no configuration: exit %d\n%s", exitCode(err), out)
	}
	out, err := runCLI("dkim", "check", "--help")
	if exitCode(err) != 0 || !strings.Contains(out, "mismatched  a record, but one that does not verify") || !strings.Contains(out, "--resolver") {
		t.Errorf("dkim check --help: exit %d\n%s", exitCode(err), out)
	}
}

// A key whose signatures do not verify is refused before it signs mail:
// serve does not start (exit 2), check-config says why, and a reload to it
// keeps the running configuration. A selector with a space in it makes
// such signatures (go-msgauth reads s= without the space and looks up
// another name).
func TestDKIMSelfCheckAtStartAndReload(t *testing.T) {
	e := newRelayEnv(t, envOpts{})
	text, _ := os.ReadFile(e.config)
	bad := strings.Replace(string(text), "{selector: e2e,", `{selector: "e2e 2026",`, 1)
	if bad == string(text) {
		t.Fatal("the test's configuration changed: no e2e selector to break")
	}
	badPath := filepath.Join(e.dir, "bad.yaml")
	os.WriteFile(badPath, []byte(bad), 0o600)
	const why = "dkim.domains.example.com[0].key_file (line "
	const says = `a test signature with selector "e2e 2026" of example.com does not verify against the key's own public key`
	for _, cmd := range []string{"serve", "check-config"} {
		// A serve that took the key would run on: the deadline ends it.
		ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
		b, err := exec.CommandContext(ctx, binary, cmd, "--config", badPath).CombinedOutput()
		cancel()
		out := string(b)
		if exitCode(err) != 2 || !strings.Contains(out, why) || !strings.Contains(out, says) || !strings.Contains(out, "the key is refused") {
			t.Errorf("%s with a broken key: exit %d\n%s", cmd, exitCode(err), out)
		}
	}

	p := e.start(t)
	os.WriteFile(e.config, []byte(bad), 0o600)
	p.signal(t, syscall.SIGHUP)
	relaytest.Eventually(t, "the refusal", 10*time.Second, func() bool { return len(p.records().withPrefix("msg", "reload refused")) > 0 })
	if log := p.logText(); !strings.Contains(log, `a test signature with selector \"e2e 2026\" of example.com does not verify`) {
		t.Errorf("the refusal does not say why:\n%s", p.logText())
	}
	out, _ := swaks(t, "--server", e.implicit, "--tls-on-connect", "--auth", "PLAIN", "--auth-user", "alice", "--auth-password", "alice-pw",
		"--from", "alice@example.com", "--to", "b@example.org")
	m := queuedRe.FindStringSubmatch(out)
	if m == nil {
		t.Fatalf("swaks:\n%s", out)
	}
	eml := string(e.outboxMessage(t, m[1]))
	if strings.Count(eml, "DKIM-Signature:") != 2 || !strings.Contains(eml, "s=e2e;") || strings.Contains(eml, "s=e2e 2026") {
		t.Fatalf("after the refused reload, want the running keys' two signatures:\n%s", eml)
	}
}
