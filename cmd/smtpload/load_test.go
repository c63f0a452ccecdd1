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
		l, _ := net.Listen("tcp", "127.0.0.1:0")
		addr := l.Addr().String()
		l.Close()
		done := make(chan error, 1)
		go func() { done <- runSink([]string{"--listen", addr, "--expect", "30"}) }()
		time.Sleep(100 * time.Millisecond)
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
	l, _ := net.Listen("tcp", "127.0.0.1:0")
	addr := l.Addr().String()
	l.Close()
	go runSink([]string{"--listen", addr})
	time.Sleep(100 * time.Millisecond)
	if err := runIdle([]string{"--addr", addr, "--sessions", "50", "--hold", "10ms"}); err != nil {
		t.Fatal(err)
	}
}
