package main

import (
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"strings"
	"testing"
	"time"

	"github.com/smarthost/smarthost/relay/relaytest"
)

// HAProxy in front of the relay, sending PROXY v1 and v2 headers: the relay
// sees the real client (127.0.0.2 here) behind the proxy (127.0.0.1), and a
// client connecting directly from another address is seen as itself.
func TestBehindHAProxy(t *testing.T) {
	need(t, "/usr/sbin/haproxy", "-v")
	relayPort := freePort(t)
	e := newRelayEnv(t, envOpts{})
	text, _ := os.ReadFile(e.config)
	cfg := strings.Replace(string(text), "listeners:\n", fmt.Sprintf("listeners:\n  - {address: %q, mode: starttls, proxy_protocol: true}\n", relayPort), 1)
	cfg += "policy: {max_recipients: 3, max_message_size: 64KiB, proxy_networks: [127.0.0.1/32]}\n"
	cfg = strings.Replace(cfg, "policy:\n  max_recipients: 3\n  max_message_size: 64KiB\n", "", 1)
	os.WriteFile(e.config, []byte(cfg), 0o600)
	e.start(t)

	v1, v2 := freePort(t), freePort(t)
	hcfg := filepath.Join(e.dir, "haproxy.cfg")
	os.WriteFile(hcfg, []byte(fmt.Sprintf(`global
  log stderr format raw local0 err
defaults
  mode tcp
  timeout connect 5s
  timeout client 30s
  timeout server 30s
frontend v1
  bind %s
  default_backend relay_v1
frontend v2
  bind %s
  default_backend relay_v2
backend relay_v1
  server relay %s send-proxy
backend relay_v2
  server relay %s send-proxy-v2
`, v1, v2, relayPort, relayPort)), 0o600)
	hp := exec.Command("/usr/sbin/haproxy", "-db", "-f", hcfg)
	var hlog strings.Builder
	hp.Stderr = &hlog
	if err := hp.Start(); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { hp.Process.Kill(); hp.Wait() })

	receivedFrom := func(via, local string) string {
		t.Helper()
		var out string
		relaytest.WithinEvery(10*time.Second, 100*time.Millisecond, func() bool { // haproxy may still be starting
			out, _ = swaks(t, "--server", via, "--local-interface", local, "--tls", "--auth", "PLAIN", "--auth-user", "alice",
				"--auth-password", "alice-pw", "--from", "alice@example.com", "--to", "b@example.org")
			return queuedRe.MatchString(out)
		})
		m := queuedRe.FindStringSubmatch(out)
		if m == nil {
			t.Fatalf("via %s from %s:\n%s\nhaproxy: %s", via, local, out, hlog.String())
		}
		eml := e.outboxMessage(t, m[1])
		r := regexp.MustCompile(`Received: from \S+ \(\[([^\]]+)\]\)`).FindSubmatch(eml)
		if r == nil {
			t.Fatalf("no Received field:\n%s", eml)
		}
		return string(r[1])
	}
	if got := receivedFrom(v1, "127.0.0.2"); got != "127.0.0.2" {
		t.Errorf("through HAProxy PROXY v1: the relay saw %s, want the client 127.0.0.2", got)
	}
	if got := receivedFrom(v2, "127.0.0.2"); got != "127.0.0.2" {
		t.Errorf("through HAProxy PROXY v2: the relay saw %s, want 127.0.0.2", got)
	}
	if got := receivedFrom(relayPort, "127.0.0.3"); got != "127.0.0.3" {
		t.Errorf("direct client: the relay saw %s, want 127.0.0.3", got)
	}
}
