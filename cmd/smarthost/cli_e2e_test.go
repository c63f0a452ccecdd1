package main

import (
	"bytes"
	"crypto/tls"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"runtime"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/emersion/go-sasl"
	"github.com/emersion/go-smtp"
	"golang.org/x/crypto/bcrypt"

	"github.com/smarthost/smarthost/dkim"
	"github.com/smarthost/smarthost/relay/relaytest"
)

func execCommand(name string, args ...string) (string, error) {
	out, err := exec.Command(name, args...).CombinedOutput()
	return string(out), err
}

func fmtInt(n int) string { return strconv.Itoa(n) }

func runCLI(args ...string) (string, error) { return execCommand(binary, args...) }

func exitCode(err error) int {
	if ee, ok := err.(*exec.ExitError); ok {
		return ee.ExitCode()
	}
	if err != nil {
		return -1
	}
	return 0
}

func TestCheckConfig(t *testing.T) {
	e := newRelayEnv(t, envOpts{})
	out, err := runCLI("check-config", "--config", e.config)
	if exitCode(err) != 0 || !strings.Contains(out, "configuration is valid") {
		t.Fatalf("valid config: exit %d\n%s", exitCode(err), out)
	}
	os.RemoveAll(filepath.Join(e.dir, "dkim")) // create_if_missing: serve makes them, check-config must not
	if out, err := runCLI("check-config", "--config", e.config); exitCode(err) != 0 {
		t.Fatalf("missing create_if_missing keys: exit %d\n%s", exitCode(err), out)
	}
	if _, err := os.Stat(filepath.Join(e.dir, "dkim")); err == nil {
		t.Error("check-config wrote the DKIM keys it only had to check")
	}
	bad := filepath.Join(e.dir, "bad.yaml")
	text, _ := os.ReadFile(e.config)
	os.WriteFile(bad, []byte(strings.Replace(string(text), "mode: implicit", "mode: implicit, colour: red", 1)+
		"routes: [{upstreams: [nope]}]\n"), 0o600)
	out, err = runCLI("check-config", "--config", bad)
	if exitCode(err) != 2 || !strings.Contains(out, `listeners[1].colour (line 4): unknown key "colour"`) ||
		!strings.Contains(out, `routes[0].upstreams[0]`) || !strings.Contains(out, `no upstream is named "nope"`) {
		t.Fatalf("bad config: exit %d\n%s", exitCode(err), out)
	}
	out, err = runCLI("check-config", "--config", filepath.Join(e.dir, "missing.yaml"))
	if exitCode(err) != 2 {
		t.Fatalf("missing file: exit %d\n%s", exitCode(err), out)
	}
	// --probe: the file:// outbox is fine, a closed port is not (with keys:
	// this relay's were removed above).
	out, err = probe(t, newRelayEnv(t, envOpts{}).config)
	if exitCode(err) != 0 || !strings.Contains(out, "upstream up: ok") {
		t.Fatalf("probe ok: exit %d\n%s", exitCode(err), out)
	}
	down := newRelayEnv(t, envOpts{upstream: "smtp://" + freePort(t)})
	out, err = probe(t, down.config)
	if exitCode(err) != 1 || !strings.Contains(out, "upstream up: FAILED") {
		t.Fatalf("probe down: exit %d\n%s", exitCode(err), out)
	}
	if out, err := runCLI("serve", "--config", bad); exitCode(err) != 2 {
		t.Fatalf("serve with a bad config: exit %d\n%s", exitCode(err), out)
	}
}

func TestGracefulStop(t *testing.T) {
	e := newRelayEnv(t, envOpts{})
	p := e.start(t)
	p.signal(t, syscall.SIGTERM)
	if code := p.wait(t, 40*time.Second); code != 0 {
		t.Fatalf("exit code %d after SIGTERM", code)
	}
	if len(p.records().with("msg", "stopped")) == 0 {
		t.Errorf("no stop in log:\n%s", p.logText())
	}
}

func login(t *testing.T, addr, user, pass string) error {
	c, err := smtp.DialTLS(addr, &tls.Config{InsecureSkipVerify: true})
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	return c.Auth(sasl.NewPlainClient("", user, pass))
}

