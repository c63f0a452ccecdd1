package main

import (
	"bufio"
	"crypto/rand"
	"crypto/tls"
	"encoding/base64"
	"fmt"
	"io"
	"net"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/emersion/go-sasl"
	"github.com/emersion/go-smtp"

	"github.com/smarthost/smarthost/relay/relaytest"
)

func httpGet(t *testing.T, url string) (int, string) {
	t.Helper()
	resp, err := http.Get(url)
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	b, _ := io.ReadAll(resp.Body)
	return resp.StatusCode, string(b)
}

// metric returns the value of one series line ("name{labels}") or -1.
func metric(text, series string) float64 {
	for _, line := range strings.Split(text, "\n") {
		if strings.HasPrefix(line, series+" ") {
			v, _ := strconv.ParseFloat(strings.TrimPrefix(line, series+" "), 64)
			return v
		}
	}
	return -1
}

func TestMetricsMoveWithTraffic(t *testing.T) {
	web := freePort(t)
	up := sink(t, freePort(t))
	e := newRelayEnv(t, envOpts{upstream: "smtp://" + up.Addr, extra: fmt.Sprintf("metrics: {listen: %q}\n", web)})
	e.start(t)
	if code, body := httpGet(t, "http://"+web+"/healthz"); code != 200 || body != "ok\n" {
		t.Fatalf("healthz %d %q", code, body)
	}
	if code, body := httpGet(t, "http://"+web+"/readyz"); code != 200 {
		t.Fatalf("readyz %d %q", code, body)
	}
	for i := 0; i < 2; i++ {
		swaks(t, "--server", e.implicit, "--tls-on-connect", "--auth", "PLAIN", "--auth-user", "alice", "--auth-password", "alice-pw",
			"--from", "alice@example.com", "--to", "b@example.org")
	}
	swaks(t, "--server", e.implicit, "--tls-on-connect", "--auth", "PLAIN", "--auth-user", "alice", "--auth-password", "alice-pw",
		"--from", "ceo@example.com", "--to", "b@example.org")
	swaks(t, "--server", e.implicit, "--tls-on-connect", "--auth", "PLAIN", "--auth-user", "alice", "--auth-password", "nope",
		"--from", "alice@example.com", "--to", "b@example.org")
	up.Wait(2, 10*time.Second)
	var text string
	want := map[string]float64{
		`smarthost_messages_accepted_total`:                                     2,
		`smarthost_recipients_accepted_total`:                                   2,
		`smarthost_auth_total{result="success"}`:                                3,
		`smarthost_auth_total{result="failure"}`:                                1,
		`smarthost_smtp_refusals_total{cmd="MAIL",code="553",enhanced="5.7.1"}`: 1,
		`smarthost_smtp_refusals_total{cmd="AUTH",code="535",enhanced="5.7.8"}`: 1,
		`smarthost_dkim_signatures_total{domain="example.com"}`:                 2,
		`smarthost_deliveries_total{result="sent",upstream="up"}`:               2,
		`smarthost_queue_messages`:                                              0,
		`smarthost_connections_total{listener="` + e.implicit + `"}`:            5, // 4 by swaks, 1 by the start-up probe
	}
	relaytest.WithinEvery(10*time.Second, 50*time.Millisecond, func() bool {
		_, text = httpGet(t, "http://"+web+"/metrics")
		for s, v := range want {
			if metric(text, s) != v {
				return false
			}
		}
		return true
	})
	for s, v := range want {
		if got := metric(text, s); got != v {
			t.Errorf("%s = %v, want %v", s, got, v)
		}
	}
	for _, s := range []string{`smarthost_upstream_duration_seconds_count{upstream="up"}`, `smarthost_tls_handshakes_total{result="ok"}`,
		`smarthost_backend_duration_seconds_count{backend="static"}`, `smarthost_bytes_accepted_total`} {
		if metric(text, s) <= 0 {
			t.Errorf("%s did not move", s)
		}
	}
	if regexp.MustCompile(`alice|b@example\.org`).MatchString(text) {
		t.Error("a user name or address appears in a metric label")
	}
}

