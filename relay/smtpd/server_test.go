package smtpd

import (
	"bufio"
	"context"
	"fmt"
	"io"
	"net"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"
)

// recorder is a session that keeps what it was given.
type recorder struct {
	mu    sync.Mutex
	mails []string
	opts  []MailOptions
	rcpts []string
	ropts []RcptOptions
	data  []string
	auths []string // user names logged in
	// rcptErr, when set, refuses recipients with it.
	rcptErr error
}

func (r *recorder) Reset()                   {}
func (r *recorder) Close()                   {}
func (r *recorder) AuthMechanisms() []string { return []string{"PLAIN"} }

// Auth takes PLAIN with any password: it returns the decoding errors the
// server hands it.
func (r *recorder) Auth(mech string, initial []byte, next func([]byte) ([]byte, error)) error {
	if mech != "PLAIN" {
		return ReplyAuthMechanism
	}
	resp := initial
	if resp == nil {
		var err error
		if resp, err = next(nil); err != nil {
			return err
		}
	}
	parts := strings.Split(string(resp), "\x00")
	if len(parts) != 3 {
		return ReplyAuthMalformed
	}
	r.mu.Lock()
	r.auths = append(r.auths, parts[1])
	r.mu.Unlock()
	return nil
}

func (r *recorder) Mail(from string, o MailOptions) error {
	r.mu.Lock()
	defer r.mu.Unlock()
	if from == "panic@x.test" {
		panic("boom")
	}
	r.mails = append(r.mails, from)
	r.opts = append(r.opts, o)
	return nil
}
func (r *recorder) Rcpt(to string, o RcptOptions) error {
	r.mu.Lock()
	defer r.mu.Unlock()
	if r.rcptErr != nil {
		return r.rcptErr
	}
	r.rcpts = append(r.rcpts, to)
	r.ropts = append(r.ropts, o)
	return nil
}
func (r *recorder) Data(rd io.Reader) (string, error) {
	b, err := io.ReadAll(rd)
	if err != nil {
		return "", err
	}
	r.mu.Lock()
	defer r.mu.Unlock()
	r.data = append(r.data, string(b))
	return fmt.Sprintf("ID%d", len(r.data)), nil
}

type recBackend struct{ r *recorder }

func (b recBackend) NewSession(*Conn) (Session, error) { return b.r, nil }

func serve(t *testing.T, rec *recorder) string {
	_, addr := serveWith(t, rec, Config{})
	return addr
}

// serveWith serves rec with cfg on one plain listener, with cfg's zero
// limits made 2 recipients and 1000 bytes, with bare LF normalized.
func serveWith(t *testing.T, rec *recorder, cfg Config) (*Server, string) {
	t.Helper()
	s := listen(t, rec, cfg)
	go s.Serve()
	return s, s.Addrs()[0].String()
}

// listen binds, but does not serve, what serveWith serves.
func listen(t *testing.T, rec *recorder, cfg Config) *Server {
	t.Helper()
	cfg.Domain = "mx.test"
	if cfg.Limits == (Limits{}) {
		cfg.Limits = Limits{MaxRecipients: 2, MaxMessageBytes: 1000, NormalizeBareLF: true}
	}
	if cfg.Listeners == nil {
		cfg.Listeners = []Listener{{Address: "127.0.0.1:0", Mode: ModePlain}}
	}
	s := New(cfg, recBackend{rec})
	if err := s.Listen(); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { s.Close() })
	return s
}

type dialog struct {
	t *testing.T
	c net.Conn
	r *bufio.Reader
}

func dial(t *testing.T, addr string) *dialog {
	c, err := net.Dial("tcp", addr)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { c.Close() })
	d := &dialog{t, c, bufio.NewReader(c)}
	d.want("220 mx.test ESMTP")
	return d
}

// want reads one reply and checks the start of its last line; it returns
// all its lines.
func (d *dialog) want(prefix string) []string {
	d.t.Helper()
	d.c.SetReadDeadline(time.Now().Add(5 * time.Second))
	var lines []string
	for {
		l, err := d.r.ReadString('\n')
		if err != nil {
			d.t.Fatalf("want %q: %v", prefix, err)
		}
		lines = append(lines, l)
		if len(l) < 4 || l[3] != '-' {
			break
		}
	}
	if last := lines[len(lines)-1]; !strings.HasPrefix(last, prefix) {
		d.t.Fatalf("got %q, want %q", last, prefix)
	}
	return lines
}

func (d *dialog) send(s string) { d.c.Write([]byte(s)) }

