package main

import (
	"flag"
	"net"
	"time"
)

// runDelay relays TCP connections from --listen to --to, holding every
// chunk of bytes back for --delay in each direction: a round trip of twice
// --delay between the two, for a kernel without netem (the WAN profile of
// scripts/bench.sh). It adds latency only: no bandwidth limit and no loss,
// and each side's TCP sees its acknowledgements at once, which matters
// for bulk transfers but not for a dialogue of short commands and replies.
func runDelay(args []string) error {
	fs := flag.NewFlagSet("delay", flag.ContinueOnError)
	listen := fs.String("listen", "127.0.0.1:2526", "address to accept connections on")
	to := fs.String("to", "127.0.0.1:2525", "address to relay them to")
	delay := fs.Duration("delay", 10*time.Millisecond, "one-way delay")
	if err := fs.Parse(args); err != nil {
		return err
	}
	l, err := net.Listen("tcp", *listen)
	if err != nil {
		return err
	}
	for {
		c, err := l.Accept()
		if err != nil {
			return err
		}
		go func() {
			defer c.Close()
			up, err := net.Dial("tcp", *to)
			if err != nil {
				return
			}
			defer up.Close()
			done := make(chan struct{}, 2)
			go func() { pump(up, c, *delay); done <- struct{}{} }()
			go func() { pump(c, up, *delay); done <- struct{}{} }()
			<-done
		}()
	}
}

type chunk struct {
	b   []byte
	due time.Time
}

// pump copies src to dst, each chunk delay after it was read, in order.
// When src ends, dst's writing half is closed after what was read.
func pump(dst, src net.Conn, delay time.Duration) {
	q := make(chan chunk, 4096)
	go func() {
		defer close(q)
		for {
			b := make([]byte, 32<<10)
			n, err := src.Read(b)
			if n > 0 {
				q <- chunk{b[:n], time.Now().Add(delay)}
			}
			if err != nil {
				return
			}
		}
	}()
	for c := range q {
		time.Sleep(time.Until(c.due))
		if _, err := dst.Write(c.b); err != nil {
			src.Close()
			for range q { // let the reader end
			}
			return
		}
	}
	if tc, ok := dst.(*net.TCPConn); ok {
		tc.CloseWrite()
	}
}
