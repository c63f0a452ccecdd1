package main

import (
	"net"
	"testing"
	"time"
)

// The load tool against its own counting sink: the sink sees exactly the
// messages the tool sent, over reused and over fresh connections.
func TestLoadIntoSink(t *testing.T) {
	for _, perSession := range []string{"0", "1"} {
		addr, done := startSink(t, "--expect", "30")
		if err := runLoad([]string{"--addr", addr, "--sessions", "3", "--per-session", perSession, "--total", "30", "--size", "2048"}); err != nil {
			t.Fatal(err)
		}
		select {
		case err := <-done:
			if err != nil {
				t.Fatal(err)
			}
		case <-time.After(10 * time.Second):
			t.Fatalf("per-session %s: the sink did not see 30 messages", perSession)
		}
	}
}

func TestMessageSize(t *testing.T) {
	m := makeMessage("a@b.c", "d@e.f", 10240)
	if len(m) < 10240-80 || len(m) > 10240 {
		t.Fatalf("message of %d bytes for 10240", len(m))
	}
}

func TestIdleSessions(t *testing.T) {
	addr, _ := startSink(t)
	if err := runIdle([]string{"--addr", addr, "--sessions", "50", "--hold", "10ms"}); err != nil {
		t.Fatal(err)
	}
}

// startSink runs the counting sink on a free port with extra flags and
// returns its address and where its result will come once it exits.
func startSink(t *testing.T, flags ...string) (string, <-chan error) {
	t.Helper()
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	addr := l.Addr().String()
	l.Close()
	done := make(chan error, 1)
	go func() { done <- runSink(append([]string{"--listen", addr}, flags...)) }()
	for i := 0; i < 100; i++ {
		if c, err := net.Dial("tcp", addr); err == nil {
			c.Close()
			return addr, done
		}
		time.Sleep(20 * time.Millisecond)
	}
	t.Fatalf("sink on %s never listened", addr)
	return "", nil
}

// On a schedule the load does not wait for the server: messages are due
// every 5 ms, one session, and the sink takes 20 ms per message, so the
// ninth answer comes at least 9 x 20 ms after the start although it was due
// at 8 x 5 ms. A latency counted from MAIL (about 20 ms) would hide that.
func TestRateLatencyCountsFromWhenDue(t *testing.T) {
	addr, _ := startSink(t, "--delay", "20ms")
	c := &loadConfig{addr: addr, from: "a@example.com", to: "b@example.org", sessions: 1, size: 1024, total: 10, rate: 200}
	st, _ := load(c)
	if n := st.accepted.Load(); n != 10 {
		t.Fatalf("accepted %d of 10 (first error %v)", n, st.firstErr.Load())
	}
	if p := pct(st.message, 99); p < 140*time.Millisecond {
		t.Errorf("p99 from when due = %v, want at least 140ms", p)
	}
}

// The schedule is kept when the server is fast: 21 messages at 100/s over
// four sessions take at least the 200 ms between the first and the last
// one's due time.
func TestRatePacesLoad(t *testing.T) {
	addr, _ := startSink(t)
	c := &loadConfig{addr: addr, from: "a@example.com", to: "b@example.org", sessions: 4, size: 1024, total: 21, rate: 100}
	st, took := load(c)
	if n := st.accepted.Load(); n != 21 {
		t.Fatalf("accepted %d of 21 (first error %v)", n, st.firstErr.Load())
	}
	if took < 200*time.Millisecond {
		t.Errorf("21 messages at 100/s took %v, want at least 200ms", took)
	}
}
