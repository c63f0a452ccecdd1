package upstream

import (
	"context"
	"crypto/tls"
	"crypto/x509"
	"errors"
	"fmt"
	"io"
	"io/fs"
	"net"
	"net/textproto"
	"os"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/smarthost/smarthost/relay/queue"
	"github.com/smarthost/smarthost/relay/relaytest"
	"github.com/smarthost/smarthost/relay/upstream/smtpclient"
)

// Every row of the class table, with an error it must decide and how.
func TestErrorClasses(t *testing.T) {
	reply := func(code int) error {
		return &smtpclient.Error{Code: code, Enhanced: smtpclient.EnhancedCode{code / 100, 0, 0}, Text: "x"}
	}
	for _, tc := range []struct {
		err   error
		class class
		row   string
	}{
		{fmt.Errorf("upstream a: %w", errNoSMTPUTF8), unsupported, "the upstream cannot take the message (SMTPUTF8, SIZE)"},
		{errTooLarge, unsupported, "the upstream cannot take the message (SMTPUTF8, SIZE)"},
		{fmt.Errorf("%w: AUTH: %w", errConnect, reply(535)), temporary, "connecting, TLS or AUTH failed before MAIL FROM"},
		{fmt.Errorf("%w: tls: handshake failure", errConnect), temporary, "connecting, TLS or AUTH failed before MAIL FROM"},
		{fmt.Errorf("%w: %w", errSpoolRead, fs.ErrNotExist), temporary, "the message could not be read from the spool"},
		{reply(451), temporary, "the upstream answered 4xx"},
		{reply(421), temporary, "the upstream answered 4xx"},
		{reply(550), permanent, "the upstream answered 5xx"},
		{reply(552), permanent, "the upstream answered 5xx"},
		{context.DeadlineExceeded, temporary, "cancelled or timed out"},
		{&net.OpError{Op: "read", Err: syscall.ECONNRESET}, temporary, "the connection broke or timed out"},
		{io.ErrUnexpectedEOF, temporary, "the connection broke or timed out"},
		{fmt.Errorf("write: %w", syscall.EPIPE), temporary, "the connection broke or timed out"},
		{tls.AlertError(40), temporary, "TLS failed"},
		{x509.UnknownAuthorityError{}, temporary, "TLS failed"},
		{textproto.ProtocolError("short response: 2"), temporary, "the upstream's reply was malformed"},
		{&fs.PathError{Op: "read", Path: "/q/x", Err: syscall.EIO}, temporary, "a local file error"},
		{fmt.Errorf("%w: address %q", smtpclient.ErrParam, "a\r\n@x.org"), permanent, "our client cannot send the address or a parameter"},
		{errors.New("something nobody foresaw"), temporary, "anything else"},
	} {
		c, row := classify(tc.err)
		if c != tc.class || row != tc.row {
			t.Errorf("%v: %s by %q, want %s by %q", tc.err, c, row, tc.class, tc.row)
		}
	}
}

// Every row of the table has a case above: a row nobody tests is a row
// nobody knows the meaning of.
func TestErrorClassesAllTested(t *testing.T) {
	src, err := os.ReadFile("errors_test.go")
	if err != nil {
		t.Fatal(err)
	}
	for _, c := range classes {
		if strings.Count(string(src), fmt.Sprintf("%q", c.name)) < 1 {
			t.Errorf("row %q has no case in TestErrorClasses", c.name)
		}
	}
}

