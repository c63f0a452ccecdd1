package smtpclient

import (
	"bufio"
	"bytes"
	"context"
	"crypto/tls"
	"fmt"
	"io"
	"net"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"
)

// fake is a scripted SMTP server on loopback: it offers ext, answers each
// command with answer (250 when that says nothing), takes messages by DATA
// and BDAT, and records what it got.
type fake struct {
	ext    []string
	answer func(cmd string) string
	tls    *tls.Config // offer STARTTLS with it
	// after is the EHLO extensions offered after STARTTLS.
	after []string

	mu       sync.Mutex
	cmds     []string
	messages [][]byte
	tlsEHLO  []string // EHLO commands received over TLS
	got      chan string
	stop     chan struct{} // closed when the test ends
}

func (f *fake) start(t *testing.T) string {
	t.Helper()
	f.got = make(chan string, 1<<12)
	f.stop = make(chan struct{})
	t.Cleanup(func() { close(f.stop) })
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
			go f.serve(c)
		}
	}()
	return l.Addr().String()
}

func (f *fake) serve(c net.Conn) {
	defer c.Close()
	// Small buffers, so that a client whose writes nobody reads is held
	// after a few hundred KiB (TestContextEndsAStalledWrite).
	c.(*net.TCPConn).SetReadBuffer(64 << 10)
	c.SetDeadline(time.Now().Add(time.Minute))
	io.WriteString(c, "220 fake.test ESMTP\r\n")
	s := &fakeSession{f: f, c: c, r: bufio.NewReader(c)}
	for {
		line, err := s.r.ReadString('\n')
		if err != nil {
			return
		}
		cmd := strings.TrimRight(line, "\r\n")
		f.mu.Lock()
		f.cmds = append(f.cmds, cmd)
		if s.secure && strings.HasPrefix(cmd, "EHLO") {
			f.tlsEHLO = append(f.tlsEHLO, cmd)
		}
		f.mu.Unlock()
		f.got <- cmd
		if !s.command(cmd) {
			return
		}
	}
}

// fakeSession is one connection's state: enough of it to refuse what a
// server refuses out of order.
type fakeSession struct {
	f      *fake
	c      net.Conn
	r      *bufio.Reader
	secure bool
	mail   bool
	rcpts  int
}

// command answers one command; false hangs up.
func (s *fakeSession) command(cmd string) bool {
	f, c := s.f, s.c
	verb := strings.ToUpper(strings.SplitN(cmd, " ", 2)[0])
	switch {
	case verb == "EHLO":
		ext := f.ext
		if s.secure {
			ext = f.after
		}
		io.WriteString(c, ehloReply(ext))
	case verb == "STARTTLS" && f.tls != nil && !s.secure:
		io.WriteString(c, "220 2.0.0 go ahead\r\n")
		tc := tls.Server(c, f.tls)
		if tc.Handshake() != nil {
			return false
		}
		s.c, s.r, s.secure = tc, bufio.NewReader(tc), true
	case verb == "QUIT":
		io.WriteString(c, "221 2.0.0 bye\r\n")
		return false
	case verb == "RSET":
		s.mail, s.rcpts = false, 0
		io.WriteString(c, "250 2.0.0 ok\r\n")
	case verb == "DATA":
		return s.data(cmd)
	case verb == "BDAT":
		return s.bdat(cmd)
	case verb == "RCPT" && !s.mail:
		io.WriteString(c, "503 5.5.1 no MAIL\r\n")
	case f.answer != nil && f.answer(cmd) == "stall":
		// No answer, and read on: a tarpit.
	default:
		a := f.say(cmd, "250 2.0.0 ok")
		s.mail = s.mail || verb == "MAIL" && strings.HasPrefix(a, "2")
		if verb == "RCPT" && strings.HasPrefix(a, "2") {
			s.rcpts++
		}
		return s.write(a)
	}
	return true
}

func (s *fakeSession) bdat(cmd string) bool {
	n, _ := strconv.Atoi(strings.Fields(cmd)[1])
	msg := make([]byte, n)
	if _, err := io.ReadFull(s.r, msg); err != nil {
		return false
	}
	if s.rcpts == 0 {
		io.WriteString(s.c, "554 5.5.1 no valid recipients\r\n")
		return true
	}
	s.f.take(msg)
	s.mail, s.rcpts = false, 0
	return s.write(s.f.say(cmd, "250 2.0.0 queued"))
}

