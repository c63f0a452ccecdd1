package upstream

import (
	"context"
	"errors"
	"fmt"
	"io"
	"math/rand/v2"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/emersion/go-smtp"

	"github.com/smarthost/smarthost/relay/queue"
	"github.com/smarthost/smarthost/relay/relaytest"
	"github.com/smarthost/smarthost/relay/upstream/smtpclient"
)

// spool makes a queue with n messages and returns them.
func spool(t testing.TB, n int, env queue.Envelope, body string) []*queue.Message {
	t.Helper()
	dir := t.TempDir()
	q, err := queue.Open(queue.Config{Dir: dir}, nil, quiet())
	if err != nil {
		t.Fatal(err)
	}
	defer q.Close()
	for i := 0; i < n; i++ {
		d, _ := q.Create()
		io.WriteString(d, body)
		if _, err := d.Commit(env, nil); err != nil {
			t.Fatal(err)
		}
	}
	sp, _ := queue.OpenSpool(dir)
	ms, _ := sp.List()
	return ms
}

// 1,000 messages from 16 workers over a pool of 4: the upstream sees 4
// connections, not 1,000.
func TestConnectionReuse(t *testing.T) {
	cert, pool, _ := relaytest.Cert()
	s := sink(t, relaytest.SinkOptions{TLS: cert, Users: map[string]string{"relay": "pw"}})
	// A timeout of 30 s (a stall window of 10 s): with the 5 s default,
	// 16 workers waiting on 4 TLS sessions under -race on two loaded cores
	// saw none move for 2.5 s and gave up, which is not what is tested.
	r := router(t, Upstream{Name: "p", URL: "smtp://" + s.Addr, RootCAs: pool, Username: "relay", Password: "pw", MaxConnections: 4,
		Timeout: 30 * time.Second})
	defer r.Close()
	ms := spool(t, 1000, queue.Envelope{From: "a@x.org", To: []string{"b@y.org"}}, "Subject: reuse\r\n\r\nbody\r\n")
	work := make(chan *queue.Message)
	var wg sync.WaitGroup
	var mu sync.Mutex
	var failed []error
	for w := 0; w < 16; w++ {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for m := range work {
				if errs := deliver(r, context.Background(), m); errs[0] != nil {
					mu.Lock()
					failed = append(failed, errs[0])
					mu.Unlock()
				}
			}
		}()
	}
	for _, m := range ms {
		work <- m
	}
	close(work)
	wg.Wait()
	if len(failed) > 0 {
		t.Fatalf("%d failed, first: %v", len(failed), failed[0])
	}
	if got := len(s.Messages()); got != 1000 {
		t.Fatalf("sink got %d messages", got)
	}
	if c := s.Connections(); c > 4 {
		t.Fatalf("%d TCP connections for 1000 messages, want at most max_connections (4)", c)
	}
}

// A 421 mid-session ends that session: the recipients are retried (not
// bounced) and the next delivery dials afresh. The sink answers on after
// its 421 (a real server closes): with BDAT the message was on its way,
// and what the sink took is what is reported for the other recipient.
func Test421MidSession(t *testing.T) {
	s := sink(t, relaytest.SinkOptions{})
	s.FailRcpt("b@y.org", &smtp.SMTPError{Code: 421, EnhancedCode: smtp.EnhancedCode{4, 3, 2}, Message: "shutting down"})
	r := router(t, Upstream{Name: "p", URL: "smtp://" + s.Addr, TLS: "none"})
	defer r.Close()
	m := spool(t, 1, queue.Envelope{From: "a@x.org", To: []string{"ok@y.org", "b@y.org"}}, "Subject: x\r\n\r\nx\r\n")[0]
	errs := deliver(r, context.Background(), m)
	if errs[1] == nil || queue.IsPermanent(errs[1]) || queue.IsPermanent(errs[0]) {
		t.Fatalf("after 421: %v, want b@y.org temporary", errs)
	}
	if took := len(s.Messages()); (errs[0] == nil) != (took == 1) {
		t.Fatalf("ok@y.org: %v, and the sink took %d messages", errs[0], took)
	}
	s.FailRcpt("b@y.org", nil)
	if errs := deliver(r, context.Background(), m); errs[0] != nil || errs[1] != nil {
		t.Fatalf("retry: %v", errs)
	}
	if c := s.Connections(); c != 2 {
		t.Fatalf("%d connections, want 2 (the 421 session was not reused)", c)
	}
}

