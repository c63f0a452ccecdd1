package smtpclient

import (
	"context"
	"errors"
	"io"
	"strings"
	"testing"
)

func envelope(body string, to ...string) *Envelope {
	e := &Envelope{From: "a@x.org", Size: int64(len(body))}
	for _, r := range to {
		e.Rcpts = append(e.Rcpts, Rcpt{Addr: r})
	}
	return e
}

// refuse answers RCPT TO:<no@...> with a 550.
func refuse(cmd string) string {
	if strings.HasPrefix(cmd, "RCPT TO:<no@") {
		return "550 5.1.1 no such user"
	}
	return ""
}

const body = "Subject: x\r\n\r\n.dotted\r\nbody\r\n"

// With PIPELINING, MAIL, every RCPT and DATA go to the server in one
// write, and each recipient gets the reply meant for it.
func TestPipelinedInOneWrite(t *testing.T) {
	f := &fake{ext: []string{"PIPELINING"}, answer: refuse}
	c, rec := dial(t, f.start(t))
	n := rec.count()
	out, err := c.Send(context.Background(), envelope(body, "b@y.org", "no@y.org", "c@y.org"), strings.NewReader(body))
	if err != nil {
		t.Fatal(err)
	}
	writes := rec.since(n)
	want := "MAIL FROM:<a@x.org>\r\nRCPT TO:<b@y.org>\r\nRCPT TO:<no@y.org>\r\nRCPT TO:<c@y.org>\r\nDATA\r\n"
	if len(writes) != 2 || writes[0] != want {
		t.Fatalf("writes %q, want the commands in one, then the message", writes)
	}
	if writes[1] != strings.Replace(body, "\r\n.", "\r\n..", 1)+".\r\n" {
		t.Fatalf("message written as %q", writes[1])
	}
	var e *Error
	if out[0] != nil || out[2] != nil || !errors.As(out[1], &e) ||
		e.Code != 550 || e.Enhanced != (EnhancedCode{5, 1, 1}) || e.Text != "no such user" {
		t.Fatalf("outcomes %v", out)
	}
	if len(f.messages) != 1 || string(f.messages[0]) != strings.Replace(body, "\r\n.", "\r\n..", 1) {
		t.Fatalf("server got %q", f.messages)
	}
}

// Without PIPELINING (or with it discarded), one command per write, each
// after the reply to the one before.
func TestOneCommandPerWriteWithoutPipelining(t *testing.T) {
	f := &fake{ext: []string{"PIPELINING", "CHUNKING"}, answer: refuse}
	c, rec := dial(t, f.start(t), "pipelining")
	n := rec.count()
	out, err := c.Send(context.Background(), envelope(body, "b@y.org", "no@y.org"), strings.NewReader(body))
	if err != nil || out[0] != nil || out[1] == nil {
		t.Fatal(out, err)
	}
	writes := rec.since(n)
	want := []string{"MAIL FROM:<a@x.org>\r\n", "RCPT TO:<b@y.org>\r\n", "RCPT TO:<no@y.org>\r\n", "DATA\r\n"}
	if len(writes) != 5 || strings.Join(writes[:4], "|") != strings.Join(want, "|") {
		t.Fatalf("writes %q, want %q and the message", writes, want)
	}
}

// With CHUNKING too, the message follows the commands as BDAT ... LAST
// in the same write: one round trip, no dot-stuffing.
func TestBDATInTheSameWrite(t *testing.T) {
	f := &fake{ext: []string{"PIPELINING", "CHUNKING", "8BITMIME"}}
	c, rec := dial(t, f.start(t))
	n := rec.count()
	out, err := c.Send(context.Background(), envelope(body, "b@y.org"), strings.NewReader(body))
	if err != nil || out[0] != nil {
		t.Fatal(out, err)
	}
	writes := rec.since(n)
	want := "MAIL FROM:<a@x.org> BODY=8BITMIME\r\nRCPT TO:<b@y.org>\r\nBDAT 29 LAST\r\n" + body
	if len(writes) != 1 || writes[0] != want {
		t.Fatalf("writes %q, want %q", writes, want)
	}
	if len(f.messages) != 1 || string(f.messages[0]) != body {
		t.Fatalf("server got %q", f.messages)
	}
}

// A refused sender fails every recipient and leaves the session usable;
// so does a transaction whose recipients were all refused (after RSET).
func TestRefusalsKeepTheSession(t *testing.T) {
	for _, ext := range [][]string{nil, {"PIPELINING"}, {"PIPELINING", "CHUNKING"}} {
		f := &fake{ext: ext, answer: func(cmd string) string {
			if strings.HasPrefix(cmd, "MAIL FROM:<bad@") {
				return "553 5.7.1 sender refused"
			}
			return refuse(cmd)
		}}
		c, _ := dial(t, f.start(t))
		e := envelope(body, "b@y.org", "c@y.org")
		e.From = "bad@x.org"
		out, err := c.Send(context.Background(), e, strings.NewReader(body))
		if err != nil || out[0] == nil || out[0].Error() != "553 5.7.1 sender refused" || out[1] == nil {
			t.Fatalf("%v: refused sender: %v %v", ext, out, err)
		}
		out, err = c.Send(context.Background(), envelope(body, "no@y.org"), strings.NewReader(body))
		if err != nil || out[0] == nil {
			t.Fatalf("%v: refused recipient: %v %v", ext, out, err)
		}
		out, err = c.Send(context.Background(), envelope(body, "b@y.org"), strings.NewReader(body))
		if err != nil || out[0] != nil || len(f.messages) != 1 {
			t.Fatalf("%v: the session after refusals: %v %v, %d messages", ext, out, err, len(f.messages))
		}
	}
}