func TestReadinessFollowsRedis(t *testing.T) {
	e, web := redisRelay(t, "1000/h")
	e.start(t)
	if code, body := httpGet(t, "http://"+web+"/readyz"); code != 200 {
		t.Fatalf("readyz with redis up: %d %q", code, body)
	}
	resume := relaytest.Freeze(t, "SMARTHOST_TEST_REDIS_PIDFILE")
	relaytest.Eventually(t, "readyz to fail", 15*time.Second, func() bool {
		code, body := httpGet(t, "http://"+web+"/readyz")
		return code == 503 && strings.Contains(body, "redis:")
	})
	resume()
	relaytest.Eventually(t, "readyz to recover", 15*time.Second, func() bool {
		code, _ := httpGet(t, "http://"+web+"/readyz")
		return code == 200
	})
}

func TestReadinessFollowsLDAP(t *testing.T) {
	web := freePort(t)
	e := ldapRelay(t, "ldap://"+freePort(t), fmt.Sprintf("metrics: {listen: %q}\n", web)) // nothing listens there
	e.start(t)
	code, body := httpGet(t, "http://"+web+"/readyz")
	if code != 503 || !strings.Contains(body, "ldap:") {
		t.Fatalf("readyz with LDAP down: %d %q", code, body)
	}
}

// SIGTERM in the middle of a burst: the relay exits 0, and every message a
// client got a 250 for is either delivered or still in the spool.
func TestSIGTERMDuringBurst(t *testing.T) {
	e := newRelayEnv(t, envOpts{})
	p := e.start(t)
	acks := filepath.Join(e.dir, "acks")
	done := make(chan string, 1)
	go func() { out, _ := pyBurst(e.implicit, acks, 200); done <- out }()
	relaytest.Eventually(t, "30 acknowledgements", 60*time.Second, func() bool {
		b, _ := os.ReadFile(acks)
		return strings.Count(string(b), "\n") >= 30
	})
	p.signal(t, syscall.SIGTERM)
	if code := p.wait(t, 40*time.Second); code != 0 {
		t.Fatalf("exit %d after SIGTERM", code)
	}
	<-done
	b, _ := os.ReadFile(acks)
	list, err := runCLI("queue", "list", "--config", e.config)
	if err != nil {
		t.Fatalf("queue list: %v\n%s", err, list)
	}
	for _, id := range strings.Fields(string(b)) {
		_, inOutbox := os.Stat(filepath.Join(e.outbox, id+".eml"))
		if inOutbox != nil && !strings.Contains(list, id) {
			t.Errorf("acknowledged message %s is neither delivered nor spooled", id)
		}
	}
}

// A session opened before SIGHUP keeps working after it, on its old
// settings, while new sessions get the new ones.
func TestReloadLeavesOpenSessions(t *testing.T) {
	e := newRelayEnv(t, envOpts{})
	p := e.start(t)
	c := aliceSession(t, e.implicit)
	os.WriteFile(filepath.Join(e.dir, "users.yaml"), []byte("users: {}\n"), 0o600) // alice is gone
	p.signal(t, syscall.SIGHUP)
	relaytest.Eventually(t, "the reload", 10*time.Second, func() bool { return len(p.records().with("msg", "configuration reloaded")) > 0 })
	if err := c.SendMail("alice@example.com", []string{"b@example.org"}, strings.NewReader("From: alice@example.com\r\n\r\nstill here\r\n")); err != nil {
		t.Fatalf("open session after reload: %v", err)
	}
	if err := login(t, e.implicit, "alice", "alice-pw"); err == nil {
		t.Fatal("a new session still accepts the removed user")
	}
}

// The compose file parses, with Debian's docker-compose (no Docker engine
// runs on the build machines, so nothing is started).
func TestComposeFileParses(t *testing.T) {
	need(t, "/usr/bin/docker-compose", "version")
	cmd := exec.Command("/usr/bin/docker-compose", "-f", "../../docker-compose.yml", "config", "--quiet")
	if out, err := cmd.CombinedOutput(); err != nil {
		t.Fatalf("docker-compose config: %v\n%s", err, out)
	}
}

// SIGHUP with a listener moved to another port: the new port serves, the
// old one stops accepting, and a session open on it finishes its message.
func TestReloadRebindsListeners(t *testing.T) {
	e := newRelayEnv(t, envOpts{})
	p := e.start(t)
	c := aliceSession(t, e.implicit)
	moved := freePort(t)
	text, _ := os.ReadFile(e.config)
	os.WriteFile(e.config, []byte(strings.Replace(string(text), e.implicit, moved, 1)), 0o600)
	p.signal(t, syscall.SIGHUP)
	relaytest.Eventually(t, "the reload", 10*time.Second, func() bool { return len(p.records().with("msg", "configuration reloaded")) > 0 })
	if err := login(t, moved, "alice", "alice-pw"); err != nil {
		t.Fatalf("the moved listener: %v", err)
	}
	if err := c.SendMail("alice@example.com", []string{"b@example.org"}, strings.NewReader("From: alice@example.com\r\n\r\nx\r\n")); err != nil {
		t.Fatalf("session on the old listener: %v", err)
	}
	if conn, err := net.DialTimeout("tcp", e.implicit, time.Second); err == nil {
		conn.Close()
		t.Fatal("the old listener still accepts")
	}
}

