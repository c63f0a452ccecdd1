package upstream

import (
	"bytes"
	"io"
	"net"
	"strings"
	"testing"
	"time"

	"github.com/emersion/go-smtp"
)

// scriptConn is the upstream's end of a connection, answering each complete
// command (and the message after 354) as a server would, and recording
// every write that reaches it.
type scriptConn struct {
	net.Conn
	writes  int
	in      bytes.Buffer // written, not yet answered
	out     bytes.Buffer // replies not yet read
	data    bool
	message []byte
}

func newScriptConn() *scriptConn {
	c := &scriptConn{}
	c.out.WriteString("220 sink ready\r\n")
	return c
}

func (c *scriptConn) Write(p []byte) (int, error) {
	c.writes++
	c.in.Write(p)
	for {
		b := c.in.Bytes()
		if c.data {
			i := bytes.Index(b, []byte("\r\n.\r\n"))
			if i < 0 {
				return len(p), nil
			}
			c.message = append(c.message, b[:i+2]...)
			c.in.Next(i + 5)
			c.data = false
			c.out.WriteString("250 2.0.0 queued\r\n")
			continue
		}
		i := bytes.Index(b, []byte("\r\n"))
		if i < 0 {
			return len(p), nil
		}
		cmd := string(b[:i])
		c.in.Next(i + 2)
		switch {
		case strings.HasPrefix(cmd, "EHLO"):
			c.out.WriteString("250-sink\r\n250 8BITMIME\r\n")
		case cmd == "DATA":
			c.data = true
			c.out.WriteString("354 go ahead\r\n")
		default:
			c.out.WriteString("250 2.0.0 ok\r\n")
		}
	}
}

func (c *scriptConn) Read(p []byte) (int, error) {
	if c.out.Len() == 0 {
		return 0, io.EOF // the client waits for a reply it has not asked for
	}
	return c.out.Read(p)
}

func (c *scriptConn) Close() error                     { return nil }
func (c *scriptConn) SetDeadline(time.Time) error      { return nil }
func (c *scriptConn) SetReadDeadline(time.Time) error  { return nil }
func (c *scriptConn) SetWriteDeadline(time.Time) error { return nil }
func (c *scriptConn) RemoteAddr() net.Addr             { return &net.TCPAddr{} }
func (c *scriptConn) LocalAddr() net.Addr              { return &net.TCPAddr{} }

// A transaction reaches the upstream in one write per reply it waits for:
// MAIL, RCPT, DATA, and the whole message with its final dot, however many
// chunks go-smtp's client writes it in.
func TestBatchedWritesOncePerReply(t *testing.T) {
	sc := newScriptConn()
	c := smtp.NewClient(newBatched(sc))
	if err := c.Hello("relay.test"); err != nil {
		t.Fatal(err)
	}
	body := "Subject: x\r\n\r\n" + strings.Repeat(".dotted line of text, dot-stuffed on the wire\r\n", 250) // ~12 KB
	before := sc.writes
	if err := c.Mail("a@x.org", nil); err != nil {
		t.Fatal(err)
	}
	if err := c.Rcpt("b@y.org", nil); err != nil {
		t.Fatal(err)
	}
	w, err := c.Data()
	if err != nil {
		t.Fatal(err)
	}
	io.WriteString(w, body)
	if err := w.Close(); err != nil {
		t.Fatal(err)
	}
	if n := sc.writes - before; n != 4 {
		t.Errorf("%d writes for one transaction, want 4 (MAIL, RCPT, DATA, message)", n)
	}
	want := strings.ReplaceAll(body, "\r\n.", "\r\n..")
	if string(sc.message) != want {
		t.Errorf("the upstream received %d bytes, want %d, dot-stuffed", len(sc.message), len(want))
	}
}
