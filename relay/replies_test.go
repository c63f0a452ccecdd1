package relay

import (
	"bufio"
	"context"
	"crypto/ed25519"
	"crypto/rand"
	"crypto/tls"
	"io"
	"log/slog"
	"net"
	"net/netip"
	"regexp"
	"strings"
	"testing"
	"time"

	"github.com/smarthost/smarthost/policy"
	"github.com/smarthost/smarthost/ratelimit"
	"github.com/smarthost/smarthost/relay/relaytest"
	"github.com/smarthost/smarthost/relay/smtpd"
)

// panicDirectory panics for user "panic": a bug in a backend.
type panicDirectory struct{ policy.Directory }

func (d panicDirectory) Authenticate(ctx context.Context, user, pass string) (*policy.User, error) {
	if user == "panic" {
		panic("a bug in the directory")
	}
	return d.Directory.Authenticate(ctx, user, pass)
}

// wireCase drives one session to one row of the reply table: each step is
// a command (CRLF added; "RAW:" sends the rest as it is), each followed by
// reading one reply; the last reply must be the row, byte for byte.
type wireCase struct {
	row      *smtpd.Reply
	opts     testOpts
	listener string // implicit (default), starttls or plain
	steps    []string
	before   func(t *testing.T, e *testEnv) // after the steps but the last
	tinyFS   bool                           // the queue on a small file system of its own (root)
}

const (
	authAlice = "AUTH PLAIN AGFsaWNlAGFsaWNlLXB3" // \0alice\0alice-pw
	authWrong = "AUTH PLAIN AGFsaWNlAHdyb25n"     // \0alice\0wrong
	mailAlice = "MAIL FROM:<alice@example.com>"
)

// rowPattern matches the row on the wire, its arguments whatever they are.
func rowPattern(r *smtpd.Reply) *regexp.Regexp {
	p := regexp.QuoteMeta(r.Error())
	p = strings.NewReplacer("%s", ".+", "%d", `\d+`).Replace(p)
	return regexp.MustCompile("^" + p + "\r\n$")
}

func data(text string) string { return "RAW:" + text + "\r\n.\r\n" }

