package relay

// Attacks on a running relay over TCP. Each case asserts the reply and that
// nothing reached the queue (the only way to the upstream).

import (
	"bufio"
	"crypto/tls"
	"net"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/smarthost/smarthost/policy"
)

func TestNoOpenRelayWithoutAuth(t *testing.T) {
	e := newEnv(t, testOpts{})
	for _, from := range []string{"alice@example.com", "", "postmaster", "<>", "a@[127.0.0.1]", "@relay.test:a@example.com"} {
		for _, plain := range []bool{false, true} {
			addr := e.starttls
			if plain {
				addr = e.plain
			}
			c, err := net.Dial("tcp", addr)
			if err != nil {
				t.Fatal(err)
			}
			d := &rawDialog{t: t, c: c, r: bufio.NewReader(c)}
			d.expect("220 ")
			d.send("EHLO attacker.test\r\n")
			d.expect("250 ")
			d.send("MAIL FROM:<" + from + ">\r\n")
			line := d.expect("5")
			if !strings.HasPrefix(line, "530 5.7.0") && !strings.HasPrefix(line, "501 ") && !strings.HasPrefix(line, "553 ") {
				t.Errorf("MAIL FROM:<%s> without AUTH: %q", from, line)
			}
			d.send("RCPT TO:<victim@example.org>\r\n")
			d.expect("5")
			d.send("DATA\r\n")
			d.expect("5")
			c.Close()
		}
	}
	if n := len(e.queued(t)); n != 0 {
		t.Fatalf("%d messages queued without AUTH", n)
	}
}

func TestRecipientAddressTricks(t *testing.T) {
	e := newEnv(t, testOpts{policy: policy.Config{EnforceHeaderFrom: true, AllowedRecipientDomains: []string{"example.org"}}})
	for _, rcpt := range []string{
		"u%evil.com@example.org", "evil.com!u@example.org", `"u@evil.com"@example.org`, "u@evil.com@example.org",
		"@example.org:u@evil.com", "u@[192.0.2.1]", "u@example.org.", "u@\u0435xample.org", "u@evil.com",
		"u@example.org.evil.com", "u\r\n@example.org", "u@exa\u200bmple.org",
	} {
		d := e.raw(t)
		d.login()
		d.send("MAIL FROM:<alice@example.com>\r\n")
		d.expect("250 ")
		d.send("RCPT TO:<" + rcpt + ">\r\n")
		line := d.expect("")
		if !strings.HasPrefix(line, "5") {
			t.Errorf("RCPT TO:<%q> accepted: %q", rcpt, line)
		}
	}
	d := e.raw(t)
	d.login()
	d.send("MAIL FROM:<alice@example.com>\r\nRCPT TO:<U@EXAMPLE.ORG>\r\n")
	d.expect("250 ")
	d.expect("250 ")
	if n := len(e.queued(t)); n != 0 {
		t.Fatalf("%d messages queued", n)
	}
}

func TestSenderImpersonation(t *testing.T) {
	e := newEnv(t, testOpts{})
	for _, from := range []string{"alice@example.com.", "alice@\u0435xample.com", "alice@example.com@evil.org", `"ceo"@example.com`,
		"ceo@example.com", "alice@sub.example.com", "alice@example.co", "bob%alice@example.com"} {
		d := e.raw(t)
		d.login()
		d.send("MAIL FROM:<" + from + ">\r\n")
		if line := d.expect(""); !strings.HasPrefix(line, "5") {
			t.Errorf("MAIL FROM:<%s> accepted: %q", from, line)
		}
	}
	for _, hdr := range []string{
		"From: \"ceo@example.com\" <alice@example.com>\r\n",
		"From: ceo@example.com\r\nFrom: alice@example.com\r\n",
		"From: alice@example.com\r\nSender: ceo@example.com\r\n",
		"From: alice@example.com, ceo@example.com\r\n",
		"From: Alice <alice@\u0435xample.com>\r\n",
		"From: team:ceo@example.com;\r\n",
		"Subject: no From at all\r\n",
	} {
		d := e.raw(t)
		d.login()
		d.beginData()
		d.send(hdr + "\r\nbody\r\n.\r\n")
		if line := d.expect(""); !strings.HasPrefix(line, "550 5.7.1") {
			t.Errorf("header %q: %q", hdr, line)
		}
	}
	if n := len(e.queued(t)); n != 0 {
		t.Fatalf("%d impersonating messages queued", n)
	}
}