func TestTransactionWithParameters(t *testing.T) {
	rec := &recorder{}
	d := dial(t, serve(t, rec))
	d.send("EHLO c.test\r\n")
	caps := strings.Join(d.want("250 "), "")
	for _, c := range []string{"PIPELINING", "8BITMIME", "ENHANCEDSTATUSCODES", "SMTPUTF8", "DSN", "SIZE 1000", "LIMITS RCPTMAX=2"} {
		if !strings.Contains(caps, c) {
			t.Errorf("EHLO lacks %s: %q", c, caps)
		}
	}
	if !strings.HasPrefix(caps, "250-mx.test\r\n") {
		t.Errorf("EHLO's first line does not name our host: %q", caps)
	}
	if strings.Contains(caps, "CHUNKING") || strings.Contains(caps, "STARTTLS") {
		t.Errorf("EHLO offers what it cannot do: %q", caps)
	}
	d.send("MAIL FROM:<a@x.test> SIZE=100 BODY=8BITMIME RET=HDRS ENVID=id+2B1\r\n")
	d.want("250 2.1.0 Sender OK")
	d.send("RCPT TO:<b@y.test> NOTIFY=FAILURE,DELAY ORCPT=rfc822;b+40y.test\r\n")
	d.want("250 2.1.5 Recipient OK")
	d.send("RCPT TO:<c@y.test>\r\nRCPT TO:<d@y.test>\r\n")
	d.want("250 2.1.5")
	d.want("452 4.5.3")
	d.send("DATA\r\n")
	d.want("354 ")
	d.send("Subject: x\r\n\r\n..leading dot\r\n.\r\n")
	d.want("250 2.0.0 OK: queued as ID1\r\n")
	o, ro := rec.opts[0], rec.ropts[0]
	if o.Size != 100 || o.Body != "8BITMIME" || o.Return != "HDRS" || o.EnvelopeID != "id+1" {
		t.Errorf("MAIL options %+v", o)
	}
	if len(ro.Notify) != 2 || ro.ORcpt != "b@y.test" || ro.ORcptType != "rfc822" {
		t.Errorf("RCPT options %+v", ro)
	}
	if rec.data[0] != "Subject: x\r\n\r\n.leading dot\r\n" {
		t.Errorf("data %q", rec.data[0])
	}
}

func TestRefusals(t *testing.T) {
	rec := &recorder{}
	d := dial(t, serve(t, rec))
	d.send("EHLO c.test\r\n")
	d.want("250 ")
	for _, tc := range []struct{ cmd, want string }{
		{"MAIL FROM:<a@x.test> SIZE=5000", "552 5.3.4"},
		{"MAIL FROM:<a@x.test> FOO=1", "555 5.5.4"},
		{"MAIL FROM:<a@x.test> SIZE=1 SIZE=2", "501 5.5.4"},
		{"MAIL FROM:<a@x.test> ENVID=a+4", "501 5.5.4"},
		{"HELP", "502 5.5.1"},
		{"VRFY x", "252 2.5.0"},
		{"STARTTLS", "502 5.5.1 TLS not available"},
	} {
		d.send(tc.cmd + "\r\n")
		d.want(tc.want)
	}
	// A pipelining client whose recipients were all refused sends DATA
	// anyway; it is told so and may go on with a new MAIL.
	rec.rcptErr = &Reply{Code: 550, Enhanced: EnhancedCode{5, 1, 1}, Text: "no\r\n250 2.0.0 forged"}
	d.send("MAIL FROM:<a@x.test>\r\nRCPT TO:<b@y.test>\r\nDATA\r\nMAIL FROM:<a@x.test>\r\n")
	d.want("250 ")
	// A reply text with a line break stays one reply: the forged line
	// becomes a continuation of the 550, never a reply of its own.
	lines := d.want("550 5.1.1 250 2.0.0 forged")
	if len(lines) != 2 || lines[0] != "550-5.1.1 no\r\n" {
		t.Errorf("multi-line reply %q", lines)
	}
	d.want("554 5.5.1 No valid recipients")
	d.want("250 ")
	d.send("MAIL FROM:<a@x.test>\r\n")
	d.want("503 5.5.1 Nested MAIL command")
}

func TestPanicEndsOnlyThatConnection(t *testing.T) {
	rec := &recorder{}
	addr := serve(t, rec)
	d := dial(t, addr)
	d.send("EHLO c.test\r\nMAIL FROM:<panic@x.test>\r\n")
	d.want("250 ")
	d.want("421 4.3.0 Internal server error")
	if _, err := d.r.ReadString('\n'); err == nil {
		t.Fatal("connection open after a panic")
	}
	d = dial(t, addr)
	d.send("EHLO c.test\r\n")
	d.want("250 ")
}