func TestReloadUsers(t *testing.T) {
	e := newRelayEnv(t, envOpts{})
	p := e.start(t)
	if err := login(t, e.implicit, "bob", "bob-pw"); err == nil {
		t.Fatal("bob logged in before he existed")
	}
	h, _ := bcrypt.GenerateFromPassword([]byte("bob-pw"), bcrypt.MinCost)
	f, _ := os.OpenFile(filepath.Join(e.dir, "users.yaml"), os.O_APPEND|os.O_WRONLY, 0)
	f.WriteString("  bob:\n    password_hash: \"" + string(h) + "\"\n    addresses: [bob@example.com]\n")
	f.Close()
	p.signal(t, syscall.SIGHUP)
	relaytest.Eventually(t, "the reload", 10*time.Second, func() bool { return len(p.records().with("msg", "configuration reloaded")) > 0 })
	if err := login(t, e.implicit, "bob", "bob-pw"); err != nil {
		t.Fatalf("bob after reload: %v", err)
	}
	// A broken file is refused and the running configuration kept.
	os.WriteFile(filepath.Join(e.dir, "users.yaml"), []byte("users: [broken\n"), 0o600)
	p.signal(t, syscall.SIGHUP)
	relaytest.Eventually(t, "the refusal", 10*time.Second, func() bool { return len(p.records().withPrefix("msg", "reload refused")) > 0 })
	if err := login(t, e.implicit, "alice", "alice-pw"); err != nil {
		t.Fatalf("alice after a refused reload: %v", err)
	}
}

func TestPasswdAndVersion(t *testing.T) {
	cmd := exec.Command(binary, "passwd")
	cmd.Stdin = strings.NewReader("pässwörd-€\n")
	out, err := cmd.Output()
	if err != nil {
		t.Fatal(err)
	}
	if err := bcrypt.CompareHashAndPassword([]byte(strings.TrimSpace(string(out))), []byte("pässwörd-€")); err != nil {
		t.Fatalf("passwd printed %q: %v", out, err)
	}
	cmd = exec.Command(binary, "passwd")
	cmd.Stdin = strings.NewReader("\n")
	if err := cmd.Run(); exitCode(err) == 0 {
		t.Error("passwd accepted an empty password")
	}
	v, err := runCLI("version")
	if err != nil || !strings.Contains(v, runtime.Version()) || !strings.Contains(v, "commit ") || !strings.Contains(v, "DKIM RSA signatures: "+dkim.RSABackend) {
		t.Fatalf("version: %v\n%s", err, v)
	}
}

func TestDKIMKeygen(t *testing.T) {
	dir := t.TempDir()
	out, err := runCLI("dkim", "keygen", "--domain", "Example.com", "--selector", "s1", "--algo", "ed25519", "--out", dir)
	if err != nil || !strings.Contains(out, `s1._domainkey.example.com. IN TXT ( "v=DKIM1; k=ed25519; p=`) {
		t.Fatalf("keygen: %v\n%s", err, out)
	}
	if _, err := os.Stat(filepath.Join(dir, "example.com.s1.key")); err != nil {
		t.Fatal(err)
	}
	if out, err := runCLI("dkim", "keygen", "--domain", "example.com", "--selector", "s1", "--algo", "ed25519", "--out", dir); err == nil {
		t.Fatalf("keygen overwrote a key:\n%s", out)
	}
}

// Key rotation: a new selector added to the configuration signs from the
// next message on after SIGHUP, with no restart.
func TestDKIMRotationOnReload(t *testing.T) {
	e := newRelayEnv(t, envOpts{})
	p := e.start(t)
	newKey := filepath.Join(e.dir, "dkim", "next.key")
	if out, err := runCLI("dkim", "keygen", "--domain", "example.com", "--selector", "next", "--algo", "rsa2048", "--out", filepath.Dir(newKey)); err != nil {
		t.Fatalf("keygen: %v\n%s", err, out)
	}
	os.Rename(filepath.Join(e.dir, "dkim", "example.com.next.key"), newKey)
	text, _ := os.ReadFile(e.config)
	cfg := strings.Replace(string(text), "      - {selector: e2ersa,", "      - {selector: next, key_file: \""+newKey+"\"}\n      - {selector: e2ersa,", 1)
	os.WriteFile(e.config, []byte(cfg), 0o600)
	p.signal(t, syscall.SIGHUP)
	relaytest.Eventually(t, "the reload", 10*time.Second, func() bool { return len(p.records().with("msg", "configuration reloaded")) > 0 })
	out, _ := swaks(t, "--server", e.implicit, "--tls-on-connect", "--auth", "PLAIN", "--auth-user", "alice", "--auth-password", "alice-pw",
		"--from", "alice@example.com", "--to", "b@example.org")
	m := queuedRe.FindStringSubmatch(out)
	if m == nil {
		t.Fatalf("swaks:\n%s", out)
	}
	eml := e.outboxMessage(t, m[1])
	if c := strings.Count(string(eml), "DKIM-Signature:"); c != 3 || !strings.Contains(string(eml), "s=next;") {
		t.Fatalf("%d signatures after rotation, want 3 including s=next:\n%s", c, eml)
	}
	dns, err := runCLI("dkim", "dns", "--config", e.config)
	if err != nil || !strings.Contains(dns, "next._domainkey.example.com.") {
		t.Fatalf("dkim dns: %v\n%s", err, dns)
	}
}