// The 2023 SMTP smuggling family: every ending other than CRLF.CRLF, with a
// second message behind it. None may end the first message, none may make a
// second one. With policy.bare_newline: reject each is refused (554 5.6.0)
// and the connection closed. With normalize (the default) the endings made
// of bare LF and CRLF are lines of one message, which holds the would-be
// second message as text; those with a bare CR or a NUL are refused.
func TestSmuggling(t *testing.T) {
	second := "MAIL FROM:<alice@example.com>\r\nRCPT TO:<victim@x.org>\r\nDATA\r\nFrom: alice@example.com\r\n\r\nsmuggled\r\n"
	lfOnly := []string{"\n.\n", "\n.\r\n", "\r\n.\n", "\n\n.\n\n"}
	withCRorNUL := []string{"\r.\r", "\r\n.\r", "\r.\r\n", "\r\n\x00.\r\n", "\r\n.\rX\r\n"}
	attempt := func(end string) string { return "From: alice@example.com\r\n\r\nfirst" + end + second + ".\r\n" }
	var all, refused []string
	for _, end := range append(append([]string{}, lfOnly...), withCRorNUL...) {
		all = append(all, attempt(end))
	}
	for _, end := range withCRorNUL {
		refused = append(refused, attempt(end))
	}
	t.Run("reject", func(t *testing.T) {
		e := newEnv(t, testOpts{rejectBareLF: true})
		e.refusedAndClosed(t, all, (*rawDialog).beginData, "554 5.6.0")
	})
	t.Run("normalize", func(t *testing.T) {
		e := newEnv(t, testOpts{})
		e.refusedAndClosed(t, refused, (*rawDialog).beginData, "554 5.6.0")
		for i, end := range lfOnly {
			d := e.raw(t)
			d.login()
			d.beginData()
			d.send(attempt(end))
			d.expect("250 2.0.0 OK: queued as ")
			// Still in step: the next command is a command.
			d.send("NOOP\r\n")
			d.expect("250 2.0.0 OK")
			ms := e.queued(t)
			if len(ms) != i+1 {
				t.Fatalf("%q: %d messages queued, want %d: the message was split", end, len(ms), i+1)
			}
		}
		for _, m := range e.queued(t) {
			_, body, _ := mustShow(t, e, m.ID)
			if !strings.Contains(body, "\r\n"+second) || strings.Contains(strings.ReplaceAll(body, "\r\n", ""), "\n") {
				t.Errorf("message %s does not hold the rest as CRLF text: %q", m.ID, body)
			}
		}
	})
}

// refusedAndClosed sends each attempt on its own logged-in session, after
// start, and checks that it is answered with want and the connection then
// closed, and that nothing was queued.
func (e *testEnv) refusedAndClosed(t *testing.T, attempts []string, start func(*rawDialog), want string) {
	t.Helper()
	for _, a := range attempts {
		d := e.raw(t)
		d.login()
		start(d)
		d.send(a)
		if line := d.expect(""); !strings.HasPrefix(line, want) {
			t.Errorf("%q: %q, want %q", a, line, want)
		}
		d.expectClosed()
	}
	if n := len(e.queued(t)); n != 0 {
		t.Fatalf("%d messages queued", n)
	}
}

// Commands are held to CRLF too: a bare LF or CR is where a lenient server
// and a strict one would see different commands.
func TestBareLineEndingInCommands(t *testing.T) {
	e := newEnv(t, testOpts{})
	e.refusedAndClosed(t, []string{
		"MAIL FROM:<alice@example.com>\nRCPT TO:<victim@x.org>\r\n",
		"MAIL FROM:<alice@example.com>\rRCPT TO:<victim@x.org>\r\n",
		"NOOP\n",
		"RSET\r\x00\r\n",
	}, func(*rawDialog) {}, "500 5.5.2 Bare CR or LF in command line")
	e.refusedAndClosed(t, []string{
		"MAIL FROM:<alice@example.com>\x00\r\n",
		"NOOP\x00RSET\r\n",
	}, func(*rawDialog) {}, "500 5.5.2 NUL character in command line")
}

// CHUNKING is not offered, so BDAT is just an unimplemented command, and
// the chunk that follows it is a stream of bad commands.
func TestBDATNotOffered(t *testing.T) {
	e := newEnv(t, testOpts{})
	d := e.raw(t)
	d.send("EHLO client.test\r\n")
	for {
		line := d.expect("")
		if strings.Contains(line, "CHUNKING") {
			t.Fatalf("CHUNKING advertised: %q", line)
		}
		if line[3] == ' ' {
			break
		}
	}
	d.send("AUTH PLAIN AGFsaWNlAGFsaWNlLXB3\r\n")
	d.expect("235 ")
	body := "From: alice@example.com\r\n\r\nchunk\r\n"
	d.send("MAIL FROM:<alice@example.com>\r\nRCPT TO:<b@x.org>\r\n")
	d.expect("250 ")
	d.expect("250 ")
	d.send("BDAT " + strconv.Itoa(len(body)) + " LAST\r\n")
	d.expect("502 5.5.1 BDAT command not implemented")
	if n := len(e.queued(t)); n != 0 {
		t.Fatalf("%d queued", n)
	}
}