func TestParseCmd(t *testing.T) {
	for _, tc := range []struct{ line, cmd, arg string }{
		{"mail FROM:<a@b>", "MAIL", "FROM:<a@b>"},
		{"StartTLS", "STARTTLS", ""},
		{"NOOP   ", "NOOP", ""},
		{"XYZZY", "XYZZY", ""},
		{"", "", ""},
		{"MAIL:FROM", "", ""},
		{"RCPT\tTO:<a@b>", "", ""},
	} {
		cmd, arg, _ := parseCmd(tc.line)
		if cmd != tc.cmd || arg != tc.arg {
			t.Errorf("parseCmd(%q) = %q, %q", tc.line, cmd, arg)
		}
	}
}

// Shutdown lets an idle session go at once with 421 4.3.2, and a session in
// the middle of a transaction finish it first.
func TestShutdown(t *testing.T) {
	rec := &recorder{}
	s, addr := serveWith(t, rec, Config{})
	idle, busy := dial(t, addr), dial(t, addr)
	for _, d := range []*dialog{idle, busy} {
		d.send("EHLO c.test\r\n")
		d.want("250 ")
	}
	busy.send("MAIL FROM:<a@x.test>\r\nRCPT TO:<b@y.test>\r\n")
	busy.want("250 ")
	busy.want("250 ")
	done := make(chan error, 1)
	go func() { done <- s.Shutdown(context.Background()) }()
	idle.want("421 4.3.2 Service shutting down")
	busy.send("DATA\r\n")
	busy.want("354 ")
	busy.send("x\r\n.\r\n")
	busy.want("250 2.0.0 OK: queued")
	busy.want("421 4.3.2 Service shutting down")
	if err := <-done; err != nil {
		t.Fatal(err)
	}
	if len(rec.data) != 1 {
		t.Fatalf("%d messages, want the one finished during shutdown", len(rec.data))
	}
}

// countingListener counts the writes made on the connections it accepts.
type countingListener struct {
	net.Listener
	writes *atomic.Int64
}

func (l countingListener) Accept() (net.Conn, error) {
	c, err := l.Listener.Accept()
	return countingConn{c, l.writes}, err
}

type countingConn struct {
	net.Conn
	writes *atomic.Int64
}

func (c countingConn) Write(b []byte) (int, error) {
	c.writes.Add(1)
	return c.Conn.Write(b)
}

// The replies to a pipelined group (RFC 2920) leave in one write, and a
// client that waits for each reply still gets each one at once.
func TestPipelinedRepliesInOneWrite(t *testing.T) {
	rec := &recorder{}
	var writes atomic.Int64
	s := listen(t, rec, Config{Limits: Limits{MaxRecipients: 2, MaxMessageBytes: 1000}})
	s.eps[0].ln = countingListener{s.eps[0].ln, &writes}
	go s.Serve()

	d := dial(t, s.Addrs()[0].String())
	d.send("EHLO c.test\r\n")
	d.want("250 ")
	// exchange sends input in one write and counts the writes that carry
	// the replies back.
	exchange := func(input string, replies ...string) int64 {
		before := writes.Load()
		d.send(input)
		for _, r := range replies {
			d.want(r)
		}
		return writes.Load() - before
	}
	// One command at a time: one write per reply, none held back.
	n := exchange("NOOP\r\n", "250 ") + exchange("NOOP\r\n", "250 ")
	if n != 2 {
		t.Errorf("%d writes for two lone commands, want 2", n)
	}
	if n := exchange("MAIL FROM:<a@x.org>\r\nRCPT TO:<b@y.org>\r\nRCPT TO:<c@y.org>\r\nDATA\r\n", "250 ", "250 ", "250 ", "354 "); n != 1 {
		t.Errorf("%d writes for the replies to one pipelined group, want 1", n)
	}
	if n := exchange("Subject: x\r\n\r\nhi\r\n.\r\nQUIT\r\n", "250 ", "221 "); n != 1 {
		t.Errorf("%d writes for the end of data and QUIT sent together, want 1", n)
	}
	if len(rec.data) != 1 {
		t.Fatalf("%d messages, want 1", len(rec.data))
	}
}

// A reply held back because more input is waiting still goes out when the
// session ends instead: here the message has a bare CR, and what follows it
// is never read.
func TestHeldRepliesFlushedAtClose(t *testing.T) {
	d := dial(t, serve(t, &recorder{}))
	d.send("EHLO c.test\r\n")
	d.want("250 ")
	d.send("MAIL FROM:<a@x.org>\r\nRCPT TO:<b@y.org>\r\nDATA\r\n")
	d.want("250 ")
	d.want("250 ")
	d.want("354 ")
	d.send("Subject: x\r\n\r\nbare\rCR\r\n.\r\nNOOP\r\n")
	d.want("554 5.6.0")
}
