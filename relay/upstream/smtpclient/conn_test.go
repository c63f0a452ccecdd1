package smtpclient

import (
	"context"
	"crypto/tls"
	"encoding/base64"
	"errors"
	"io"
	"net"
	"strings"
	"testing"
	"time"

	"github.com/emersion/go-sasl"

	"github.com/smarthost/smarthost/relay/relaytest"
)

var errLeaving = errors.New("node leaving")

// A server that stops answering (a tarpit) holds a read until the
// context ends, and no longer: the timeout here is an hour.
func TestContextEndsAStalledRead(t *testing.T) {
	f := &fake{ext: []string{"PIPELINING"}, answer: func(cmd string) string {
		if strings.HasPrefix(cmd, "MAIL") {
			return "stall"
		}
		return ""
	}}
	c, _ := dial(t, f.start(t))
	ctx, cancel := context.WithCancelCause(context.Background())
	done := make(chan error, 1)
	go func() {
		_, err := c.Send(ctx, envelope(body, "b@y.org"), strings.NewReader(body))
		done <- err
	}()
	for cmd := range f.got {
		if strings.HasPrefix(cmd, "MAIL") {
			break
		}
	}
	cancel(errLeaving)
	if err := within(t, done); !errors.Is(err, errLeaving) || !isTimeout(err) {
		t.Fatalf("got %v, want the cause, ending our read", err)
	}
}

// A server that stops reading holds a write until the context ends: the
// message here is endless, and the server reads none of it.
func TestContextEndsAStalledWrite(t *testing.T) {
	f := &fake{answer: func(cmd string) string {
		if cmd == "DATA" {
			return "hold"
		}
		return ""
	}}
	c, _ := dial(t, f.start(t))
	ctx, cancel := context.WithCancelCause(context.Background())
	// Once the message is on its way, the writes stop when the socket
	// buffers are full (a few hundred KiB), and only the context can end
	// the wait: the timeout is an hour.
	src := &endless{mark: 128 << 10, reached: make(chan struct{})}
	done := make(chan error, 1)
	go func() {
		_, err := c.Send(ctx, &Envelope{From: "a@x.org", Size: 1 << 40, Rcpts: []Rcpt{{Addr: "b@y.org"}}}, src)
		done <- err
	}()
	select {
	case <-src.reached:
	case err := <-done:
		t.Fatalf("the send ended by itself: %v", err)
	}
	cancel(errLeaving)
	if err := within(t, done); !errors.Is(err, errLeaving) {
		t.Fatalf("got %v, want the cause", err)
	}
}

// endless is a message of lines without end; it says when it has given
// mark bytes.
type endless struct {
	n       int64
	mark    int64
	reached chan struct{}
}

func (e *endless) Read(p []byte) (int, error) {
	for i := range p {
		p[i] = "line of text\r\n"[int(e.n+int64(i))%14]
	}
	if e.n < e.mark && e.n+int64(len(p)) >= e.mark {
		close(e.reached)
	}
	e.n += int64(len(p))
	if e.n > 1<<34 {
		return len(p), io.EOF // a bound, never reached while the test holds
	}
	return len(p), nil
}

func isTimeout(err error) bool {
	var ne net.Error
	return errors.As(err, &ne) && ne.Timeout()
}

// STARTTLS: the client says EHLO with its name before and after the
// handshake and reads no greeting after it (a server sends none, RFC 3207
// 4.2: one who waited for it would wait forever); what the server offers
// over TLS is what counts.
func TestStartTLS(t *testing.T) {
	cert, pool, err := relaytest.Cert()
	if err != nil {
		t.Fatal(err)
	}
	f := &fake{ext: []string{"STARTTLS"}, after: []string{"AUTH PLAIN", "PIPELINING"},
		tls: &tls.Config{Certificates: []tls.Certificate{*cert}}}
	c, _ := dial(t, f.start(t))
	if ok, _ := c.Extension("AUTH"); ok {
		t.Fatal("AUTH before TLS")
	}
	ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
	defer cancel()
	if err := c.StartTLS(ctx, &tls.Config{RootCAs: pool, ServerName: "127.0.0.1"}); err != nil {
		t.Fatal(err)
	}
	if _, ok := c.TLS(); !ok {
		t.Fatal("no TLS")
	}
	if ok, mechs := c.Extension("auth"); !ok || mechs != "PLAIN" {
		t.Fatalf("AUTH %v %q: the extensions are not those said over TLS", ok, mechs)
	}
	if ok, _ := c.Extension("STARTTLS"); ok {
		t.Fatal("STARTTLS still listed")
	}
	if len(f.tlsEHLO) != 1 || f.tlsEHLO[0] != "EHLO relay.test" || f.cmds[0] != "EHLO relay.test" {
		t.Fatalf("commands %q", f.cmds)
	}
	if out, err := c.Send(ctx, envelope(body, "b@y.org"), strings.NewReader(body)); err != nil || out[0] != nil {
		t.Fatal(out, err)
	}
}

