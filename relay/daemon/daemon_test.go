package daemon

import (
	"bytes"
	"context"
	"crypto/tls"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net"
	"net/http"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/emersion/go-sasl"
	"github.com/emersion/go-smtp"
	"golang.org/x/crypto/bcrypt"

	"github.com/smarthost/smarthost/configs"
	"github.com/smarthost/smarthost/relay/relaytest"
)

// relayConfig is a configuration with every listener on port 0, a users
// file holding users (name: password), and the sink at upstream.
func relayConfig(t *testing.T, dir, upstream string, users map[string]string) []byte {
	t.Helper()
	var text strings.Builder
	text.WriteString("users:\n")
	for name, password := range users {
		h, err := bcrypt.GenerateFromPassword([]byte(password), bcrypt.MinCost)
		if err != nil {
			t.Fatal(err)
		}
		fmt.Fprintf(&text, "  %s:\n    password_hash: %q\n    addresses: [%s@example.com]\n", name, h, name)
	}
	usersFile := filepath.Join(dir, "users.yaml")
	if err := os.WriteFile(usersFile, []byte(text.String()), 0o600); err != nil {
		t.Fatal(err)
	}
	return []byte(fmt.Sprintf(`hostname: relay.test
listeners:
  - {address: "127.0.0.1:0", mode: implicit}
tls: {self_signed: true}
auth:
  backend: static
  static: {users_file: %q}
upstreams:
  - {name: sink, url: "smtp://%s", tls: none, timeout: 5s}
queue:
  dir: %q
  retry: [100ms]
metrics: {listen: "127.0.0.1:0"}
`, usersFile, upstream, filepath.Join(dir, "queue")))
}

// submit sends one message as user over implicit TLS, and returns the
// error of the first step that failed.
func submit(addr, user, password, body string) error {
	c, err := smtp.DialTLS(addr, &tls.Config{InsecureSkipVerify: true})
	if err != nil {
		return err
	}
	defer c.Close()
	if err := c.Auth(sasl.NewPlainClient("", user, password)); err != nil {
		return err
	}
	from := user + "@example.com"
	msg := "From: " + from + "\r\nTo: rcpt@dest.test\r\nSubject: in-process\r\n\r\n" + body + "\r\n"
	if err := c.SendMail(from, []string{"rcpt@dest.test"}, strings.NewReader(msg)); err != nil {
		return err
	}
	return c.Quit()
}

// The daemon runs in-process: it listens on the ports the system chose,
// relays a message to the upstream, answers its admin endpoints, takes a
// new users file at Reload (and refuses a broken one, keeping the running
// configuration), and lets go of its ports when its context ends.
func TestDaemonInProcess(t *testing.T) {
	sink, err := relaytest.NewSink(relaytest.SinkOptions{})
	if err != nil {
		t.Fatal(err)
	}
	defer sink.Close()
	dir := t.TempDir()
	text := relayConfig(t, dir, sink.Addr, map[string]string{"alice": "alice-pw"})
	f, err := configs.Parse(text)
	if err != nil {
		t.Fatal(err)
	}
	var next []byte // what Load reads at the next Reload
	load := func() (*configs.File, error) { return configs.Parse(next) }
	logged := &syncWriter{w: &bytes.Buffer{}}
	log := slog.New(slog.NewTextHandler(logged, nil))
	t.Cleanup(func() {
		if t.Failed() {
			logged.mu.Lock()
			t.Logf("the daemon's log:\n%s", logged.w)
			logged.mu.Unlock()
		}
	})
	d, err := New(Config{File: f, Load: load, Version: "test"}, log)
	if err != nil {
		t.Fatal(err)
	}
	ctx, stop := context.WithCancel(context.Background())
	ran := make(chan error, 1)
	go func() { ran <- d.Run(ctx) }()
	addrs := d.Addrs()
	if len(addrs.SMTP) != 1 || addrs.Admin == nil {
		t.Fatalf("Addrs: %+v", addrs)
	}
	smtpAddr := addrs.SMTP[0].String()

	if err := submit(smtpAddr, "alice", "alice-pw", "first"); err != nil {
		t.Fatalf("alice: %v", err)
	}
	got := sink.Wait(1, 10*time.Second)
	if len(got) != 1 || got[0].From != "alice@example.com" || !bytes.Contains(got[0].Data, []byte("first")) {
		t.Fatalf("the sink got %+v", got)
	}
	relaytest.Eventually(t, "readiness", 10*time.Second, func() bool { return httpStatus(addrs.Admin, "/readyz") == http.StatusOK })

	var smtpErr *smtp.SMTPError
	if err := submit(smtpAddr, "bob", "bob-pw", "early"); !errors.As(err, &smtpErr) || smtpErr.Code != 535 {
		t.Fatalf("bob before the reload: %v, want 535", err)
	}
	next = []byte("listeners: [") // broken: refused, alice still served
	if err := d.Reload(); err == nil {
		t.Fatal("a broken configuration was taken at Reload")
	}
	next = relayConfig(t, dir, sink.Addr, map[string]string{"alice": "alice-pw", "bob": "bob-pw"})
	if err := d.Reload(); err != nil {
		t.Fatalf("Reload: %v", err)
	}
	if err := submit(smtpAddr, "bob", "bob-pw", "second"); err != nil {
		t.Fatalf("bob after the reload: %v", err)
	}
	if got := sink.Wait(2, 10*time.Second); len(got) != 2 || got[1].From != "bob@example.com" {
		t.Fatalf("the sink got %+v", got)
	}

	stop()
	select {
	case err := <-ran:
		if err != nil {
			t.Fatalf("Run: %v", err)
		}
	case <-time.After(shutdownGrace + 10*time.Second):
		t.Fatal("Run did not return after its context ended")
	}
	if c, err := net.Dial("tcp", smtpAddr); err == nil {
		c.Close()
		t.Error("the SMTP port still accepts after Run returned")
	}
	if httpStatus(addrs.Admin, "/healthz") != 0 {
		t.Error("the admin port still answers after Run returned")
	}
}

// httpStatus is the status of GET path on the admin listener; 0 when
// nothing answers.
func httpStatus(admin net.Addr, path string) int {
	client := http.Client{Timeout: 5 * time.Second}
	resp, err := client.Get("http://" + admin.String() + path)
	if err != nil {
		return 0
	}
	io.Copy(io.Discard, resp.Body)
	resp.Body.Close()
	return resp.StatusCode
}

// syncWriter is a log destination safe for the daemon's goroutines.
type syncWriter struct {
	mu sync.Mutex
	w  io.Writer
}

func (s *syncWriter) Write(p []byte) (int, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.w.Write(p)
}