// Every command and verb answers --help (and -h) on standard output with
// exit code 0; the commands with verbs list them.
func TestHelpEverywhere(t *testing.T) {
	for _, args := range [][]string{
		{"--help"}, {"-h"}, {"help"},
		{"serve", "--help"}, {"check-config", "--help"}, {"passwd", "--help"}, {"probe-ready", "-h"}, {"version", "--help"},
		{"dkim", "--help"}, {"dkim", "keygen", "--help"}, {"dkim", "dns", "--help"}, {"dkim", "check", "--help"},
		{"queue", "--help"}, {"queue", "list", "--help"}, {"queue", "show", "--help"}, {"queue", "retry", "--help"}, {"queue", "delete", "--help"},
		{"queue", "hold", "--help"}, {"queue", "release", "--help"}, {"queue", "bounce", "--help"}, {"trace", "--help"},
		{"limits", "--help"}, {"limits", "show", "--help"},
	} {
		cmd := exec.Command(binary, args...)
		var stdout, stderr strings.Builder
		cmd.Stdout, cmd.Stderr = &stdout, &stderr
		err := cmd.Run()
		if exitCode(err) != 0 || !strings.HasPrefix(stdout.String(), "usage: smarthost") {
			t.Errorf("smarthost %s: exit %d, stdout %q, stderr %q", strings.Join(args, " "), exitCode(err), stdout.String(), stderr.String())
		}
	}
	for cmd, verbs := range map[string][]string{"dkim": {"keygen", "dns", "check"}, "queue": {"list", "show", "retry", "hold", "release", "delete", "bounce"}, "limits": {"show"}} {
		out, _ := runCLI(cmd, "--help")
		for _, v := range verbs {
			if !strings.Contains(out, "  "+v+" ") {
				t.Errorf("smarthost %s --help does not list %s:\n%s", cmd, v, out)
			}
		}
	}
	// The overview names each form of a command.
	if out, _ := runCLI("--help"); !strings.Contains(out, "limits show USER | --upstream NAME") {
		t.Errorf("smarthost --help does not name limits show --upstream:\n%s", out)
	}
	// Without a verb, or with a wrong one: the list on standard error, 2.
	if out, err := runCLI("queue"); exitCode(err) != 2 || !strings.Contains(out, "verbs:") {
		t.Errorf("smarthost queue: exit %d\n%s", exitCode(err), out)
	}
}

// serve without --config takes SMARTHOST_CONFIG (and else
// /etc/smarthost/smarthost.yaml, else the quickstart), and says which.
func TestServeDefaultConfig(t *testing.T) {
	e := newRelayEnv(t, envOpts{})
	p := &proc{log: &bytes.Buffer{}, done: make(chan struct{}), mu: &sync.Mutex{}}
	p.cmd = exec.Command(binary, "serve")
	p.cmd.Env = append(os.Environ(), "SMARTHOST_CONFIG="+e.config)
	p.cmd.Stderr = lockedBuffer{p.mu, p.log}
	if err := p.cmd.Start(); err != nil {
		t.Fatal(err)
	}
	go func() { p.cmd.Wait(); close(p.done) }()
	defer func() { p.cmd.Process.Kill(); <-p.done }()
	relaytest.Eventually(t, "the relay listening", 20*time.Second, func() bool {
		c, err := net.Dial("tcp", e.starttls)
		if err == nil {
			c.Close()
		}
		return err == nil
	})
	if len(p.records().with("msg", "configuration").with("file", e.config)) == 0 {
		t.Errorf("the log does not say which configuration runs:\n%s", p.logText())
	}
}