// A server that does not offer STARTTLS gets no STARTTLS.
func TestStartTLSNotOffered(t *testing.T) {
	f := &fake{}
	c, _ := dial(t, f.start(t))
	if err := c.StartTLS(context.Background(), &tls.Config{}); !errors.Is(err, ErrNoStartTLS) {
		t.Fatalf("got %v", err)
	}
}

// AUTH through go-sasl: the initial response on the command line; a 535
// comes back as an *Error with its codes.
func TestAuth(t *testing.T) {
	plain := "AUTH PLAIN " + base64.StdEncoding.EncodeToString([]byte("\x00user\x00secret"))
	f := &fake{ext: []string{"AUTH PLAIN LOGIN"}, answer: func(cmd string) string {
		switch {
		case cmd == plain:
			return "235 2.7.0 ok"
		case strings.HasPrefix(cmd, "AUTH PLAIN"):
			return "535 5.7.8 bad credentials"
		}
		return ""
	}}
	c, _ := dial(t, f.start(t))
	var e *Error
	err := c.Auth(context.Background(), sasl.NewPlainClient("", "user", "wrong"))
	if !errors.As(err, &e) || e.Code != 535 || e.Enhanced != (EnhancedCode{5, 7, 8}) {
		t.Fatalf("wrong password: %v", err)
	}
	if err := c.Auth(context.Background(), sasl.NewPlainClient("", "user", "secret")); err != nil {
		t.Fatal(err)
	}
}

// Replies as servers write them, and the ones that must be refused.
func TestReplies(t *testing.T) {
	for _, tc := range []struct {
		in, err string
		want    Error
	}{
		{in: "550 5.1.1 no such user\r\n", want: Error{550, EnhancedCode{5, 1, 1}, "no such user"}},
		{in: "550-5.1.1 first\r\n550 5.1.1 second\r\n", want: Error{550, EnhancedCode{5, 1, 1}, "first\nsecond"}},
		{in: "451 try later\r\n", want: Error{451, EnhancedCode{}, "try later"}},
		{in: "451 5.1.1 class differs\r\n", want: Error{451, EnhancedCode{}, "5.1.1 class differs"}},
		{in: "554\r\n", want: Error{554, EnhancedCode{}, ""}},
		{in: "25 short\r\n", err: "malformed"},
		{in: "250-a\r\n251 b\r\n", err: "malformed"},
		{in: "abc nope\r\n", err: "malformed"},
		{in: strings.Repeat("x", 5000), err: "too long"},
		{in: strings.Repeat("250-x\r\n", 300), err: "too many"},
	} {
		c := &Conn{cfg: Config{Timeout: time.Minute}, ctx: context.Background()}
		a, b := net.Pipe()
		c.raw = a
		c.setConn(a)
		go func() { io.WriteString(b, tc.in); b.Close() }()
		r, err := c.readReply()
		a.Close()
		if tc.err != "" {
			if err == nil || !strings.Contains(err.Error(), tc.err) {
				t.Errorf("%q: %v, want %q", tc.in, err, tc.err)
			}
			continue
		}
		if err != nil || *r.err() != tc.want || r.err().Error() != (&tc.want).Error() {
			t.Errorf("%q: %+v %v, want %+v", tc.in, r.err(), err, tc.want)
		}
	}
}
