package main

import (
	"flag"
	"fmt"
	"io"
	"net"
	"os"
	"os/signal"
	"sync/atomic"
	"syscall"
	"time"

	"github.com/emersion/go-smtp"
)

// runSink accepts everything, counts messages, and prints one line when the
// expected number has arrived (and exits), or at SIGTERM.
func runSink(args []string) error {
	fs := flag.NewFlagSet("sink", flag.ContinueOnError)
	listen := fs.String("listen", "127.0.0.1:2525", "address")
	expect := fs.Int64("expect", 0, "exit after this many messages (0: run until signalled)")
	delay := fs.Duration("delay", 0, "wait this long before answering each message (a slow upstream)")
	if err := fs.Parse(args); err != nil {
		return err
	}
	var count atomic.Int64
	var lastAt atomic.Int64
	done := make(chan struct{})
	be := smtp.BackendFunc(func(*smtp.Conn) (smtp.Session, error) {
		return &sinkSession{count: &count, lastAt: &lastAt, expect: *expect, delay: *delay, done: done}, nil
	})
	s := smtp.NewServer(be)
	s.Domain = "smtpload-sink"
	s.MaxMessageBytes = 64 << 20
	s.ReadTimeout, s.WriteTimeout = time.Minute, time.Minute
	s.ErrorLog = quietLog{}
	ln, err := net.Listen("tcp", *listen)
	if err != nil {
		return err
	}
	go s.Serve(ln)
	fmt.Fprintf(os.Stderr, "sink listening on %s\n", ln.Addr())
	sig := make(chan os.Signal, 1)
	signal.Notify(sig, syscall.SIGTERM, syscall.SIGINT)
	last := time.Now()
	select {
	case <-done:
		last = time.Unix(0, lastAt.Load())
		// The last message's 250 is written after Data returns: give it
		// time to leave, so the sender does not see the connection drop.
		time.Sleep(100 * time.Millisecond)
	case <-sig:
	}
	n := count.Load()
	fmt.Printf("sink received %d messages; last at %d (unix ns)\n", n, last.UnixNano())
	s.Close()
	return nil
}

type sinkSession struct {
	count  *atomic.Int64
	lastAt *atomic.Int64 // unix ns when the expected count was reached
	expect int64
	delay  time.Duration
	done   chan struct{}
}

func (s *sinkSession) Mail(string, *smtp.MailOptions) error { return nil }
func (s *sinkSession) Rcpt(string, *smtp.RcptOptions) error { return nil }
func (s *sinkSession) Data(r io.Reader) error {
	io.Copy(io.Discard, r)
	time.Sleep(s.delay)
	if n := s.count.Add(1); n == s.expect {
		s.lastAt.Store(time.Now().UnixNano())
		close(s.done)
	}
	return nil
}
func (s *sinkSession) Reset()        {}
func (s *sinkSession) Logout() error { return nil }

type quietLog struct{}

func (quietLog) Printf(string, ...any) {}
func (quietLog) Println(...any)        {}