// aliceSession is an authenticated implicit-TLS session, closed at the end
// of the test.
func aliceSession(t *testing.T, addr string) *smtp.Client {
	t.Helper()
	c, err := smtp.DialTLS(addr, &tls.Config{InsecureSkipVerify: true})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { c.Close() })
	if err := c.Auth(sasl.NewPlainClient("", "alice", "alice-pw")); err != nil {
		t.Fatal(err)
	}
	return c
}

// With on_backend_error: allow a Redis outage does not stop mail, so it
// does not make the node unready either (every node would go at once).
func TestReadinessIgnoresRedisUnderAllow(t *testing.T) {
	addr := ldapEnv(t, "SMARTHOST_TEST_REDIS_ADDR")
	web := freePort(t)
	e := newRelayEnv(t, envOpts{extra: fmt.Sprintf("ratelimit:\n  backend: redis\n  redis: {addrs: [%q]}\n  on_backend_error: allow\n"+
		"  classes:\n    default: {messages: \"100/h\"}\nmetrics: {listen: %q}\n", addr, web)})
	e.start(t)
	resume := relaytest.Freeze(t, "SMARTHOST_TEST_REDIS_PIDFILE")
	defer resume()
	// A second's cache of the result, then a fresh check with Redis frozen.
	deadline := time.Now().Add(3 * time.Second)
	for time.Now().Before(deadline) {
		if code, body := httpGet(t, "http://"+web+"/readyz"); code != 200 {
			t.Fatalf("readyz with Redis down under allow: %d %q", code, body)
		}
		time.Sleep(500 * time.Millisecond)
	}
}

// The admin port: pprof only with metrics.pprof; /v1/ (limits, the
// history, the queue and what changes it, drain), the status page and
// pprof need the bearer token of metrics.token_file off loopback, and are
// refused there without one.
func TestAdminPortGuards(t *testing.T) {
	// Loopback, no pprof: /v1/ open, pprof absent.
	web := freePort(t)
	e := newRelayEnv(t, envOpts{extra: fmt.Sprintf("metrics: {listen: %q}\n", web)})
	e.start(t)
	if code, _ := httpGet(t, "http://"+web+"/debug/pprof/"); code != 404 {
		t.Errorf("pprof without metrics.pprof: %d, want 404", code)
	}
	if code, _ := httpGet(t, "http://"+web+"/v1/limits/alice"); code != 200 {
		t.Errorf("/v1/limits on loopback: %d, want 200", code)
	}

	// Not loopback (every address), with a token and pprof.
	tokenFile := filepath.Join(t.TempDir(), "token")
	os.WriteFile(tokenFile, []byte("s3cret-token-0123456789\n"), 0o600)
	p2 := port(freePort(t))
	e2 := newRelayEnv(t, envOpts{extra: fmt.Sprintf("metrics: {listen: \"0.0.0.0:%s\", pprof: true, token_file: %q}\n", p2, tokenFile)})
	e2.start(t)
	url := "http://127.0.0.1:" + p2
	ask := func(method, path, token string) int {
		req, _ := http.NewRequest(method, url+path, nil)
		if token != "" {
			req.Header.Set("Authorization", "Bearer "+token)
		}
		resp, err := http.DefaultClient.Do(req)
		if err != nil {
			t.Fatal(err)
		}
		resp.Body.Close()
		return resp.StatusCode
	}
	get := func(path, token string) int { return ask("GET", path, token) }
	// Every endpoint that tells of users or mail, or changes the queue.
	const token = "s3cret-token-0123456789"
	// With the token each answers as it would on loopback: up has no
	// limits to show (404); the queue verbs act on no message.
	guarded := []struct {
		method, path string
		want         int
	}{
		{"GET", "/v1/limits/alice", 200}, {"GET", "/v1/limits/nobody", 404}, {"GET", "/debug/pprof/", 200},
		{"GET", "/status", 200}, {"GET", "/v1/messages?q=alice@example.com", 200}, {"GET", "/v1/queue", 200},
		{"GET", "/v1/upstreams/up/limits", 404},
		{"POST", "/v1/queue/hold?from=nobody@example.com", 200}, {"POST", "/v1/queue/release?from=nobody@example.com", 200},
		{"POST", "/v1/queue/delete?from=nobody@example.com", 200}, {"POST", "/v1/queue/bounce?from=nobody@example.com", 200},
		{"POST", "/v1/drain", 0},
	}
	for _, g := range guarded {
		if code := ask(g.method, g.path, ""); code != 401 {
			t.Errorf("%s %s without a token: %d, want 401", g.method, g.path, code)
		}
		if code := ask(g.method, g.path, "wrong"); code != 401 {
			t.Errorf("%s %s with a wrong token: %d, want 401", g.method, g.path, code)
		}
		if g.path == "/v1/drain" {
			continue // with the token it drains: TestDrainHandsOffTheQueue asks through the CLI
		}
		if code := ask(g.method, g.path, token); code != g.want {
			t.Errorf("%s %s with the token: %d, want %d", g.method, g.path, code, g.want)
		}
	}
	for _, path := range []string{"/metrics", "/healthz", "/readyz"} {
		if code := get(path, ""); code != 200 {
			t.Errorf("%s: %d, want 200 without a token", path, code)
		}
	}

	// Not loopback and no token: /v1/ refused outright.
	port3 := port(freePort(t))
	e3 := newRelayEnv(t, envOpts{extra: fmt.Sprintf("metrics: {listen: \"0.0.0.0:%s\"}\n", port3)})
	e3.start(t)
	if code, _ := httpGet(t, "http://127.0.0.1:"+port3+"/v1/limits/alice"); code != 403 {
		t.Errorf("/v1/limits off loopback without a token: %d, want 403", code)
	}
}