// A 421 ends the session. With BDAT the message is on its way; a server
// that closes after the 421 never takes it, and every recipient shares
// the session's error.
func Test421EndsTheSession(t *testing.T) {
	for _, ext := range [][]string{nil, {"PIPELINING"}, {"PIPELINING", "CHUNKING"}} {
		f := &fake{ext: ext, answer: func(cmd string) string {
			if strings.HasPrefix(cmd, "RCPT TO:<c@") {
				return "!421 4.3.2 shutting down" // and hangs up
			}
			return ""
		}}
		c, _ := dial(t, f.start(t))
		out, err := c.Send(context.Background(), envelope(body, "b@y.org", "c@y.org"), strings.NewReader(body))
		if err == nil || out != nil || len(f.messages) != 0 {
			t.Fatalf("%v: %v %v, %d messages", ext, out, err, len(f.messages))
		}
	}
}

// An address or parameter that cannot be sent is refused before anything
// is: ErrParam, for that recipient or (the sender's) all, and the session
// goes on.
func TestParamsRefusedLocally(t *testing.T) {
	f := &fake{ext: []string{"PIPELINING", "DSN"}}
	c, rec := dial(t, f.start(t))
	n := rec.count()
	e := envelope(body, "b\r\nRSET@y.org", "c@y.org")
	e.Rcpts[1].Notify = []string{"NEVER", "FAILURE"}
	out, err := c.Send(context.Background(), e, strings.NewReader(body))
	if err != nil || !errors.Is(out[0], ErrParam) || !errors.Is(out[1], ErrParam) || rec.count() != n {
		t.Fatalf("%v %v, %d writes", out, err, rec.count()-n)
	}
	e = envelope(body, "b@y.org")
	e.Ret = "BOGUS"
	if out, err := c.Send(context.Background(), e, strings.NewReader(body)); err != nil || !errors.Is(out[0], ErrParam) {
		t.Fatalf("RET=BOGUS: %v %v", out, err)
	}
	if out, err := c.Send(context.Background(), envelope(body, "b@y.org"), strings.NewReader(body)); err != nil || out[0] != nil {
		t.Fatalf("after: %v %v", out, err)
	}
}

// A message shorter than its announced size cannot end its BDAT chunk:
// the session is done, and the error says the message was at fault.
func TestBodyShorterThanSize(t *testing.T) {
	f := &fake{ext: []string{"PIPELINING", "CHUNKING"}}
	c, _ := dial(t, f.start(t))
	e := envelope(body+"more", "b@y.org")
	if _, err := c.Send(context.Background(), e, io.LimitReader(strings.NewReader(body), 10)); !errors.Is(err, ErrBodyRead) {
		t.Fatalf("got %v", err)
	}
}

// DSN parameters as RFC 3461 and RFC 6533 write them.
func TestDSNParameters(t *testing.T) {
	for _, smtputf8 := range []bool{false, true} {
		ext := []string{"PIPELINING", "DSN"}
		if smtputf8 {
			ext = append(ext, "SMTPUTF8")
		}
		f := &fake{ext: ext}
		c, _ := dial(t, f.start(t))
		e := envelope(body, "b@y.org", "c@y.org")
		e.Ret, e.EnvID = "HDRS", "id+1=2"
		e.Rcpts[0].Notify, e.Rcpts[0].ORcpt, e.Rcpts[0].ORcptUTF8 = []string{"FAILURE", "DELAY"}, "zoë+x@pf.test", true
		e.Rcpts[1].ORcpt = "c d@y.org"
		if out, err := c.Send(context.Background(), e, strings.NewReader(body)); err != nil || out[0] != nil || out[1] != nil {
			t.Fatal(out, err)
		}
		orcpt := `zo\x{EB}\x{2B}x@pf.test`
		if smtputf8 {
			orcpt = `zoë\x{2B}x@pf.test`
		}
		want := []string{"MAIL FROM:<a@x.org> RET=HDRS ENVID=id+2B1+3D2",
			"RCPT TO:<b@y.org> NOTIFY=FAILURE,DELAY ORCPT=utf-8;" + orcpt,
			"RCPT TO:<c@y.org> ORCPT=rfc822;c+20d@y.org"}
		if got := strings.Join(f.cmds[1:4], "|"); got != strings.Join(want, "|") {
			t.Errorf("SMTPUTF8 %v:\n got %s\nwant %s", smtputf8, got, strings.Join(want, "|"))
		}
	}
}
