package main

import (
	"context"
	"encoding/json"
	"fmt"
	"net/http"
	"os"
	"regexp"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/redis/go-redis/v9"

	"github.com/smarthost/smarthost/relay/daemon"
)

func redisRelay(t *testing.T, limit string) (*relayEnv, string) {
	addr := ldapEnv(t, "SMARTHOST_TEST_REDIS_ADDR")
	web := freePort(t)
	e := newRelayEnv(t, envOpts{extra: fmt.Sprintf(`ratelimit:
  backend: redis
  redis: {addrs: [%q]}
  on_backend_error: tempfail
  classes:
    default: {messages: %q}
metrics: {listen: %q}
`, addr, limit, web)})
	return e, web
}

// Two relays share one Redis: one user driven through both at once gets
// exactly the limit, not twice it.
func TestLimitExactAcrossTwoNodes(t *testing.T) {
	a, webA := redisRelay(t, "100/h")
	b, _ := redisRelay(t, "100/h")
	rdb := redis.NewClient(&redis.Options{Addr: os.Getenv("SMARTHOST_TEST_REDIS_ADDR")})
	defer rdb.Close()
	rdb.Del(context.Background(), "rate:smarthost:{alice}:messages")
	a.start(t)
	b.start(t)

	script := `
import smtplib, ssl, sys, threading
ctx = ssl.create_default_context(); ctx.check_hostname = False; ctx.verify_mode = ssl.CERT_NONE
counts = {}
lock = threading.Lock()
def drive(port, n):
    s = smtplib.SMTP_SSL("127.0.0.1", port, context=ctx, timeout=30)
    s.login("alice", "alice-pw")
    for i in range(n):
        code, _ = s.mail("alice@example.com")
        if code == 250:
            s.rcpt("r@example.org")
            code, _ = s.data("From: alice@example.com\r\nSubject: x\r\n\r\nx\r\n")
        else:
            s.rset()
        with lock:
            counts[code] = counts.get(code, 0) + 1
    s.quit()
ts = [threading.Thread(target=drive, args=(int(p), 40)) for p in sys.argv[1:]]
[t.start() for t in ts]; [t.join() for t in ts]
print(sorted(counts.items()))
`
	_, pa, _ := strings.Cut(a.implicit, ":")
	_, pb, _ := strings.Cut(b.implicit, ":")
	out, err := execCommand(python, "-c", script, pa, pb, pa, pb) // two connections per node
	if err != nil {
		t.Fatalf("%v\n%s", err, out)
	}
	if strings.TrimSpace(out) != "[(250, 100), (450, 60)]" {
		t.Fatalf("outcomes %s, want exactly 100 accepted and 60 refused with 450", out)
	}

	// Why is alice throttled? Both the HTTP view and the command say so.
	resp, err := http.Get("http://" + webA + "/v1/limits/alice")
	if err != nil {
		t.Fatal(err)
	}
	var v daemon.LimitsView
	json.NewDecoder(resp.Body).Decode(&v)
	resp.Body.Close()
	if v.Class != "default" || len(v.Limits) != 1 || v.Limits[0].Remaining != 0 || v.Limits[0].Rate != "100/h" {
		t.Fatalf("GET /v1/limits/alice: %+v", v)
	}
	if resp, _ := http.Get("http://" + webA + "/v1/limits/nobody"); resp == nil || resp.StatusCode != 404 {
		t.Errorf("unknown user: %v", resp)
	}
	cli, err := runCLI("limits", "show", "alice", "--config", b.config)
	if err != nil || !strings.Contains(cli, "messages   100/h        0 left, full again in") {
		t.Fatalf("limits show: %v\n%s", err, cli)
	}
}

// The quickstart's memory backend limits too, and its counters are visible
// through the running relay.
func TestMemoryLimitsAndView(t *testing.T) {
	web := freePort(t)
	e := newRelayEnv(t, envOpts{extra: fmt.Sprintf("ratelimit:\n  backend: memory\n  classes:\n    default: {messages: \"3/h\"}\nmetrics: {listen: %q}\n", web)})
	e.start(t)
	var mu sync.Mutex
	codes := map[string]int{}
	for i := 0; i < 4; i++ {
		out, _ := swaks(t, "--server", e.implicit, "--tls-on-connect", "--auth", "PLAIN", "--auth-user", "alice", "--auth-password", "alice-pw",
			"--from", "alice@example.com", "--to", "r@example.org")
		mu.Lock()
		switch {
		case queuedRe.MatchString(out):
			codes["250"]++
		case retryIn(out) > 19*time.Minute && retryIn(out) <= 20*time.Minute:
			// A slot frees 20 minutes after the first message, less the
			// time since it: 20m, or 19m59s on a slow machine.
			codes["450"]++
		default:
			t.Errorf("unexpected:\n%s", out)
		}
		mu.Unlock()
	}
	if codes["250"] != 3 || codes["450"] != 1 {
		t.Fatalf("outcomes %v, want 3 accepted and 1 refused", codes)
	}
	cli, err := runCLI("limits", "show", "ALICE", "--config", e.config)
	if err != nil || !strings.Contains(cli, "class default") || !strings.Contains(cli, "0 left") {
		t.Fatalf("limits show: %v\n%s", err, cli)
	}
}

// retryIn is the wait a 450 4.7.1 for the message quota names in out,
// 0 if there is none.
func retryIn(out string) time.Duration {
	m := regexp.MustCompile(`450 4\.7\.1 Rate limit reached for messages; try again in (\S+)`).FindStringSubmatch(out)
	if m == nil {
		return 0
	}
	d, _ := time.ParseDuration(m[1])
	return d
}

func TestProbeRedis(t *testing.T) {
	e, _ := redisRelay(t, "100/h")
	out, err := probe(t, e.config)
	if err != nil || !strings.Contains(out, "redis "+os.Getenv("SMARTHOST_TEST_REDIS_ADDR")+": ok") {
		t.Fatalf("probe with redis up: %v\n%s", err, out)
	}
	text, _ := os.ReadFile(e.config)
	os.WriteFile(e.config, []byte(strings.Replace(string(text), os.Getenv("SMARTHOST_TEST_REDIS_ADDR"), freePort(t), 1)), 0o600)
	out, err = probe(t, e.config)
	if exitCode(err) != 1 || !strings.Contains(out, "FAILED") {
		t.Fatalf("probe with redis down: exit %d\n%s", exitCode(err), out)
	}
}