// No error raised on our side about a message is retried until max_age:
// envelopes the client library will not send fail at the first attempt,
// and the queue bounces them then.
func TestLocalErrorsFailAtOnce(t *testing.T) {
	s := sink(t, relaytest.SinkOptions{})
	r := router(t, Upstream{Name: "p", URL: "smtp://" + s.Addr, TLS: "none"})
	defer r.Close()
	for _, env := range []queue.Envelope{
		{From: "a@x.org", To: []string{"b@y.org"}, Ret: "BOGUS"},
		{From: "a@x.org", To: []string{"b@y.org"}, EnvID: "bad\x01id"},
		{From: "a@x.org", To: []string{"b\r\nRCPT TO:<c@y.org>@y.org"}},
		{From: "a\r\n@x.org", To: []string{"b@y.org"}},
		{From: "a@x.org", To: []string{"b@y.org"}, Notify: [][]string{{"NEVER", "FAILURE"}}},
	} {
		m := spool(t, 1, env, "Subject: x\r\n\r\nx\r\n")[0]
		errs := deliver(r, context.Background(), m)
		if !queue.IsPermanent(errs[0]) {
			t.Errorf("%+v: %v, want a permanent failure", env, errs[0])
		}
	}
	if n := len(s.Messages()); n != 0 {
		t.Fatalf("%d messages went through", n)
	}
	// The session survives a refusal of our own: one connection in all.
	m := spool(t, 1, queue.Envelope{From: "a@x.org", To: []string{"b@y.org"}}, "Subject: x\r\n\r\nx\r\n")[0]
	if errs := deliver(r, context.Background(), m); errs[0] != nil {
		t.Fatal(errs[0])
	}
	if c := s.Connections(); c != 1 {
		t.Errorf("%d connections, want 1", c)
	}
}

// The same through the queue: a message no upstream can take is bounced
// at its first attempt, with the reason's enhanced code in the DSN (an
// RFC 6533 one, for a UTF-8 recipient), and nothing is left in the spool.
func TestUnsupportedBouncesAtOnce(t *testing.T) {
	plain := sink(t, relaytest.SinkOptions{}) // no SMTPUTF8
	r := router(t, Upstream{Name: "nosmtputf8", URL: "smtp://" + plain.Addr, TLS: "none"})
	defer r.Close()
	q, err := queue.Open(queue.Config{Dir: t.TempDir(), Hostname: "relay.test", Retry: []time.Duration{time.Hour}, MaxAge: 120 * time.Hour}, r, quiet())
	if err != nil {
		t.Fatal(err)
	}
	defer q.Close()
	d, _ := q.Create()
	io.WriteString(d, "From: alice@example.com\r\nTo: zoë@pf.test\r\nSubject: hé\r\n\r\nhé\r\n")
	if _, err := d.Commit(queue.Envelope{From: "alice@example.com", To: []string{"zoë@pf.test"}, SMTPUTF8: true, UTF8Required: true}, nil); err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan struct{})
	go func() { q.Run(ctx); close(done) }()
	defer func() { cancel(); <-done }()
	got := plain.Wait(1, 10*time.Second)
	if len(got) != 1 || got[0].From != "" || got[0].To[0] != "alice@example.com" {
		t.Fatalf("upstream saw %+v, want only the bounce", got)
	}
	dsn := string(got[0].Data)
	for _, want := range []string{"message/global-delivery-status", "Final-Recipient: utf-8; zoë@pf.test", "Status: 5.6.7",
		"SMTPUTF8 required but not offered", "message/global-headers"} {
		if !strings.Contains(dsn, want) {
			t.Errorf("bounce lacks %q:\n%s", want, dsn)
		}
	}
	relaytest.Eventually(t, "an empty queue", 10*time.Second, func() bool { return q.Len() == 0 })
}

