package main

import (
	"bufio"
	"flag"
	"fmt"
	"net"
	"time"
)

// runIdle opens many sessions, says EHLO on each and holds them open, to
// measure what idle clients cost the server (its RSS, say).
func runIdle(args []string) error {
	fs := flag.NewFlagSet("idle", flag.ContinueOnError)
	addr := fs.String("addr", "127.0.0.1:2587", "SMTP address")
	n := fs.Int("sessions", 5000, "sessions to open")
	hold := fs.Duration("hold", 30*time.Second, "how long to keep them open")
	if err := fs.Parse(args); err != nil {
		return err
	}
	var conns []net.Conn
	defer func() {
		for _, c := range conns {
			c.Close()
		}
	}()
	for i := 0; i < *n; i++ {
		c, err := net.Dial("tcp", *addr)
		if err != nil {
			return fmt.Errorf("after %d sessions: %w", len(conns), err)
		}
		conns = append(conns, c)
		r := bufio.NewReader(c)
		if _, err := r.ReadString('\n'); err != nil {
			return fmt.Errorf("greeting %d: %w", i, err)
		}
		fmt.Fprintf(c, "EHLO idle%d\r\n", i)
		for {
			line, err := r.ReadString('\n')
			if err != nil {
				return fmt.Errorf("EHLO %d: %w", i, err)
			}
			if len(line) < 4 || line[3] == ' ' {
				break
			}
		}
	}
	fmt.Printf("%d sessions open; holding them for %s\n", len(conns), *hold)
	time.Sleep(*hold)
	return nil
}