// A sender refused for one message leaves the session good for the next.
func TestRefusedSenderKeepsSession(t *testing.T) {
	s := sink(t, relaytest.SinkOptions{})
	r := router(t, Upstream{Name: "p", URL: "smtp://" + s.Addr, TLS: "none"})
	defer r.Close()
	bad := spool(t, 1, queue.Envelope{From: "a@x.org", To: []string{"gone@y.org"}}, "Subject: x\r\n\r\nx\r\n")[0]
	s.FailRcpt("gone@y.org", relaytest.ErrPerm)
	if errs := deliver(r, context.Background(), bad); !queue.IsPermanent(errs[0]) {
		t.Fatalf("refused recipient: %v", errs[0])
	}
	good := spool(t, 1, queue.Envelope{From: "a@x.org", To: []string{"ok@y.org"}}, "Subject: x\r\n\r\nx\r\n")[0]
	if errs := deliver(r, context.Background(), good); errs[0] != nil {
		t.Fatal(errs[0])
	}
	if c := s.Connections(); c != 1 {
		t.Fatalf("%d connections, want 1", c)
	}
}

func TestDSNParametersPassedUpstream(t *testing.T) {
	s := sink(t, relaytest.SinkOptions{})
	r := router(t, Upstream{Name: "p", URL: "smtp://" + s.Addr, TLS: "none"})
	defer r.Close()
	m := spool(t, 1, queue.Envelope{From: "a@x.org", To: []string{"b@y.org", "c@y.org"}, Ret: "HDRS", EnvID: "env-42",
		Notify: [][]string{{"FAILURE", "DELAY"}, nil}, ORcpt: []string{"orig-b@y.org", ""}}, "Subject: x\r\n\r\nx\r\n")[0]
	if errs := deliver(r, context.Background(), m); errs[0] != nil || errs[1] != nil {
		t.Fatal(errs)
	}
	got := s.Messages()[0]
	if got.Ret != "HDRS" || got.EnvID != "env-42" || got.Notify["b@y.org"] != "FAILURE,DELAY" || got.ORcpt["b@y.org"] != "orig-b@y.org" || got.Notify["c@y.org"] != "" {
		t.Fatalf("upstream saw %+v", got)
	}
}

func TestRouteByClass(t *testing.T) {
	bulk := sink(t, relaytest.SinkOptions{})
	rest := sink(t, relaytest.SinkOptions{})
	r := routed(t, []Route{{Classes: []string{"bulk"}, Upstreams: []string{"bulk"}}, {Upstreams: []string{"rest"}}},
		Upstream{Name: "bulk", URL: "smtp://" + bulk.Addr, TLS: "none", Timeout: time.Second},
		Upstream{Name: "rest", URL: "smtp://" + rest.Addr, TLS: "none", Timeout: time.Second})
	defer r.Close()
	deliver(r, context.Background(), spool(t, 1, queue.Envelope{From: "a@x.org", To: []string{"b@y.org"}, Class: "bulk"}, "S: x\r\n\r\nx\r\n")[0])
	deliver(r, context.Background(), spool(t, 1, queue.Envelope{From: "a@x.org", To: []string{"b@y.org"}}, "S: x\r\n\r\nx\r\n")[0])
	if len(bulk.Messages()) != 1 || len(rest.Messages()) != 1 {
		t.Fatalf("bulk %d, rest %d", len(bulk.Messages()), len(rest.Messages()))
	}
}

// Postfix's smtp-sink as the upstream: a second, independent SMTP server.
func TestPostfixSmtpSink(t *testing.T) {
	const bin = "/usr/sbin/smtp-sink"
	if _, err := os.Stat(bin); err != nil {
		if os.Getenv("CI") == "true" {
			t.Fatal("smtp-sink (Debian's postfix) is missing under CI")
		}
		t.Skip("smtp-sink not installed")
	}
	dir := t.TempDir()
	addr := deadAddr(t)
	cmd := exec.Command(bin, "-u", "root", "-d", filepath.Join(dir, "%M."), addr, "10")
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	defer func() { cmd.Process.Kill(); cmd.Wait() }()
	r := router(t, Upstream{Name: "postfix", URL: "smtp://" + addr, TLS: "none", MaxConnections: 2})
	defer r.Close()
	ms := spool(t, 20, queue.Envelope{From: "a@x.org", To: []string{"b@y.org", "c@y.org"}}, "Subject: to postfix\r\n\r\n.dot\r\nbody\r\n")
	for _, m := range ms {
		var errs []error
		delivered := relaytest.Within(10*time.Second, func() bool { // smtp-sink may still be starting
			errs = deliver(r, context.Background(), m)
			return errs[0] == nil && errs[1] == nil
		})
		if !delivered {
			t.Fatalf("delivery to smtp-sink: %v", errs)
		}
	}
	var files []string
	relaytest.Within(10*time.Second, func() bool {
		files, _ = filepath.Glob(filepath.Join(dir, "*"))
		return len(files) >= 20
	})
	if len(files) != 20 {
		t.Fatalf("smtp-sink stored %d messages, want 20", len(files))
	}
	raw, _ := os.ReadFile(files[0])
	b := strings.ReplaceAll(string(raw), "\r\n", "\n") // smtp-sink stores LF
	for _, want := range []string{"X-Mail-Args: <a@x.org>", "X-Rcpt-Args: <b@y.org>", "X-Rcpt-Args: <c@y.org>", "Subject: to postfix", "\n.dot\nbody"} {
		if !strings.Contains(b, want) {
			t.Errorf("smtp-sink's copy lacks %q:\n%s", want, b)
		}
	}
}

