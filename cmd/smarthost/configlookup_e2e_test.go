package main

import (
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/smarthost/smarthost/relay/relaytest"
)

// Every command finds its configuration the one way serve does: --config,
// then $SMARTHOST_CONFIG, then /etc/smarthost/smarthost.yaml, then the
// embedded quickstart. A message left in the queue tells which
// configuration `queue list` read.
func TestEveryCommandFindsTheConfig(t *testing.T) {
	// The admin listener: limits show asks the running relay.
	e := newRelayEnv(t, envOpts{upstream: "smtp://" + freePort(t), extra: fmt.Sprintf("metrics: {listen: %q}\n", freePort(t))})
	p := e.start(t)
	out, code := swaks(t, "--server", e.implicit, "--tls-on-connect", "--auth-user", "alice", "--auth-password", "alice-pw",
		"--from", "alice@example.com", "--to", "b@example.org")
	m := queuedRe.FindStringSubmatch(out)
	if code != 0 || m == nil {
		t.Fatalf("swaks exit %d:\n%s", code, out)
	}
	id := m[1]
	relaytest.Eventually(t, "a failed attempt", 10*time.Second, func() bool {
		return len(p.records().with("msg", "delivery deferred").of([]string{id})) > 0
	})
	empty := t.TempDir()

	// each runs a command in an empty folder with SMARTHOST_CONFIG set to
	// env ("" unset).
	each := func(t *testing.T, env string, args ...string) (string, string) {
		t.Helper()
		cmd := exec.Command(binary, args...)
		cmd.Dir = empty
		cmd.Env = append(withoutEnv("SMARTHOST_CONFIG"), "SMARTHOST_CONFIG="+env)
		var stdout, stderr strings.Builder
		cmd.Stdout, cmd.Stderr = &stdout, &stderr
		if err := cmd.Run(); err != nil {
			t.Fatalf("%v: %v\n%s%s", args, err, stdout.String(), stderr.String())
		}
		return stdout.String(), stderr.String()
	}
	// Which configuration each command read, told by its output.
	commands := []struct {
		args []string
		ours string
	}{
		{[]string{"queue", "list"}, id},
		{[]string{"queue", "list", "--json", "--state", "deferred"}, id},
		{[]string{"trace", id}, id + "  <"},
		{[]string{"queue", "show", id}, "Subject:"},
		{[]string{"dkim", "dns"}, "e2e._domainkey.example.com"},
		{[]string{"check-config"}, "configuration is valid"},
		// limits asks the relay that configuration names (its admin listener).
		{[]string{"limits", "show", "alice"}, `user alice (limits kept as "alice"), class default`},
	}
	t.Run("environment", func(t *testing.T) {
		for _, c := range commands {
			if out, _ := each(t, e.config, c.args...); !strings.Contains(out, c.ours) {
				t.Errorf("%v with SMARTHOST_CONFIG: no %q in\n%s", c.args, c.ours, out)
			}
		}
	})
	t.Run("flag before environment", func(t *testing.T) {
		for _, c := range commands {
			args := append(append([]string{}, c.args...), "--config", e.config)
			if out, _ := each(t, filepath.Join(empty, "absent.yaml"), args...); !strings.Contains(out, c.ours) {
				t.Errorf("%v: no %q in\n%s", args, c.ours, out)
			}
		}
	})
	t.Run("etc", func(t *testing.T) {
		etc := bindEtcSmarthost(t, e.config)
		for _, c := range commands {
			cmd := exec.Command("unshare", "--mount", "--propagation", "private", "sh", "-c",
				`mount --bind "$0" /etc/smarthost && exec "$@"`, etc, binary)
			cmd.Args = append(cmd.Args, c.args...)
			cmd.Dir = empty
			cmd.Env = withoutEnv("SMARTHOST_CONFIG")
			out, err := cmd.CombinedOutput()
			if err != nil || !strings.Contains(string(out), c.ours) {
				t.Errorf("%v with only /etc/smarthost/smarthost.yaml: %v, no %q in\n%s", c.args, err, c.ours, out)
			}
		}
	})
	t.Run("none: the quickstart, said so", func(t *testing.T) {
		out, stderr := each(t, "", "check-config")
		if !strings.Contains(out, "embedded quickstart: configuration is valid") || !strings.Contains(stderr, "embedded quickstart") {
			t.Errorf("check-config without a configuration:\n%s%s", out, stderr)
		}
	})
}

// withoutEnv is the test's environment without the variable name.
func withoutEnv(name string) []string {
	var env []string
	for _, kv := range os.Environ() {
		if !strings.HasPrefix(kv, name+"=") {
			env = append(env, kv)
		}
	}
	return env
}

// bindEtcSmarthost returns a folder holding config as smarthost.yaml, for
// a private mount namespace to bind over /etc/smarthost; that folder must
// exist to be a mount point, and is made (and removed after) if it does not.
func bindEtcSmarthost(t *testing.T, config string) string {
	t.Helper()
	if os.Geteuid() != 0 {
		if os.Getenv("CI") == "true" {
			t.Fatal("a private mount namespace needs root, which CI runs as")
		}
		t.Skip("a private mount namespace needs root")
	}
	need(t, "/usr/bin/unshare")
	if _, err := os.Stat("/etc/smarthost"); os.IsNotExist(err) {
		if err := os.Mkdir("/etc/smarthost", 0o755); err != nil {
			t.Fatal(err)
		}
		t.Cleanup(func() { os.Remove("/etc/smarthost") })
	}
	dir := t.TempDir()
	b, err := os.ReadFile(config)
	if err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(filepath.Join(dir, "smarthost.yaml"), b, 0o600); err != nil {
		t.Fatal(err)
	}
	return dir
}
