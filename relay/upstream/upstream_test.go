package upstream

import (
	"bufio"
	"context"
	"crypto/x509"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net"
	"os"
	"path/filepath"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/smarthost/smarthost/relay/queue"
	"github.com/smarthost/smarthost/relay/relaytest"
)

func quiet() *slog.Logger { return slog.New(slog.NewTextHandler(io.Discard, nil)) }

// message puts one message in a spool and returns it as the queue would.
func message(t *testing.T, from string, to ...string) *queue.Message {
	t.Helper()
	dir := t.TempDir()
	q, err := queue.Open(queue.Config{Dir: dir}, nil, quiet())
	if err != nil {
		t.Fatal(err)
	}
	defer q.Close()
	d, _ := q.Create()
	io.WriteString(d, "Subject: test\r\n\r\n.dot line\r\nbody\r\n")
	if _, err := d.Commit(queue.Envelope{From: from, To: to}, []byte("X-Prepended: yes\r\n")); err != nil {
		t.Fatal(err)
	}
	sp, _ := queue.OpenSpool(dir)
	ms, _ := sp.List()
	return ms[0]
}

func sink(t *testing.T, o relaytest.SinkOptions) *relaytest.Sink {
	t.Helper()
	s, err := relaytest.NewSink(o)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(s.Close)
	return s
}

func router(t *testing.T, ups ...Upstream) *Router {
	t.Helper()
	return routed(t, nil, ups...)
}

// routed is router with routes.
func routed(t *testing.T, routes []Route, ups ...Upstream) *Router {
	t.Helper()
	for i := range ups {
		if ups[i].Timeout == 0 {
			ups[i].Timeout = 5 * time.Second
		}
		if ups[i].TLS == "" {
			ups[i].TLS = "required"
		}
		ups[i].TLSVerify = true
	}
	r, err := NewRouter(Config{Hostname: "relay.test", Upstreams: ups, Routes: routes}, quiet())
	if err != nil {
		t.Fatal(err)
	}
	return r
}

// deadAddr is a loopback port with nothing listening.
func deadAddr(t *testing.T) string {
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	a := l.Addr().String()
	l.Close()
	return a
}

const wantData = "X-Prepended: yes\r\nSubject: test\r\n\r\n.dot line\r\nbody\r\n"

func TestStartTLSWithAuth(t *testing.T) {
	cert, pool, _ := relaytest.Cert()
	s := sink(t, relaytest.SinkOptions{TLS: cert, Users: map[string]string{"relay": "up-secret"}})
	r := router(t, Upstream{Name: "p", URL: "smtp://" + s.Addr, RootCAs: pool, Username: "relay", Password: "up-secret"})
	errs := deliver(r, context.Background(), message(t, "a@x.org", "b@y.org", "c@y.org"))
	if errs[0] != nil || errs[1] != nil {
		t.Fatalf("Deliver: %v", errs)
	}
	m := s.Messages()
	if len(m) != 1 || !m[0].TLS || m[0].User != "relay" || m[0].From != "a@x.org" || len(m[0].To) != 2 {
		t.Fatalf("sink got %+v", m)
	}
	if string(m[0].Data) != wantData {
		t.Fatalf("data %q, want %q", m[0].Data, wantData)
	}
	// Our name, before and after STARTTLS; never "localhost".
	if h := s.Hellos(); len(h) != 2 || h[0] != "relay.test" || h[1] != "relay.test" {
		t.Fatalf("EHLO names %q, want relay.test twice", h)
	}
}

func TestTLSVerifiedByDefault(t *testing.T) {
	cert, _, _ := relaytest.Cert()
	s := sink(t, relaytest.SinkOptions{TLS: cert})
	r := router(t, Upstream{Name: "p", URL: "smtp://" + s.Addr, RootCAs: x509.NewCertPool()})
	errs := deliver(r, context.Background(), message(t, "a@x.org", "b@y.org"))
	if errs[0] == nil || queue.IsPermanent(errs[0]) || !strings.Contains(errs[0].Error(), "certificate") {
		t.Fatalf("untrusted certificate: %v, want a temporary certificate error", errs[0])
	}
	if len(s.Messages()) != 0 {
		t.Fatal("sent over an unverified connection")
	}
}