// data answers DATA and, after 354, reads the message to its dot.
func (s *fakeSession) data(cmd string) bool {
	if s.rcpts == 0 {
		io.WriteString(s.c, "554 5.5.1 no valid recipients\r\n")
		return true
	}
	a := s.f.say(cmd, "354 go ahead")
	if a == "hold\r\n" {
		// 354, then read nothing more: the client's writes stall.
		io.WriteString(s.c, "354 go ahead\r\n")
		<-s.f.stop
		return false
	}
	if !strings.HasPrefix(a, "354") {
		return s.write(a)
	}
	io.WriteString(s.c, a)
	var msg bytes.Buffer
	for {
		line, err := s.r.ReadString('\n')
		if err != nil {
			return false
		}
		if line == ".\r\n" {
			break
		}
		msg.WriteString(line)
	}
	s.f.take(msg.Bytes())
	s.mail, s.rcpts = false, 0
	return s.write(s.f.say("end of data", "250 2.0.0 queued"))
}

func (f *fake) take(msg []byte) {
	f.mu.Lock()
	f.messages = append(f.messages, msg)
	f.mu.Unlock()
}

// say is the scripted answer to cmd (def when the script says ""), with
// its line end. A script's "-" is no answer (the fake hangs up; "stall"
// is none either, and it reads on), and "!" before one says to hang up
// after it: then the answer ends in "!". To DATA, "hold" is a 354 after
// which the fake reads nothing more.
func (f *fake) say(cmd, def string) string {
	a := def
	if f.answer != nil && f.answer(cmd) != "" {
		a = f.answer(cmd)
	}
	switch {
	case a == "-":
		return ""
	case strings.HasPrefix(a, "!"):
		return a[1:] + "\r\n!"
	}
	return a + "\r\n"
}

// write sends an answer of say; false: hang up.
func (s *fakeSession) write(a string) bool {
	io.WriteString(s.c, strings.TrimSuffix(a, "!"))
	return a != "" && !strings.HasSuffix(a, "!")
}

func ehloReply(ext []string) string {
	var b strings.Builder
	lines := append([]string{"fake.test"}, ext...)
	for i, l := range lines {
		sep := "-"
		if i == len(lines)-1 {
			sep = " "
		}
		fmt.Fprintf(&b, "250%s%s\r\n", sep, l)
	}
	return b.String()
}

// recorder keeps each write the client makes, as it made it.
type recorder struct {
	net.Conn
	mu     sync.Mutex
	writes []string
}

func (r *recorder) Write(p []byte) (int, error) {
	r.mu.Lock()
	r.writes = append(r.writes, string(p))
	r.mu.Unlock()
	return r.Conn.Write(p)
}

func (r *recorder) since(n int) []string {
	r.mu.Lock()
	defer r.mu.Unlock()
	return append([]string(nil), r.writes[n:]...)
}

func (r *recorder) count() int {
	r.mu.Lock()
	defer r.mu.Unlock()
	return len(r.writes)
}

// dial starts a session with the fake at addr, through a recorder;
// discard is Config.Discard.
func dial(t *testing.T, addr string, discard ...string) (*Conn, *recorder) {
	t.Helper()
	nc, err := net.Dial("tcp", addr)
	if err != nil {
		t.Fatal(err)
	}
	nc.(*net.TCPConn).SetWriteBuffer(64 << 10)
	rec := &recorder{Conn: nc}
	c, err := New(context.Background(), rec, Config{Hostname: "relay.test", Timeout: time.Hour, Discard: discard})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { c.Close() })
	return c, rec
}

// within fails the test if done does not say something in 20 s: a wait
// that only a context's end can cut short must not hang the suite.
func within[T any](t *testing.T, done <-chan T) T {
	t.Helper()
	select {
	case v := <-done:
		return v
	case <-time.After(20 * time.Second):
		t.Fatal("still waiting after 20 s")
		panic("unreachable")
	}
}