// SMTPUTF8 and ORCPT: sent as the client sent them to an upstream that
// offers SMTPUTF8; a message that needs it goes only there; one that asked
// for it but does not need it may go anywhere; one that no upstream of its
// route can take fails with 5.6.7, unless an upstream was only down.
func TestSMTPUTF8(t *testing.T) {
	utf8 := sink(t, relaytest.SinkOptions{SMTPUTF8: true})
	plain := sink(t, relaytest.SinkOptions{})
	ups := func(names ...string) []Upstream {
		all := map[string]Upstream{
			"utf8":  {Name: "utf8", URL: "smtp://" + utf8.Addr, TLS: "none"},
			"plain": {Name: "plain", URL: "smtp://" + plain.Addr, TLS: "none"},
			"dead":  {Name: "dead", URL: "smtp://" + deadAddr(t), TLS: "none", Timeout: time.Second},
		}
		var out []Upstream
		for _, n := range names {
			out = append(out, all[n])
		}
		return out
	}
	needs := queue.Envelope{From: "zoë@example.com", To: []string{"zoë@pf.test"}, SMTPUTF8: true, UTF8Required: true,
		ORcpt: []string{"zoë@pf.test"}, ORcptType: []string{"utf-8"}, Notify: [][]string{{"FAILURE"}}}
	asked := queue.Envelope{From: "a@example.com", To: []string{"b@example.org"}, SMTPUTF8: true}

	// plain first, utf8 second: the message that needs it skips plain.
	r := router(t, ups("plain", "utf8")...)
	defer r.Close()
	if errs := deliver(r, context.Background(), spool(t, 1, needs, "Subject: x\r\n\r\nx\r\n")[0]); errs[0] != nil {
		t.Fatal(errs[0])
	}
	got := utf8.Wait(1, 5*time.Second)
	if len(got) != 1 || !got[0].UTF8 || got[0].From != "zoë@example.com" || got[0].ORcptType["zoë@pf.test"] != "utf-8" || got[0].ORcpt["zoë@pf.test"] != "zoë@pf.test" {
		t.Fatalf("SMTPUTF8 upstream saw %+v", got)
	}
	if len(plain.Messages()) != 0 {
		t.Fatal("the plain upstream got a message that needs SMTPUTF8")
	}
	// Asked for but not needed: the first upstream takes it, without the
	// parameter it does not offer.
	if errs := deliver(r, context.Background(), spool(t, 1, asked, "Subject: x\r\n\r\nx\r\n")[0]); errs[0] != nil {
		t.Fatal(errs[0])
	}
	if got := plain.Wait(1, 5*time.Second); len(got) != 1 || got[0].UTF8 {
		t.Fatalf("plain upstream saw %+v", got)
	}

	// No upstream of the route offers it: permanent, 5.6.7.
	r2 := router(t, ups("plain")...)
	defer r2.Close()
	errs := deliver(r2, context.Background(), spool(t, 1, needs, "Subject: x\r\n\r\nx\r\n")[0])
	if !queue.IsPermanent(errs[0]) || !strings.Contains(errs[0].Error(), "5.6.7 SMTPUTF8 required but not offered") ||
		!strings.Contains(errs[0].Error(), "upstream plain") {
		t.Fatalf("no SMTPUTF8 anywhere: %v", errs[0])
	}
	// One that lacks it and one that is down: try again later.
	r3 := router(t, ups("plain", "dead")...)
	defer r3.Close()
	errs = deliver(r3, context.Background(), spool(t, 1, needs, "Subject: x\r\n\r\nx\r\n")[0])
	if errs[0] == nil || queue.IsPermanent(errs[0]) {
		t.Fatalf("with an upstream down: %v, want temporary", errs[0])
	}
	// The envelope of a spool from before the flag was kept still counts.
	old := queue.Envelope{From: "zoë@example.com", To: []string{"b@example.org"}}
	if errs := deliver(r2, context.Background(), spool(t, 1, old, "Subject: x\r\n\r\nx\r\n")[0]); !queue.IsPermanent(errs[0]) {
		t.Fatalf("UTF-8 sender without the flag: %v", errs[0])
	}
}