func TestRequiredTLSNotOffered(t *testing.T) {
	s := sink(t, relaytest.SinkOptions{})
	r := router(t, Upstream{Name: "p", URL: "smtp://" + s.Addr})
	errs := deliver(r, context.Background(), message(t, "a@x.org", "b@y.org"))
	if errs[0] == nil || queue.IsPermanent(errs[0]) {
		t.Fatalf("got %v, want a temporary error", errs[0])
	}
	r = router(t, Upstream{Name: "p", URL: "smtp://" + s.Addr, TLS: "opportunistic"})
	if errs := deliver(r, context.Background(), message(t, "a@x.org", "b@y.org")); errs[0] != nil {
		t.Fatalf("opportunistic: %v", errs[0])
	}
	if m := s.Messages(); len(m) != 1 || m[0].TLS {
		t.Fatalf("sink got %+v", m)
	}
}

func TestImplicitTLS(t *testing.T) {
	cert, pool, _ := relaytest.Cert()
	s := sink(t, relaytest.SinkOptions{TLS: cert, Implicit: true})
	r := router(t, Upstream{Name: "p", URL: "smtps://" + s.Addr, RootCAs: pool})
	if errs := deliver(r, context.Background(), message(t, "a@x.org", "b@y.org")); errs[0] != nil {
		t.Fatal(errs[0])
	}
	if m := s.Messages(); len(m) != 1 || !m[0].TLS {
		t.Fatalf("sink got %+v", m)
	}
}

func TestFailover(t *testing.T) {
	good := sink(t, relaytest.SinkOptions{})
	busy := sink(t, relaytest.SinkOptions{})
	busy.FailData(relaytest.ErrTemp)
	r := router(t,
		Upstream{Name: "down", URL: "smtp://" + deadAddr(t), TLS: "none"},
		Upstream{Name: "busy", URL: "smtp://" + busy.Addr, TLS: "none"},
		Upstream{Name: "good", URL: "smtp://" + good.Addr, TLS: "none"})
	if errs := deliver(r, context.Background(), message(t, "a@x.org", "b@y.org")); errs[0] != nil {
		t.Fatal(errs[0])
	}
	if len(good.Messages()) != 1 || len(busy.Messages()) != 0 {
		t.Fatalf("good %d, busy %d", len(good.Messages()), len(busy.Messages()))
	}
}

func TestPerRecipientOutcomes(t *testing.T) {
	s := sink(t, relaytest.SinkOptions{})
	s.FailRcpt("gone@y.org", relaytest.ErrPerm)
	s.FailRcpt("later@y.org", relaytest.ErrTemp)
	r := router(t, Upstream{Name: "p", URL: "smtp://" + s.Addr, TLS: "none"})
	errs := deliver(r, context.Background(), message(t, "a@x.org", "ok@y.org", "gone@y.org", "later@y.org"))
	if errs[0] != nil {
		t.Errorf("ok: %v", errs[0])
	}
	if !queue.IsPermanent(errs[1]) || !strings.Contains(errs[1].Error(), "550") {
		t.Errorf("gone: %v, want permanent 550", errs[1])
	}
	if errs[2] == nil || queue.IsPermanent(errs[2]) {
		t.Errorf("later: %v, want temporary", errs[2])
	}
	if m := s.Messages(); len(m) != 1 || len(m[0].To) != 1 || m[0].To[0] != "ok@y.org" {
		t.Fatalf("sink got %+v", m)
	}
}

func TestAllDownIsTemporary(t *testing.T) {
	r := router(t, Upstream{Name: "a", URL: "smtp://" + deadAddr(t)}, Upstream{Name: "b", URL: "smtps://" + deadAddr(t)})
	errs := deliver(r, context.Background(), message(t, "a@x.org", "b@y.org"))
	if errs[0] == nil || queue.IsPermanent(errs[0]) || !strings.Contains(errs[0].Error(), "upstream b") {
		t.Fatalf("got %v, want temporary error from the last upstream", errs[0])
	}
}