// TestEveryReplyOnTheWire walks a real session to every row of smtpd's
// table and compares the bytes of the reply, so that a reply whose text or
// code changes, or a row that nothing sends any more, is caught.
func TestEveryReplyOnTheWire(t *testing.T) {
	_, key, _ := ed25519.GenerateKey(rand.Reader)
	trusted := policy.Config{EnforceHeaderFrom: true, TrustedNetworks: []netip.Prefix{netip.MustParsePrefix("127.0.0.0/8")}, TrustedSenders: []string{"alice@example.com"}}
	limited := ratelimit.NewQuotas(ratelimit.Config{Classes: map[string]ratelimit.Class{"default": {Messages: &ratelimit.Rate{N: 1, Per: time.Hour}}}},
		ratelimit.NewMemory(nil), slog.New(slog.DiscardHandler))
	limiterDown := ratelimit.NewQuotas(ratelimit.Config{Classes: map[string]ratelimit.Class{"default": {Messages: &ratelimit.Rate{N: 5, Per: time.Hour}}}},
		downLimiter{}, slog.New(slog.DiscardHandler))
	login := []string{"EHLO c.test", authAlice}
	tx := append(append([]string{}, login...), mailAlice, "RCPT TO:<b@x.org>", "DATA")
	cases := []wireCase{
		{row: smtpd.ReplyGreeting},
		{row: smtpd.ReplyHello, steps: []string{"HELO c.test"}},
		{row: smtpd.ReplyOK, steps: []string{"EHLO c.test", "NOOP"}},
		{row: smtpd.ReplySenderOK, steps: append(login, mailAlice)},
		{row: smtpd.ReplyRecipientOK, steps: append(login, mailAlice, "RCPT TO:<b@x.org>")},
		{row: smtpd.ReplyStartData, steps: tx},
		{row: smtpd.ReplyQueued, steps: append(tx, data("From: alice@example.com\r\n\r\nhi"))},
		{row: smtpd.ReplyCannotVRFY, steps: []string{"EHLO c.test", "VRFY bob"}},
		{row: smtpd.ReplyBye, steps: []string{"EHLO c.test", "QUIT"}},
		{row: smtpd.ReplyReadyTLS, listener: "starttls", steps: []string{"EHLO c.test", "STARTTLS"}},
		{row: smtpd.ReplyAuthOK, steps: login},
		{row: smtpd.ReplyAuthContinue, steps: []string{"EHLO c.test", "AUTH LOGIN"}},
		{row: smtpd.ReplyAuthRequired, steps: []string{"EHLO c.test", mailAlice}},
		{row: smtpd.ReplyEncryptionNeeded, listener: "plain", steps: []string{"EHLO c.test", authAlice}},
		{row: smtpd.ReplyBadCredentials, steps: []string{"EHLO c.test", authWrong}},
		{row: smtpd.ReplyAuthTempFail, opts: testOpts{dir: downDirectory{}}, steps: login},
		{row: smtpd.ReplyAuthLocked, opts: testOpts{quotas: quotas(ratelimit.NewMemory(nil), false)}, steps: []string{"EHLO c.test", authWrong, authWrong, authAlice}},
		{row: smtpd.ReplyAuthMalformed, steps: []string{"EHLO c.test", "AUTH PLAIN !!!"}},
		{row: smtpd.ReplyAuthCancelled, steps: []string{"EHLO c.test", "AUTH LOGIN", "*"}},
		{row: smtpd.ReplySenderNotOwned, steps: append(login, "MAIL FROM:<bob@example.org>")},
		{row: smtpd.ReplyBadSender, steps: append(login, "MAIL FROM:<a%b@example.com>")},
		{row: smtpd.ReplyNeedSMTPUTF8, steps: append(login, "MAIL FROM:<zoë@example.com>")},
		{row: smtpd.ReplyBadRecipient, steps: append(login, mailAlice, "RCPT TO:<a%b@x.org>")},
		{row: smtpd.ReplyRelayDenied, opts: testOpts{policy: policy.Config{EnforceHeaderFrom: true, AllowedRecipientDomains: []string{"x.org"}}},
			steps: append(login, mailAlice, "RCPT TO:<b@y.org>")},
		{row: smtpd.ReplyRcptNotAllowed, opts: testOpts{policy: policy.Config{EnforceHeaderFrom: true,
			Recipients: map[string]policy.RecipientRules{"default": {Allow: []string{"*@x.org"}}}}},
			steps: append(login, mailAlice, "RCPT TO:<b@y.org>")},
		{row: smtpd.ReplyTooManyRcpts, opts: testOpts{maxRcpts: 1}, steps: append(login, mailAlice, "RCPT TO:<b@x.org>", "RCPT TO:<c@x.org>")},
		{row: smtpd.ReplyRateLimited, opts: testOpts{quotas: limited}, steps: append(login, mailAlice, "RSET", mailAlice)},
		{row: smtpd.ReplyLimiterDown, opts: testOpts{quotas: limiterDown}, steps: append(login, mailAlice)},
		{row: smtpd.ReplyTooLarge, steps: append(login, mailAlice+" SIZE=99999999")},
		{row: smtpd.ReplyHeaderNotOwned, steps: append(tx, data("From: bob@example.org\r\n\r\nhi"))},
		{row: smtpd.ReplyHeaderMissing, steps: append(tx, data("Subject: no From\r\n\r\nhi"))},
		{row: smtpd.ReplyBadHeader, steps: append(tx, data("no colon here\r\n\r\nhi"))},
		{row: smtpd.ReplyNoDKIMKey, opts: testOpts{signer: signerFor(t, key), rejectNoKey: true},
			steps: append(append(append([]string{}, login...), "MAIL FROM:<x@app.example.com>", "RCPT TO:<b@x.org>", "DATA"), data("From: x@app.example.com\r\n\r\nhi"))},
		{row: smtpd.ReplyBareLineEnding, steps: append(tx, data("From: alice@example.com\r\n\r\nbare\rCR"))},
		{row: smtpd.ReplyDataNUL, steps: append(tx, data("From: alice@example.com\r\n\r\nNUL\x00"))},
		{row: smtpd.ReplyDataLineTooLong, steps: append(tx, data("From: alice@example.com\r\n\r\n"+strings.Repeat("x", 2500)))},
		{row: smtpd.ReplyDiskFull, tinyFS: true, steps: append(tx, data("From: alice@example.com\r\n\r\n"+strings.Repeat("full disk\r\n", 100))),
			before: func(t *testing.T, e *testEnv) { relaytest.Fill(t, e.dir) }},
		{row: smtpd.ReplySpoolFailed, steps: append(tx, data("From: alice@example.com\r\n\r\nhi")),
			before: func(t *testing.T, e *testEnv) { e.q.Close() }},
		{row: smtpd.ReplyInternal, opts: testOpts{signer: signerFor(t, brokenKey{key})}, steps: append(tx, data("From: alice@example.com\r\n\r\nhi"))},
		{row: smtpd.ReplyUnrecognized, steps: []string{"XYZZY"}},
		{row: smtpd.ReplyNotImplemented, steps: []string{"EHLO c.test", "HELP"}},
		{row: smtpd.ReplyHelloArg, steps: []string{"EHLO"}},
		{row: smtpd.ReplyHelloFirst, steps: []string{mailAlice}},
		{row: smtpd.ReplyNestedMail, steps: append(login, mailAlice, mailAlice)},
		{row: smtpd.ReplyNeedMail, steps: []string{"EHLO c.test", "RCPT TO:<b@x.org>"}},
		{row: smtpd.ReplyPathSyntax, steps: []string{"EHLO c.test", "MAIL TO:<b@x.org>"}},
		{row: smtpd.ReplyParamSyntax, steps: append(login, mailAlice+" SIZE=big")},
		{row: smtpd.ReplyParamUnknown, steps: append(login, mailAlice+" FOO=1")},
		{row: smtpd.ReplyNoArguments, steps: append(login, mailAlice, "RCPT TO:<b@x.org>", "DATA now")},
		{row: smtpd.ReplyNoValidRcpts, steps: append(login, mailAlice, "RCPT TO:<a%b@x.org>", "DATA")},
		{row: smtpd.ReplyTLSActive, steps: []string{"EHLO c.test", "STARTTLS"}},
		{row: smtpd.ReplyTLSUnavailable, listener: "plain", steps: []string{"EHLO c.test", "STARTTLS"}},
		{row: smtpd.ReplyAuthDone, steps: append(login, authAlice)},
		{row: smtpd.ReplyAuthInMail, opts: testOpts{policy: trusted}, steps: []string{"EHLO c.test", mailAlice, authAlice}},
		{row: smtpd.ReplyAuthSyntax, steps: []string{"EHLO c.test", "AUTH"}},
		{row: smtpd.ReplyAuthMechanism, steps: []string{"EHLO c.test", "AUTH CRAM-MD5"}},
		{row: smtpd.ReplyLineTooLong, steps: []string{"NOOP " + strings.Repeat("x", 2100)}},
		{row: smtpd.ReplyCmdBareLine, steps: []string{"RAW:NOOP\n"}},
		{row: smtpd.ReplyCmdNUL, steps: []string{"RAW:NO\x00OP\r\n"}},
		{row: smtpd.ReplyTooManyErrors, steps: []string{"XYZZY", "XYZZY", "XYZZY", "XYZZY"}},
		{row: smtpd.ReplyTooManyCommands, steps: repeat("NOOP", 26)},
		{row: smtpd.ReplyIdleTimeout, opts: testOpts{idle: 200 * time.Millisecond}, steps: []string{"EHLO c.test", "RAW:"}},
		{row: smtpd.ReplyShuttingDown, steps: []string{"EHLO c.test", "RAW:"},
			before: func(t *testing.T, e *testEnv) { go e.srv.Shutdown(context.Background()) }},
		// Refused before any command: in the clear on the plain listener,
		// inside TLS on the implicit one (RFC 8314 allows nothing else).
		{row: smtpd.ReplyTooManyConnsIP, opts: testOpts{perIP: 1}, listener: "plain", steps: []string{"CONNECT"}},
		{row: smtpd.ReplyTooManyConns, opts: testOpts{maxConns: 1}, listener: "plain", steps: []string{"CONNECT"}},
		{row: smtpd.ReplyTooManyConnsIP, opts: testOpts{perIP: 1}, steps: []string{"CONNECT"}},
		{row: smtpd.ReplyTooManyConns, opts: testOpts{maxConns: 1}, steps: []string{"CONNECT"}},
		{row: smtpd.ReplyPanic, opts: testOpts{dir: panicDirectory{usersFile(t)}}, steps: []string{"EHLO c.test", "AUTH PLAIN AHBhbmljAHBhbmlj"}},
	}
	covered := map[*smtpd.Reply]bool{}
	var skipped []string
	for _, tc := range cases {
		covered[tc.row] = true
		t.Run(strings.ReplaceAll(tc.row.When, "/", "-"), func(t *testing.T) {
			defer func() {
				if t.Skipped() {
					skipped = append(skipped, tc.row.Error())
				}
			}()
			if tc.tinyFS {
				// Its own small file system, to fill: it needs root, and
				// only this row is skipped without it (a failure under CI).
				tc.opts.queueDir = relaytest.TinyFS(t, "1m")
			}
			e := newEnv(t, tc.opts)
			got := e.walk(t, tc)
			if !rowPattern(tc.row).MatchString(got) {
				t.Errorf("got %q, want %q", got, tc.row.Error())
			}
		})
	}
	for _, r := range smtpd.Table {
		if !covered[r] {
			t.Errorf("no case sends %q", r.Error())
		}
	}
	if len(skipped) > 0 {
		t.Logf("%d of %d rows ran; skipped: %q", len(cases)-len(skipped), len(cases), skipped)
	}
}

