//go:build release

package packaging

import (
	"crypto/tls"
	"net"
	"net/smtp"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/smarthost/smarthost/relay/relaytest"
)

// debianRoot unpacks a fresh minimal Debian (scripts/debian-root.sh's,
// made by debootstrap) for one test.

// oneMessage matches the count line of queue list when it says exactly
// one message (a substring would also match 11 or 21).
var oneMessage = regexp.MustCompile(`(?m)^1 message\(s\)\r?$`)

func debianRoot(t *testing.T) string {
	t.Helper()
	if os.Geteuid() != 0 {
		if os.Getenv("CI") == "true" {
			t.Fatal("installing a .deb into a Debian root needs root, which CI runs as")
		}
		t.Skip("installing a .deb into a Debian root needs root")
	}
	tarball := strings.TrimSpace(run(t, "../../scripts/debian-root.sh", "bookworm", "systemd,procps"))
	root := t.TempDir()
	run(t, "tar", "-C", root, "--numeric-owner", "-xf", tarball)
	return root
}

func inRoot(t *testing.T, root string, args ...string) string {
	t.Helper()
	return run(t, "chroot", append([]string{root}, args...)...)
}

// dpkgInstall copies a .deb into the root and installs it there.
func dpkgInstall(t *testing.T, root, deb string) string {
	t.Helper()
	b, err := os.ReadFile(deb)
	if err != nil {
		t.Fatal(err)
	}
	os.WriteFile(filepath.Join(root, "tmp", filepath.Base(deb)), b, 0o644)
	return inRoot(t, root, "dpkg", "-i", "/tmp/"+filepath.Base(deb))
}

// The .deb on a fresh Debian: the binary runs, the shipped configuration
// is configs/minimal.yaml and check-config accepts it once its files are
// in place, the unit passes systemd-analyze verify, the system user and
// the state folder exist; purge removes configuration, state and user.
func TestDebInstall(t *testing.T) {
	v := env(t, "SMARTHOST_VERSION")
	root := debianRoot(t)
	dpkgInstall(t, root, artifact(t, "smarthost_"+v+"_amd64.deb"))

	if out := inRoot(t, root, "smarthost", "version"); !strings.Contains(out, "smarthost "+v+"\n") {
		t.Errorf("smarthost version in the root:\n%s", out)
	}
	shipped, _ := os.ReadFile(filepath.Join(root, "etc/smarthost/smarthost.yaml"))
	minimal, _ := os.ReadFile("../../configs/minimal.yaml")
	if string(shipped) != string(minimal) {
		t.Error("/etc/smarthost/smarthost.yaml is not configs/minimal.yaml")
	}
	if out := inRoot(t, root, "stat", "-c", "%U:%G %a", "/var/lib/smarthost", "/etc/smarthost", "/etc/smarthost/smarthost.yaml"); out != "smarthost:smarthost 750\nroot:smarthost 750\nroot:smarthost 640\n" {
		t.Errorf("owners and modes:\n%s", out)
	}
	if out, err := exec.Command("chroot", root, "smarthost", "check-config", "--config", "/etc/smarthost/smarthost.yaml").CombinedOutput(); err == nil {
		t.Errorf("check-config passed before the files the configuration names exist:\n%s", out)
	}
	minimalEtc(t, filepath.Join(root, "etc/smarthost"), artifact(t, "smarthost_"+v+"_linux_amd64"))
	if out := inRoot(t, root, "smarthost", "check-config", "--config", "/etc/smarthost/smarthost.yaml"); !strings.Contains(out, "configuration is valid") {
		t.Errorf("check-config on the shipped configuration:\n%s", out)
	}
	unit := filepath.Join(root, "lib/systemd/system/smarthost.service")
	text, _ := os.ReadFile(unit)
	for _, want := range []string{"ExecStart=/usr/bin/smarthost serve", "EnvironmentFile=-/etc/default/smarthost", "User=smarthost"} {
		if !strings.Contains(string(text), want) {
			t.Errorf("the unit lacks %q", want)
		}
	}
	if out, err := exec.Command("systemd-analyze", "verify", "--root="+root, "/lib/systemd/system/smarthost.service").CombinedOutput(); err != nil || strings.Contains(string(out), "smarthost.service:") {
		t.Errorf("systemd-analyze verify: %v\n%s", err, out)
	}

	inRoot(t, root, "dpkg", "--purge", "smarthost")
	for _, gone := range []string{"etc/smarthost", "var/lib/smarthost", "usr/bin/smarthost"} {
		if _, err := os.Stat(filepath.Join(root, gone)); err == nil {
			t.Errorf("/%s is still there after purge", gone)
		}
	}
	if out, err := exec.Command("chroot", root, "getent", "passwd", "smarthost").CombinedOutput(); err == nil {
		t.Errorf("the smarthost user is still there after purge: %s", out)
	}
}