func TestRoutes(t *testing.T) {
	corp := sink(t, relaytest.SinkOptions{})
	rest := sink(t, relaytest.SinkOptions{})
	r := routed(t, []Route{{RecipientDomains: []string{"corp.example"}, Upstreams: []string{"corp"}}, {Upstreams: []string{"rest"}}},
		Upstream{Name: "corp", URL: "smtp://" + corp.Addr, TLS: "none", Timeout: time.Second},
		Upstream{Name: "rest", URL: "smtp://" + rest.Addr, TLS: "none", Timeout: time.Second})
	errs := deliver(r, context.Background(), message(t, "a@x.org", "x@CORP.example", "y@other.org"))
	if errs[0] != nil || errs[1] != nil {
		t.Fatal(errs)
	}
	if c, o := corp.Messages(), rest.Messages(); len(c) != 1 || c[0].To[0] != "x@CORP.example" || len(o) != 1 || o[0].To[0] != "y@other.org" {
		t.Fatalf("corp %+v rest %+v", c, o)
	}
	if _, err := NewRouter(Config{Upstreams: []Upstream{{Name: "a", URL: "file:///tmp/x"}}, Routes: []Route{{Upstreams: []string{"b"}}}}, quiet()); err == nil {
		t.Fatal("route to an unknown upstream accepted")
	}
}

func TestFileOutbox(t *testing.T) {
	dir := filepath.Join(t.TempDir(), "outbox")
	r := router(t, Upstream{Name: "f", URL: "file://" + dir})
	m := message(t, "a@x.org", "b@y.org", "c@y.org")
	if errs := deliver(r, context.Background(), m); errs[0] != nil || errs[1] != nil {
		t.Fatal(errs)
	}
	b, err := os.ReadFile(filepath.Join(dir, m.ID+".eml"))
	if err != nil {
		t.Fatal(err)
	}
	want := "Return-Path: <a@x.org>\r\nX-Envelope-To: <b@y.org>, <c@y.org>\r\n" + wantData
	if string(b) != want {
		t.Fatalf("outbox file %q, want %q", b, want)
	}
	// A second delivery never overwrites the first.
	deliver(r, context.Background(), m)
	if _, err := os.Stat(filepath.Join(dir, m.ID+"-2.eml")); err != nil {
		t.Fatal(err)
	}
	ents, _ := os.ReadDir(dir)
	if len(ents) != 2 {
		t.Fatalf("outbox has %d entries, want 2 (no temp files left)", len(ents))
	}
}

func TestProbe(t *testing.T) {
	s := sink(t, relaytest.SinkOptions{})
	r := router(t, Upstream{Name: "up", URL: "smtp://" + s.Addr, TLS: "none"}, Upstream{Name: "down", URL: "smtp://" + deadAddr(t)})
	res := r.Probe(context.Background())
	if res[0].Err != nil || res[1].Err == nil {
		t.Fatalf("probe: %+v", res)
	}
	var ne *net.OpError
	if !errors.As(res[1].Err, &ne) {
		t.Errorf("down: %v, want a network error", res[1].Err)
	}
}

// blackhole is a loopback address whose listener never accepts and whose
// accept queue is full: the kernel drops every further SYN, as a firewall
// or a host that is gone does, so a connect hangs until someone gives up.
func blackhole(t *testing.T) string {
	t.Helper()
	fd, err := syscall.Socket(syscall.AF_INET, syscall.SOCK_STREAM, 0)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { syscall.Close(fd) })
	if err := syscall.Bind(fd, &syscall.SockaddrInet4{Addr: [4]byte{127, 0, 0, 1}}); err != nil {
		t.Fatal(err)
	}
	if err := syscall.Listen(fd, 0); err != nil {
		t.Fatal(err)
	}
	sa, err := syscall.Getsockname(fd)
	if err != nil {
		t.Fatal(err)
	}
	addr := fmt.Sprintf("127.0.0.1:%d", sa.(*syscall.SockaddrInet4).Port)
	// Fill the accept queue (backlog 0 holds one connection, some kernels
	// two); the connections that fill it are never accepted.
	for range 3 {
		c, err := net.DialTimeout("tcp", addr, 300*time.Millisecond)
		if err != nil {
			return addr
		}
		t.Cleanup(func() { c.Close() })
	}
	if os.Getenv("CI") == "true" {
		t.Fatal("the kernel did not drop SYNs to a full accept queue: TestConnectTimeout cannot run (CI=true)")
	}
	t.Skip("the kernel did not drop SYNs to a full accept queue")
	return ""
}