// An ASCII ORCPT keeps type rfc822; a UTF-8 one to an upstream without
// SMTPUTF8 (the message itself ASCII) goes as the utf-8-addr-xtext
// downgrade, never as our own refusal.
func TestORCPTDowngrade(t *testing.T) {
	plain := sink(t, relaytest.SinkOptions{})
	r := router(t, Upstream{Name: "p", URL: "smtp://" + plain.Addr, TLS: "none"})
	defer r.Close()
	env := queue.Envelope{From: "a@example.com", To: []string{"b@example.org", "c@example.org"},
		ORcpt: []string{"zoë@pf.test", "c@example.org"}, ORcptType: []string{"utf-8", "rfc822"}}
	if errs := deliver(r, context.Background(), spool(t, 1, env, "Subject: x\r\n\r\nx\r\n")[0]); errs[0] != nil || errs[1] != nil {
		t.Fatal(errs)
	}
	got := plain.Wait(1, 5*time.Second)[0]
	if got.ORcptType["b@example.org"] != "utf-8" || got.ORcpt["b@example.org"] != "zoë@pf.test" ||
		got.ORcptType["c@example.org"] != "rfc822" || got.ORcpt["c@example.org"] != "c@example.org" {
		t.Fatalf("upstream saw ORCPT %v %v", got.ORcptType, got.ORcpt)
	}
}

// A message larger than the upstream's SIZE is not sent to it: the next
// upstream of the route takes it, and with none it fails at once.
func TestUpstreamSize(t *testing.T) {
	small := sink(t, relaytest.SinkOptions{MaxSize: 100})
	big := sink(t, relaytest.SinkOptions{})
	m := spool(t, 1, queue.Envelope{From: "a@x.org", To: []string{"b@y.org"}}, "Subject: x\r\n\r\n"+strings.Repeat("x", 200)+"\r\n")[0]
	r := router(t, Upstream{Name: "small", URL: "smtp://" + small.Addr, TLS: "none"}, Upstream{Name: "big", URL: "smtp://" + big.Addr, TLS: "none"})
	defer r.Close()
	if errs := deliver(r, context.Background(), m); errs[0] != nil {
		t.Fatal(errs[0])
	}
	if got := big.Wait(1, 5*time.Second); len(got) != 1 || got[0].Size != int64(len(m.Prepend))+m.Size {
		t.Fatalf("big upstream saw %+v", got)
	}
	r2 := router(t, Upstream{Name: "small", URL: "smtp://" + small.Addr, TLS: "none"})
	defer r2.Close()
	if errs := deliver(r2, context.Background(), m); !queue.IsPermanent(errs[0]) || !strings.Contains(errs[0].Error(), "5.3.4") {
		t.Fatalf("too large for every upstream: %v", errs[0])
	}
	if len(small.Messages()) != 0 {
		t.Fatal("the small upstream got the message")
	}
}

// A pooled connection that died while idle (the upstream restarted) is
// dialed again, once, before the route fails over to the backup.
func TestDeadPooledConnectionRedialed(t *testing.T) {
	primary := sink(t, relaytest.SinkOptions{})
	backup := sink(t, relaytest.SinkOptions{})
	r := router(t, Upstream{Name: "primary", URL: "smtp://" + primary.Addr, TLS: "none"}, Upstream{Name: "backup", URL: "smtp://" + backup.Addr, TLS: "none"})
	defer r.Close()
	env := queue.Envelope{From: "a@x.org", To: []string{"b@y.org"}}
	if errs := deliver(r, context.Background(), spool(t, 1, env, "Subject: 1\r\n\r\nx\r\n")[0]); errs[0] != nil {
		t.Fatal(errs[0])
	}
	// Restart the primary on the same address.
	addr := primary.Addr
	primary.Close()
	restarted := sink(t, relaytest.SinkOptions{Addr: addr})
	if errs := deliver(r, context.Background(), spool(t, 1, env, "Subject: 2\r\n\r\nx\r\n")[0]); errs[0] != nil {
		t.Fatal(errs[0])
	}
	if got := restarted.Wait(1, 5*time.Second); len(got) != 1 {
		t.Fatalf("restarted primary got %d messages", len(got))
	}
	if n := len(backup.Messages()); n != 0 {
		t.Fatalf("the backup got %d messages: the route failed over on a dead pooled connection", n)
	}
}