// An upgrade keeps a changed configuration and a queued message: install
// an earlier version, change the configuration, leave a message in the
// queue (the upstream is down), install this version over it.
func TestDebUpgrade(t *testing.T) {
	v := env(t, "SMARTHOST_VERSION")
	olds, _ := filepath.Glob(filepath.Join(env(t, "SMARTHOST_DIST_OLD"), "smarthost_*_amd64.deb"))
	if len(olds) != 1 {
		t.Fatalf("want one earlier .deb in SMARTHOST_DIST_OLD, found %v", olds)
	}
	root := debianRoot(t)
	dpkgInstall(t, root, olds[0])
	old := inRoot(t, root, "smarthost", "version")
	minimalEtc(t, filepath.Join(root, "etc/smarthost"), artifact(t, "smarthost_"+v+"_linux_amd64"))

	submit, down := freePort(t), freePort(t)
	cfgPath := filepath.Join(root, "etc/smarthost/smarthost.yaml")
	text, _ := os.ReadFile(cfgPath)
	changed := strings.NewReplacer(
		"hostname: relay.example.com", "hostname: upgraded.example.com",
		`{address: "0.0.0.0:587", mode: starttls}`, `{address: "`+submit+`", mode: starttls}`,
		`{address: "0.0.0.0:465", mode: implicit}`, `{address: "`+freePort(t)+`", mode: implicit}`,
		`"smtp://smtp.provider.example:587"`, `"smtp://`+down+`"`,
		`listen: "127.0.0.1:9587"`, `listen: ""`,
	).Replace(string(text))
	if changed == string(text) {
		t.Fatal("the configuration did not change")
	}
	os.WriteFile(cfgPath, []byte(changed), 0o640)

	relay := exec.Command("chroot", root, "smarthost", "serve", "--config", "/etc/smarthost/smarthost.yaml")
	var log strings.Builder
	relay.Stderr = &log
	if err := relay.Start(); err != nil {
		t.Fatal(err)
	}
	done := make(chan error, 1)
	go func() { done <- relay.Wait() }()
	defer relay.Process.Kill()
	waitListening(t, submit, done)
	if err := sendMail(submit, "app1", "app1-password", "app1@example.com", "someone@example.org", "Subject: kept across the upgrade\r\n"); err != nil {
		t.Fatalf("submitting: %v\n%s", err, log.String())
	}
	relay.Process.Signal(syscall.SIGTERM)
	select {
	case <-done:
	case <-time.After(60 * time.Second):
		t.Fatalf("the relay did not stop\n%s", log.String())
	}
	before := inRoot(t, root, "smarthost", "queue", "list", "--config", "/etc/smarthost/smarthost.yaml")
	if !oneMessage.MatchString(before) {
		t.Fatalf("queue before the upgrade:\n%s", before)
	}

	dpkgInstall(t, root, artifact(t, "smarthost_"+v+"_amd64.deb"))
	if now := inRoot(t, root, "smarthost", "version"); now == old || !strings.Contains(now, "smarthost "+v+"\n") {
		t.Errorf("version after the upgrade:\n%s(before:\n%s)", now, old)
	}
	if after, _ := os.ReadFile(cfgPath); string(after) != changed {
		t.Error("the upgrade changed the edited configuration")
	}
	after := inRoot(t, root, "smarthost", "queue", "list", "--config", "/etc/smarthost/smarthost.yaml")
	id := regexp.MustCompile(`[0-9A-F]{20}`).FindString(before)
	if id == "" || !strings.Contains(after, id) {
		t.Errorf("the queued message %q did not survive the upgrade:\nbefore:\n%s\nafter:\n%s", id, before, after)
	}
}

func freePort(t *testing.T) string {
	t.Helper()
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer l.Close()
	return l.Addr().String()
}

func waitListening(t *testing.T, addr string, done chan error) {
	t.Helper()
	relaytest.EventuallyEvery(t, "a listener on "+addr, 60*time.Second, 200*time.Millisecond, func() bool {
		select {
		case err := <-done:
			t.Fatalf("the relay exited: %v", err)
		default:
		}
		c, err := net.DialTimeout("tcp", addr, time.Second)
		if err == nil {
			c.Close()
		}
		return err == nil
	})
}

// sendMail submits one message with STARTTLS and AUTH PLAIN, trusting any
// certificate (the tests' are made by a test CA).
func sendMail(addr, user, pass, from, to, headers string) error {
	c, err := smtp.Dial(addr)
	if err != nil {
		return err
	}
	defer c.Close()
	host, _, _ := net.SplitHostPort(addr)
	if err := c.StartTLS(&tls.Config{InsecureSkipVerify: true, ServerName: "relay.example.com"}); err != nil {
		return err
	}
	if err := c.Auth(smtp.PlainAuth("", user, pass, host)); err != nil {
		return err
	}
	if err := c.Mail(from); err != nil {
		return err
	}
	if err := c.Rcpt(to); err != nil {
		return err
	}
	w, err := c.Data()
	if err != nil {
		return err
	}
	if _, err := w.Write([]byte("From: " + from + "\r\nTo: " + to + "\r\n" + headers + "\r\nHello.\r\n")); err != nil {
		return err
	}
	if err := w.Close(); err != nil {
		return err
	}
	return c.Quit()
}
