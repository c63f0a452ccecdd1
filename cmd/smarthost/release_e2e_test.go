package main

import (
	"debug/elf"
	"errors"
	"io"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"syscall"
	"testing"
	"time"
)

// The release binary (scripts/build.sh) must run where the Docker image
// puts it: a root with nothing but the binary, its configuration and its
// data; no shared libraries, no /etc, no OpenSSL configuration. Here it
// serves from a chroot of exactly that, signs with both keys (RSA by the
// libcrypto linked into it) and forwards to a sink outside.
func TestReleaseBinaryInEmptyRoot(t *testing.T) {
	if os.Getenv("SMARTHOST_BIN") == "" {
		t.Skip("SMARTHOST_BIN (a release build from scripts/build.sh) not given")
	}
	if os.Geteuid() != 0 {
		if os.Getenv("CI") == "true" {
			t.Fatal("chroot needs root, which CI runs as")
		}
		t.Skip("chroot needs root")
	}
	f, err := elf.Open(binary)
	if err != nil {
		t.Fatal(err)
	}
	for _, p := range f.Progs {
		if p.Type == elf.PT_INTERP {
			t.Fatalf("%s asks for a program interpreter: it is not statically linked", binary)
		}
	}
	f.Close()

	up := freePort(t)
	s := sink(t, up)
	e := newRelayEnv(t, envOpts{upstream: "smtp://" + up})
	e.chroot = true
	// A sandbox may forbid chroot even to root; that is the machine, not
	// the binary.
	v := e.chrootCommand(t)
	v.Args = []string{"/smarthost", "version"}
	vout, err := v.CombinedOutput()
	if errors.Is(err, syscall.EPERM) {
		if os.Getenv("CI") == "true" {
			t.Fatalf("chroot not permitted under CI: %v", err)
		}
		t.Skipf("chroot not permitted here: %v", err)
	}
	if err != nil || !strings.Contains(string(vout), "DKIM RSA signatures: ") {
		t.Fatalf("smarthost version in an empty root: %v\n%s", err, vout)
	}
	e.start(t)
	out, code := swaks(t, "--server", e.starttls, "--tls", "--auth-user", "alice", "--auth-password", "alice-pw",
		"--from", "alice@example.com", "--to", "bob@example.org", "--h-From", "alice@example.com",
		"--h-Subject", "from an empty root", "--body", "Signed in a chroot.\n")
	if code != 0 || !queuedRe.MatchString(out) {
		t.Fatalf("swaks exit %d:\n%s", code, out)
	}
	got := s.Wait(1, 10*time.Second)
	if len(got) != 1 {
		t.Fatalf("the sink got %d messages", len(got))
	}
	msg := got[0].Data
	if !strings.Contains(string(msg), "Signed in a chroot.") {
		t.Fatalf("the sink got something else:\n%s", msg)
	}
	dkimVerify(t, e.records, msg)
}

func copyFile(t *testing.T, from, to string) {
	t.Helper()
	src, err := os.Open(from)
	if err != nil {
		t.Fatal(err)
	}
	defer src.Close()
	dst, err := os.OpenFile(to, os.O_CREATE|os.O_WRONLY|os.O_TRUNC, 0o755)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := io.Copy(dst, src); err != nil {
		t.Fatal(err)
	}
	if err := dst.Close(); err != nil {
		t.Fatal(err)
	}
}

// chrootCommand copies the binary into e.dir (once) and runs `serve` with
// e.dir as the root, on the same configuration with its paths made
// relative to it.
func (e *relayEnv) chrootCommand(t *testing.T) *exec.Cmd {
	t.Helper()
	if _, err := os.Stat(filepath.Join(e.dir, "smarthost")); err != nil {
		copyFile(t, binary, filepath.Join(e.dir, "smarthost"))
	}
	cfg, err := os.ReadFile(e.config)
	if err != nil {
		t.Fatal(err)
	}
	inside := strings.ReplaceAll(string(cfg), e.dir, "")
	if err := os.WriteFile(filepath.Join(e.dir, "chroot.yaml"), []byte(inside), 0o600); err != nil {
		t.Fatal(err)
	}
	cmd := exec.Command("/smarthost", "serve", "--config", "/chroot.yaml")
	cmd.Dir = "/"
	cmd.Env = []string{} // nothing from outside either
	cmd.SysProcAttr = &syscall.SysProcAttr{Chroot: e.dir}
	return cmd
}