// CVE-2011-0411: commands sent in the same packet as STARTTLS must not run
// after the handshake.
func TestSTARTTLSCommandInjection(t *testing.T) {
	e := newEnv(t, testOpts{})
	c, err := net.Dial("tcp", e.starttls)
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	r := bufio.NewReader(c)
	d := &rawDialog{t: t, c: c, r: r}
	d.expect("220 ")
	d.send("EHLO a.test\r\n")
	d.expect("250 ")
	d.send("STARTTLS\r\nRSET\r\nMAIL FROM:<injected@example.com>\r\n")
	d.expect("220 ")
	tc := tls.Client(c, &tls.Config{RootCAs: e.pool, ServerName: "127.0.0.1"})
	if err := tc.Handshake(); err != nil {
		// Refusing the handshake is a safe outcome too.
		return
	}
	td := &rawDialog{t: t, c: tc, r: bufio.NewReader(tc)}
	td.send("NOOP\r\n")
	// The first reply inside TLS must answer our NOOP, not the injected
	// commands.
	if line := td.expect(""); !strings.HasPrefix(line, "250 2.0.0 OK") {
		t.Fatalf("first reply after STARTTLS: %q (injected commands ran)", line)
	}
}

func TestProtocolAbuse(t *testing.T) {
	e := newEnv(t, testOpts{})
	// Unknown commands: three are answered, the fourth ends the session.
	d := e.raw(t)
	for i := 0; i < 3; i++ {
		d.send("XYZZY\r\n")
		d.expect("500 5.5.2 Syntax error, command unrecognized")
	}
	d.send("XYZZY\r\n")
	d.expect("421 4.7.0 Too many errors, closing connection")
	d.expectClosed()
	// So do malformed and out-of-sequence ones.
	d = e.raw(t)
	for _, c := range []string{"MAIL TO:<x@y.z>", "X", "EHLO"} {
		d.send(c + "\r\n")
		d.expect("50")
	}
	d.send("MAILFROM:<a@b.c>\r\n")
	d.expect("421 4.7.0 Too many errors")
	d.expectClosed()
	// A client that never starts a transaction is let go: 25 commands
	// before MAIL (EHLO and AUTH among them), then 421.
	d = e.raw(t)
	d.login()
	for i := 0; i < 23; i++ {
		d.send("NOOP\r\n")
		d.expect("250 2.0.0")
	}
	d.send("NOOP\r\n")
	d.expect("421 4.7.0 Too many commands without a transaction, closing connection")
	d.expectClosed()
	// A MAIL refused for good counts as an error: an unauthenticated
	// client cannot keep the connection by trying forever.
	d = e.raw(t)
	d.send("EHLO client.test\r\n")
	d.expect("250 ")
	for i := 0; i < 3; i++ {
		d.send("MAIL FROM:<alice@example.com>\r\n")
		d.expect("530 5.7.0")
	}
	d.send("MAIL FROM:<alice@example.com>\r\n")
	d.expect("421 4.7.0 Too many errors")
	d.expectClosed()
	// A MAIL starts the count of commands again: a long session of real
	// messages is fine (and a client told to wait by a rate limit may ask
	// again; see TestLimitExactAcrossTwoNodes).
	d = e.raw(t)
	d.login()
	for i := 0; i < 30; i++ {
		d.send("MAIL FROM:<alice@example.com>\r\nRSET\r\n")
		d.expect("250 ")
		d.expect("250 2.0.0 OK")
	}
	// A line over the limit ends the session.
	d = e.raw(t)
	d.send("EHLO " + strings.Repeat("a", 5000) + "\r\n")
	d.expect("500 5.5.2 Line too long, closing connection")
	d.expectClosed()
	// A header block over the limit is refused whole.
	d = e.raw(t)
	d.login()
	d.beginData()
	d.send("From: alice@example.com\r\n" + strings.Repeat("X-Filler: "+strings.Repeat("y", 900)+"\r\n", 20) + "\r\nbody\r\n.\r\n")
	if line := d.expect(""); !strings.HasPrefix(line, "552 5.3.4") {
		t.Errorf("huge header: %q", line)
	}
	if n := len(e.queued(t)); n != 0 {
		t.Fatalf("%d queued", n)
	}
}

// A client that stops talking is dropped after the idle timeout.
func TestSlowClientDropped(t *testing.T) {
	e := newEnv(t, testOpts{idle: 300 * time.Millisecond})
	d := e.raw(t)
	d.send("EHLO slow.test\r\n")
	d.expect("250 ")
	start := time.Now()
	d.c.SetReadDeadline(time.Now().Add(10 * time.Second))
	line, _ := d.r.ReadString('\n')
	if !strings.HasPrefix(line, "421 4.4.2") || time.Since(start) > 5*time.Second {
		t.Fatalf("silent client: %q after %s", line, time.Since(start))
	}
}