// An upstream that drops packets gives up after connect_timeout, not after
// the 5 minutes of timeout: each waiting dial holds one of the upstream's
// connection slots.
func TestConnectTimeout(t *testing.T) {
	addr := blackhole(t)
	r := router(t, Upstream{Name: "gone", URL: "smtp://" + addr, TLS: "none", Timeout: time.Hour, ConnectTimeout: 200 * time.Millisecond})
	// If connect_timeout were not applied, the dial would wait for the
	// hour; the cancel ends it first, and says so in the error.
	ctx, cancel := context.WithCancel(context.Background())
	defer time.AfterFunc(20*time.Second, cancel).Stop()
	errs := deliver(r, ctx, message(t, "a@x.org", "b@y.org"))
	if errs[0] == nil || queue.IsPermanent(errs[0]) || !strings.Contains(errs[0].Error(), "i/o timeout") {
		t.Fatalf("got %v, want a temporary connect timeout", errs[0])
	}
}

// stallingServer greets (if greet) and answers EHLO, then answers nothing
// more: an upstream that tarpits. It drops every connection after 20 s,
// which ends a delivery that nothing else would end.
func stallingServer(t *testing.T, greet bool) string {
	t.Helper()
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { l.Close() })
	go func() {
		for {
			c, err := l.Accept()
			if err != nil {
				return
			}
			go func() {
				defer c.Close()
				c.SetDeadline(time.Now().Add(20 * time.Second))
				if !greet {
					io.Copy(io.Discard, c)
					return
				}
				io.WriteString(c, "220 tarpit.test ESMTP\r\n")
				r := bufio.NewReader(c)
				for {
					line, err := r.ReadString('\n')
					if err != nil {
						return
					}
					if strings.HasPrefix(strings.ToUpper(line), "EHLO") {
						io.WriteString(c, "250-tarpit.test\r\n250 8BITMIME\r\n")
					}
				}
			}()
		}
	}()
	return l.Addr().String()
}

// A node that leaves cuts short the deliveries in flight to an upstream
// that stalls, at MAIL FROM or before its greeting: the context's end
// ends the wait, with a temporary error that says why, well before the
// upstream's timeout (an hour here) or the server's 20 s.
func TestDeliveryCutShortByContext(t *testing.T) {
	for _, greet := range []bool{true, false} {
		t.Run(fmt.Sprintf("greeting %v", greet), func(t *testing.T) {
			r := router(t, Upstream{Name: "tarpit", URL: "smtp://" + stallingServer(t, greet), TLS: "none", Timeout: time.Hour})
			leaving := errors.New("node leaving")
			ctx, cancel := context.WithCancelCause(context.Background())
			time.AfterFunc(300*time.Millisecond, func() { cancel(leaving) })
			errs := deliver(r, ctx, message(t, "a@x.org", "b@y.org"))
			// The wait ended by our deadline (an i/o timeout), not by the
			// server dropping us (EOF).
			if errs[0] == nil || queue.IsPermanent(errs[0]) || !strings.Contains(errs[0].Error(), "node leaving") ||
				!strings.Contains(errs[0].Error(), "i/o timeout") {
				t.Fatalf("got %v, want a temporary error naming the cause, ended by our deadline", errs[0])
			}
		})
	}
}

// deliver is r.Deliver's outcomes as errors, which is what most tests
// look at.
func deliver(r *Router, ctx context.Context, m *queue.Message) []error {
	var errs []error
	for _, o := range r.Deliver(ctx, m) {
		errs = append(errs, o.Err)
	}
	return errs
}