func repeat(s string, n int) []string {
	out := make([]string, n)
	for i := range out {
		out[i] = s
	}
	return out
}

// walk runs a case's steps and returns the last reply's last line.
func (e *testEnv) walk(t *testing.T, tc wireCase) string {
	t.Helper()
	addr := e.implicit
	switch tc.listener {
	case "starttls":
		addr = e.starttls
	case "plain":
		addr = e.plain
	}
	dial := func() (net.Conn, *bufio.Reader) {
		var c net.Conn
		var err error
		if addr == e.implicit {
			c, err = tls.Dial("tcp", addr, &tls.Config{RootCAs: e.pool, ServerName: "127.0.0.1"})
		} else {
			c, err = net.Dial("tcp", addr)
		}
		if err != nil {
			t.Fatal(err)
		}
		t.Cleanup(func() { c.Close() })
		return c, bufio.NewReader(c)
	}
	c, r := dial()
	read := func() string {
		c.SetReadDeadline(time.Now().Add(10 * time.Second))
		for {
			line, err := r.ReadString('\n')
			if err != nil {
				t.Fatalf("reading a reply: %v", err)
			}
			if len(line) < 4 || line[3] != '-' {
				return line
			}
		}
	}
	last := read() // the greeting
	for i, s := range tc.steps {
		if i == len(tc.steps)-1 && tc.before != nil {
			tc.before(t, e)
		}
		switch {
		case s == "CONNECT":
			// A second connection, refused at once.
			c, r = dial()
		case strings.HasPrefix(s, "RAW:"):
			io.WriteString(c, s[4:])
		default:
			io.WriteString(c, s+"\r\n")
		}
		last = read()
		if i < len(tc.steps)-1 && strings.HasPrefix(last, "421 ") {
			t.Fatalf("step %q closed the session: %q", s, last)
		}
	}
	return last
}