func BenchmarkDeliver10KB(b *testing.B) {
	s := sink(&testing.T{}, relaytest.SinkOptions{})
	defer s.Close()
	r := router(&testing.T{}, Upstream{Name: "p", URL: "smtp://" + s.Addr, TLS: "none", MaxConnections: 8})
	defer r.Close()
	body := "Subject: bench\r\n\r\n" + strings.Repeat(strings.Repeat("x", 98)+"\r\n", 100)
	ms := spool(b, 64, queue.Envelope{From: "a@x.org", To: []string{"b@y.org"}}, body)
	b.SetBytes(int64(len(body)))
	b.ResetTimer()
	var i int64
	var mu sync.Mutex
	b.SetParallelism(4)
	b.RunParallel(func(pb *testing.PB) {
		for pb.Next() {
			mu.Lock()
			m := ms[i%int64(len(ms))]
			i++
			mu.Unlock()
			if errs := deliver(r, context.Background(), m); errs[0] != nil {
				panic(fmt.Sprint(errs[0]))
			}
		}
	})
}

// Weighted upstreams share the load by weight; unweighted ones stay as
// failover behind them.
func TestWeights(t *testing.T) {
	r := &Router{weight: map[string]int{"a": 3, "b": 1, "c": 0}, rand: rand.New(rand.NewPCG(1, 2))}
	first := map[string]int{}
	for i := 0; i < 4000; i++ {
		o := r.order([]string{"a", "b", "c"})
		if len(o) != 3 || o[2] != "c" {
			t.Fatalf("order %v: the unweighted upstream must come last", o)
		}
		first[o[0]]++
	}
	if share := float64(first["a"]) / 4000; share < 0.70 || share > 0.80 {
		t.Fatalf("a first in %.2f of deliveries, want about 0.75 (weight 3 of 4)", share)
	}
	if o := r.order([]string{"c", "d"}); o[0] != "c" || o[1] != "d" {
		t.Fatalf("no weights: %v, want the listed order", o)
	}
}

// An upstream that stalls (here: its one connection never finishes
// opening) holds one delivery; the next waits only until the stall shows,
// and once one is waiting on a stalled upstream, the next gives up at once.
func TestStalledUpstreamReleasesWorkers(t *testing.T) {
	release := make(chan struct{})
	defer close(release)
	// The stall window is a second: a waiter that waits for it takes that
	// long, one refused at once takes far less, and the difference holds
	// under -race on two loaded cores, where 50 ms did not.
	const window = time.Second
	p := newPool(1, window, func(ctx context.Context) (*smtpclient.Conn, error) {
		<-release
		return nil, fmt.Errorf("closed")
	})
	go p.get(context.Background()) // takes the only slot and hangs in the dial
	relaytest.Eventually(t, "the dial under way", 10*time.Second, func() bool { return len(p.slots) == 1 })
	start := time.Now()
	waiter := make(chan error, 1)
	go func() { _, _, err := p.get(context.Background()); waiter <- err }()
	relaytest.Eventually(t, "a waiter", 10*time.Second, func() bool { return p.waiting.Load() == 1 })
	// A second waiter, with one already waiting on a stalled upstream:
	// not yet stalled (the pool is new), so it waits too.
	_, _, err := p.get(context.Background())
	waited := time.Since(start)
	if !errors.Is(err, errBusy) || waited < window {
		t.Fatalf("second waiter: %v after %s", err, waited)
	}
	if err := <-waiter; !errors.Is(err, errBusy) || time.Since(start) > 10*window {
		t.Fatalf("first waiter: %v after %s", err, time.Since(start))
	}
	// Now the stall is known: one more waiter past the cap is refused at
	// once.
	go p.get(context.Background())
	relaytest.Eventually(t, "a waiter", 10*time.Second, func() bool { return p.waiting.Load() == 1 })
	start = time.Now()
	// Against the wait measured above: refused in less than half of it.
	if _, _, err := p.get(context.Background()); !errors.Is(err, errBusy) || time.Since(start) > waited/2 {
		t.Fatalf("a waiter past the cap on a stalled upstream: %v after %s (a waiter that waited took %s)", err, time.Since(start), waited)
	}
}