// Behind a load balancer a client meets another node each time. With the
// nodes sharing tls.session_ticket_key_file it resumes its TLS session on
// any of them; a node with another secret makes it do a full handshake.
func TestSharedSessionTickets(t *testing.T) {
	dir := t.TempDir()
	secret := func(name string) string {
		b := make([]byte, 48)
		rand.Read(b)
		path := filepath.Join(dir, name)
		os.WriteFile(path, []byte(base64.StdEncoding.EncodeToString(b)+"\n"), 0o600)
		return path
	}
	shared, other := secret("shared"), secret("other")
	relay := func(file string) *relayEnv {
		e := newRelayEnv(t, envOpts{})
		text, _ := os.ReadFile(e.config)
		os.WriteFile(e.config, []byte(strings.Replace(string(text), "tls: {self_signed: true}",
			fmt.Sprintf("tls: {self_signed: true, session_ticket_key_file: %q}", file), 1)), 0o600)
		return e
	}
	a, b, c := relay(shared), relay(shared), relay(other)
	for _, e := range []*relayEnv{a, b, c} {
		e.start(t)
	}
	cache := tls.NewLRUClientSessionCache(8)
	resumed := func(addr string) bool {
		conn, err := tls.Dial("tcp", addr, &tls.Config{ServerName: "relay.test", InsecureSkipVerify: true, ClientSessionCache: cache})
		if err != nil {
			t.Fatal(err)
		}
		defer conn.Close()
		// Reading the greeting takes in the ticket the server sent after
		// the handshake (TLS 1.3).
		if line, err := bufio.NewReader(conn).ReadString('\n'); err != nil || !strings.HasPrefix(line, "220 ") {
			t.Fatalf("greeting from %s: %q %v", addr, line, err)
		}
		return conn.ConnectionState().DidResume
	}
	if resumed(a.implicit) {
		t.Fatal("the first connection resumed a session")
	}
	if !resumed(b.implicit) {
		t.Error("B did not resume the session A began, though they share the secret")
	}
	if resumed(c.implicit) {
		t.Error("C resumed a session sealed with another secret")
	}

	// A secret too short to be one is refused.
	os.WriteFile(shared, []byte("short\n"), 0o600)
	out, err := runCLI("check-config", "--config", a.config)
	if exitCode(err) != 2 || !strings.Contains(out, "tls.session_ticket_key_file") {
		t.Errorf("check-config with a 5-byte secret: exit %d\n%s", exitCode(err), out)
	}
}
