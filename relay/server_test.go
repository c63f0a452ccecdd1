package relay

import (
	"bufio"
	"bytes"
	"context"
	"crypto/tls"
	"crypto/x509"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net"
	"net/netip"
	"net/textproto"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/emersion/go-sasl"
	"github.com/emersion/go-smtp"
	"golang.org/x/crypto/bcrypt"

	"github.com/smarthost/smarthost/dkim"
	"github.com/smarthost/smarthost/policy"
	"github.com/smarthost/smarthost/ratelimit"
	"github.com/smarthost/smarthost/relay/queue"
	"github.com/smarthost/smarthost/relay/relaytest"
	"github.com/smarthost/smarthost/relay/smtpd"
)

// serve assembles the relay as smarthost does (smtpd.New with NewBackend),
// binds cfg's listeners and serves them until the test ends.
func serve(t testing.TB, cfg smtpd.Config, bc BackendConfig, deps Deps) *smtpd.Server {
	t.Helper()
	be := NewBackend(bc, deps)
	cfg.Hooks = be.Hooks()
	srv := smtpd.New(cfg, be)
	if err := srv.Listen(); err != nil {
		t.Fatal(err)
	}
	go srv.Serve()
	t.Cleanup(func() {
		ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
		defer cancel()
		srv.Shutdown(ctx)
	})
	return srv
}

type testEnv struct {
	srv      *smtpd.Server
	q        *queue.Queue
	dir      string // queue dir
	starttls string
	implicit string
	plain    string
	pool     *x509.CertPool
	logs     *relaytest.LogChecker // what the relay logged, as JSON
}

type testOpts struct {
	policy      policy.Config
	dir         policy.Directory
	maxRcpts    int
	maxSize     int64
	perIP       int
	insecure    bool
	signer      *dkim.Signer
	rejectNoKey bool
	quotas      *ratelimit.Quotas
	idle        time.Duration
	inlineMax   int64 // queue.Config.InlineMax
	// rejectBareLF: policy.bare_newline: reject (default normalize).
	rejectBareLF bool
	received     string // Deps.Received
	maxConns     int    // in all
	queueDir     string // default a temporary folder
	metrics      *Metrics
}

func usersFile(t testing.TB) *policy.Static {
	t.Helper()
	h, _ := bcrypt.GenerateFromPassword([]byte("alice-pw"), bcrypt.MinCost)
	s, err := policy.ParseStatic([]byte(fmt.Sprintf(`users:
  alice:
    password_hash: "%s"
    addresses: ["alice@example.com", "*@app.example.com"]
`, h)))
	if err != nil {
		t.Fatal(err)
	}
	return s
}

func newEnv(t testing.TB, o testOpts) *testEnv {
	t.Helper()
	if o.dir == nil {
		o.dir = usersFile(t)
	}
	if o.maxRcpts == 0 {
		o.maxRcpts = 5
	}
	if o.maxSize == 0 {
		o.maxSize = 64 << 10
	}
	if o.policy.TrustedSenders == nil {
		o.policy.EnforceHeaderFrom = true
	}
	cert, pool, err := relaytest.Cert()
	if err != nil {
		t.Fatal(err)
	}
	dir := o.queueDir
	if dir == "" {
		dir = t.TempDir()
	}
	// JSON, each line checked: a key twice fails the test.
	logs := relaytest.NewLogChecker(t)
	log := slog.New(slog.NewJSONHandler(logs, nil))
	q, err := queue.Open(queue.Config{Dir: dir, Hostname: "relay.test", InlineMax: o.inlineMax}, nil, log)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { q.Close() })
	srv := serve(t, smtpd.Config{
		Domain: "relay.test",
		Listeners: []smtpd.Listener{
			{Address: "127.0.0.1:0", Mode: smtpd.ModeStartTLS},
			{Address: "127.0.0.1:0", Mode: smtpd.ModeImplicit},
			{Address: "127.0.0.1:0", Mode: smtpd.ModePlain},
		},
		TLS:              &tls.Config{Certificates: []tls.Certificate{*cert}, MinVersion: tls.VersionTLS12},
		ConnectionsPerIP: o.perIP,
		MaxConnections:   o.maxConns,
		IdleTimeout:      o.idle,
		Limits:           smtpd.Limits{MaxRecipients: o.maxRcpts, MaxMessageBytes: o.maxSize, NormalizeBareLF: !o.rejectBareLF},
	}, BackendConfig{AllowInsecureAuth: o.insecure, MaxHeaderSize: 16 << 10, Metrics: o.metrics, Log: log},
		Deps{Policy: policy.New(o.policy, o.dir), Queue: q, Signer: o.signer, RejectNoKey: o.rejectNoKey, Quotas: o.quotas, Received: o.received})
	a := srv.Addrs()
	return &testEnv{srv: srv, q: q, dir: dir, starttls: a[0].String(), implicit: a[1].String(), plain: a[2].String(), pool: pool, logs: logs}
}

// client connects with STARTTLS and, if user is set, authenticates.
func (e *testEnv) client(t testing.TB, user, pass string) *smtp.Client {
	t.Helper()
	c, err := smtp.DialStartTLS(e.starttls, &tls.Config{RootCAs: e.pool, ServerName: "127.0.0.1"})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { c.Close() })
	if user != "" {
		if err := c.Auth(sasl.NewPlainClient("", user, pass)); err != nil {
			t.Fatalf("AUTH: %v", err)
		}
	}
	return c
}

func (e *testEnv) queued(t testing.TB) []*queue.Message {
	t.Helper()
	sp, err := queue.OpenSpool(e.dir)
	if err != nil {
		t.Fatal(err)
	}
	ms, err := sp.List()
	if err != nil {
		t.Fatal(err)
	}
	return ms
}

// wantReply checks that err is exactly the SMTP reply code, enhanced code
// and, when text is not empty, text.
func wantReply(t testing.TB, err error, code int, enh string, text string) {
	t.Helper()
	var se *smtp.SMTPError
	if !errors.As(err, &se) {
		t.Fatalf("got %v, want SMTP reply %d %s", err, code, enh)
	}
	got := fmt.Sprintf("%d.%d.%d", se.EnhancedCode[0], se.EnhancedCode[1], se.EnhancedCode[2])
	if se.Code != code || got != enh || (text != "" && se.Message != text) {
		t.Fatalf("got reply %d %s %q, want %d %s %q", se.Code, got, se.Message, code, enh, text)
	}
}

const goodMsg = "From: Alice <alice@example.com>\r\nTo: bob@example.org\r\nSubject: hi\r\n\r\nHello Bob.\r\n.leading dot line\r\n"

func send(c *smtp.Client, from string, to []string, msg string) error {
	if err := c.Mail(from, nil); err != nil {
		return err
	}
	for _, r := range to {
		if err := c.Rcpt(r, nil); err != nil {
			return err
		}
	}
	w, err := c.Data()
	if err != nil {
		return err
	}
	if _, err := io.WriteString(w, msg); err != nil {
		return err
	}
	return w.Close()
}

func TestQueuedAfterAuth(t *testing.T) {
	e := newEnv(t, testOpts{})
	c := e.client(t, "alice", "alice-pw")
	if err := c.Mail("alice@example.com", nil); err != nil {
		t.Fatal(err)
	}
	if err := c.Rcpt("bob@example.org", nil); err != nil {
		t.Fatal(err)
	}
	w, err := c.Data()
	if err != nil {
		t.Fatal(err)
	}
	io.WriteString(w, goodMsg)
	resp, err := w.CloseWithResponse()
	if err != nil {
		t.Fatal(err)
	}
	ms := e.queued(t)
	if len(ms) != 1 {
		t.Fatalf("%d messages queued, want 1", len(ms))
	}
	m := ms[0]
	if want := "2.0.0 OK: queued as " + m.ID; resp.StatusText != want {
		t.Errorf("reply %q, want %q", resp.StatusText, want)
	}
	if m.From != "alice@example.com" || len(m.Recipients) != 1 || m.Recipients[0].Addr != "bob@example.org" {
		t.Errorf("envelope %+v", m)
	}
	sp, err := queue.OpenSpool(e.dir)
	if err != nil {
		t.Fatal(err)
	}
	_, sent, err := sp.Show(m.ID)
	if err != nil {
		t.Fatal(err)
	}
	if data, ok := bytes.CutPrefix(sent, []byte(m.Prepend)); !ok || string(data) != goodMsg || int(m.Size) != len(data) {
		t.Errorf("stored data changed:\n%q\nwant\n%q", data, goodMsg)
	}
	for _, f := range []string{"Received: from ", "with ESMTPSA id " + m.ID, "Message-ID: <" + m.ID + "@relay.test>", "\r\nDate: "} {
		if !strings.Contains(m.Prepend, f) {
			t.Errorf("prepend lacks %q:\n%s", f, m.Prepend)
		}
	}
}

func TestKeepsMessageIDAndDate(t *testing.T) {
	e := newEnv(t, testOpts{})
	c := e.client(t, "alice", "alice-pw")
	msg := "From: alice@example.com\r\nMessage-ID: <x@y>\r\nDate: Mon, 02 Jan 2006 15:04:05 -0700\r\n\r\nbody\r\n"
	if err := send(c, "alice@example.com", []string{"b@example.org"}, msg); err != nil {
		t.Fatal(err)
	}
	m := e.queued(t)[0]
	if strings.Contains(m.Prepend, "Message-ID:") || strings.Contains(m.Prepend, "\nDate:") {
		t.Errorf("added a field the message had:\n%s", m.Prepend)
	}
}

func TestNoAuthRefused(t *testing.T) {
	e := newEnv(t, testOpts{})
	c := e.client(t, "", "")
	wantReply(t, c.Mail("alice@example.com", nil), 530, "5.7.0", "Authentication required")
	if len(e.queued(t)) != 0 {
		t.Fatal("queued without auth")
	}
}

func TestAuthNotOfferedBeforeTLS(t *testing.T) {
	e := newEnv(t, testOpts{})
	c, err := smtp.Dial(e.starttls)
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	if err := c.Hello("client.test"); err != nil {
		t.Fatal(err)
	}
	if ok, _ := c.Extension("AUTH"); ok {
		t.Error("AUTH advertised before TLS")
	}
	if ok, _ := c.Extension("STARTTLS"); !ok {
		t.Error("STARTTLS not advertised")
	}
	wantReply(t, c.Auth(sasl.NewPlainClient("", "alice", "alice-pw")), 538, "5.7.11", "Encryption required")
}

func TestAuthAdvertisedAfterTLS(t *testing.T) {
	e := newEnv(t, testOpts{})
	c := e.client(t, "", "")
	if err := c.Hello("client.test"); err != nil && !strings.Contains(err.Error(), "Hello called") {
		t.Fatal(err)
	}
	ok, mechs := c.Extension("AUTH")
	if !ok || mechs != "PLAIN LOGIN" {
		t.Errorf("AUTH %v %q, want PLAIN LOGIN", ok, mechs)
	}
	for _, ext := range []string{"PIPELINING", "8BITMIME", "ENHANCEDSTATUSCODES", "SMTPUTF8"} {
		if ok, _ := c.Extension(ext); !ok {
			t.Errorf("%s not advertised", ext)
		}
	}
	if ok, size := c.Extension("SIZE"); !ok || size != "65536" {
		t.Errorf("SIZE %v %q, want 65536", ok, size)
	}
	if ok, _ := c.Extension("STARTTLS"); ok {
		t.Error("STARTTLS advertised inside TLS")
	}
}

func TestBadCredentials(t *testing.T) {
	e := newEnv(t, testOpts{})
	for _, tc := range []struct{ user, pass string }{{"alice", "wrong"}, {"nobody", "alice-pw"}, {"alice", ""}} {
		c := e.client(t, "", "")
		wantReply(t, c.Auth(sasl.NewPlainClient("", tc.user, tc.pass)), 535, "5.7.8", "Authentication credentials invalid")
	}
	c := e.client(t, "", "")
	wantReply(t, c.Auth(sasl.NewPlainClient("mallory", "alice", "alice-pw")), 535, "5.7.8", "")
}

type downDirectory struct{}

func (downDirectory) Authenticate(context.Context, string, string) (*policy.User, error) {
	return nil, errors.New("ldap: connection refused")
}

func TestBackendDownIsTemporary(t *testing.T) {
	e := newEnv(t, testOpts{dir: downDirectory{}})
	c := e.client(t, "", "")
	wantReply(t, c.Auth(sasl.NewPlainClient("", "alice", "alice-pw")), 454, "4.7.0", "Temporary authentication failure")
}

func TestLoginMechanism(t *testing.T) {
	e := newEnv(t, testOpts{})
	c := e.client(t, "", "")
	if err := c.Auth(sasl.NewLoginClient("alice", "alice-pw")); err != nil {
		t.Fatalf("AUTH LOGIN: %v", err)
	}
	if err := send(c, "alice@example.com", []string{"b@example.org"}, goodMsg); err != nil {
		t.Fatal(err)
	}
	c2 := e.client(t, "", "")
	wantReply(t, c2.Auth(sasl.NewLoginClient("alice", "nope")), 535, "5.7.8", "")
}

func TestSenderOwnership(t *testing.T) {
	e := newEnv(t, testOpts{})
	for _, tc := range []struct {
		from string
		ok   bool
	}{
		{"alice@example.com", true},
		{"ALICE@Example.COM", true},
		{"anything@app.example.com", true},
		{"bob@example.com", false},
		{"alice@example.com.evil.org", false},
		{"alice@sub.app.example.com", false},
		{"alice%evil.org@example.com", false},
		{"", false},
	} {
		c := e.client(t, "alice", "alice-pw")
		err := c.Mail(tc.from, nil)
		if tc.ok && err != nil {
			t.Errorf("MAIL FROM:<%s>: %v", tc.from, err)
		}
		if !tc.ok {
			var se *smtp.SMTPError
			if !errors.As(err, &se) || se.Code != 553 {
				t.Errorf("MAIL FROM:<%s>: got %v, want 553", tc.from, err)
			}
		}
	}
	c := e.client(t, "alice", "alice-pw")
	wantReply(t, c.Mail("bob@example.com", nil), 553, "5.7.1", "Sender address rejected: not owned by user")
}

func TestHeaderFromOwnership(t *testing.T) {
	e := newEnv(t, testOpts{})
	for _, msg := range []string{
		"From: bob@example.com\r\n\r\nx\r\n",
		"From: alice@example.com, bob@example.com\r\n\r\nx\r\n",
		"From: alice@example.com\r\nSender: bob@example.com\r\n\r\nx\r\n",
		"From: alice@example.com\r\nFrom: bob@example.com\r\n\r\nx\r\n",
		"Subject: no from\r\n\r\nx\r\n",
	} {
		c := e.client(t, "alice", "alice-pw")
		err := send(c, "alice@example.com", []string{"b@example.org"}, msg)
		var se *smtp.SMTPError
		if !errors.As(err, &se) || se.Code != 550 || se.EnhancedCode != (smtp.EnhancedCode{5, 7, 1}) {
			t.Errorf("%q: got %v, want 550 5.7.1", msg, err)
		}
	}
	if n := len(e.queued(t)); n != 0 {
		t.Fatalf("%d refused messages queued", n)
	}
}

func TestRecipientDomains(t *testing.T) {
	e := newEnv(t, testOpts{policy: policy.Config{EnforceHeaderFrom: true, AllowedRecipientDomains: []string{"Example.org"}}})
	c := e.client(t, "alice", "alice-pw")
	if err := c.Mail("alice@example.com", nil); err != nil {
		t.Fatal(err)
	}
	if err := c.Rcpt("bob@EXAMPLE.org", nil); err != nil {
		t.Fatal(err)
	}
	wantReply(t, c.Rcpt("bob@evil.org", nil), 554, "5.7.1", "Relay access denied")
	wantReply(t, c.Rcpt("bob@example.org.evil.org", nil), 554, "5.7.1", "")
	wantReply(t, c.Rcpt("bob%evil.org@example.org", nil), 501, "5.1.3", "")
}

func TestTooManyRecipients(t *testing.T) {
	e := newEnv(t, testOpts{maxRcpts: 2})
	c := e.client(t, "alice", "alice-pw")
	if err := c.Mail("alice@example.com", nil); err != nil {
		t.Fatal(err)
	}
	for _, r := range []string{"a@x.org", "b@x.org"} {
		if err := c.Rcpt(r, nil); err != nil {
			t.Fatal(err)
		}
	}
	wantReply(t, c.Rcpt("c@x.org", nil), 452, "4.5.3", "")
}

func TestMessageSize(t *testing.T) {
	e := newEnv(t, testOpts{maxSize: 1024})
	c := e.client(t, "alice", "alice-pw")
	wantReply(t, c.Mail("alice@example.com", &smtp.MailOptions{Size: 4096}), 552, "5.3.4", "")

	c = e.client(t, "alice", "alice-pw")
	big := "From: alice@example.com\r\n\r\n" + strings.Repeat("0123456789abcdef\r\n", 100)
	wantReply(t, send(c, "alice@example.com", []string{"b@x.org"}, big), 552, "5.3.4", "")
	if n := len(e.queued(t)); n != 0 {
		t.Fatalf("%d oversized messages queued", n)
	}
}

// rawDialog talks to the implicit-TLS listener byte for byte.
type rawDialog struct {
	t *testing.T
	c net.Conn
	r *bufio.Reader
}

func (e *testEnv) raw(t *testing.T) *rawDialog {
	c, err := tls.Dial("tcp", e.implicit, &tls.Config{RootCAs: e.pool, ServerName: "127.0.0.1"})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { c.Close() })
	d := &rawDialog{t: t, c: c, r: bufio.NewReader(c)}
	d.expect("220 ")
	return d
}

// expect reads one reply (all its lines) and checks its last line's start.
func (d *rawDialog) expect(prefix string) string {
	d.t.Helper()
	d.c.SetReadDeadline(time.Now().Add(5 * time.Second))
	for {
		line, err := d.r.ReadString('\n')
		if err != nil {
			d.t.Fatalf("reading reply, want %q: %v", prefix, err)
		}
		if len(line) > 3 && line[3] == '-' {
			continue
		}
		if !strings.HasPrefix(line, prefix) {
			d.t.Fatalf("got %q, want %q", line, prefix)
		}
		return line
	}
}

func (d *rawDialog) send(s string) { d.c.Write([]byte(s)) }

// expectClosed checks that the server has hung up, with nothing more said.
func (d *rawDialog) expectClosed() {
	d.t.Helper()
	d.c.SetReadDeadline(time.Now().Add(5 * time.Second))
	if line, err := d.r.ReadString('\n'); err == nil || line != "" {
		d.t.Fatalf("connection still open: read %q, %v", line, err)
	}
}

// beginData opens a transaction from alice to b@x.org, up to the 354.
func (d *rawDialog) beginData() {
	d.t.Helper()
	d.send("MAIL FROM:<alice@example.com>\r\nRCPT TO:<b@x.org>\r\nDATA\r\n")
	d.expect("250 ")
	d.expect("250 ")
	d.expect("354 ")
}

func (d *rawDialog) login() {
	d.send("EHLO client.test\r\n")
	d.expect("250 ")
	d.send("AUTH PLAIN AGFsaWNlAGFsaWNlLXB3\r\n") // \0alice\0alice-pw
	d.expect("235 ")
}

// mustShow returns a queued message and its content as it will be sent.
func mustShow(t *testing.T, e *testEnv, id string) (*queue.Message, string, error) {
	t.Helper()
	sp, err := queue.OpenSpool(e.dir)
	if err != nil {
		t.Fatal(err)
	}
	m, b, err := sp.Show(id)
	if err != nil {
		t.Fatal(err)
	}
	return m, string(b), nil
}

func TestBareLineEndings(t *testing.T) {
	bodies := []string{
		"bare LF\nhere\r\n",
		"bare CR\rhere\r\n",
		// The smuggling attempt: a second message hidden behind <LF>.<LF>.
		"x\r\n\n.\nMAIL FROM:<alice@example.com>\r\nRCPT TO:<victim@x.org>\r\nDATA\r\nFrom: alice@example.com\r\n\r\nsmuggled\r\n",
	}
	// policy.bare_newline: reject refuses them all.
	e := newEnv(t, testOpts{rejectBareLF: true})
	for _, body := range bodies {
		d := e.raw(t)
		d.login()
		d.beginData()
		d.send("From: alice@example.com\r\n\r\n" + body + ".\r\n")
		d.expect("554 5.6.0 Message contains a bare CR or LF; use CRLF line endings")
		d.expectClosed() // where the message ends is no longer agreed on
	}
	if n := len(e.queued(t)); n != 0 {
		t.Fatalf("%d messages queued from bad line endings", n)
	}

	// normalize (the default): a bare LF becomes CRLF, a bare CR is
	// still refused.
	e = newEnv(t, testOpts{})
	for i, body := range bodies {
		d := e.raw(t)
		d.login()
		d.beginData()
		d.send("From: alice@example.com\nSubject: lf\n\n" + body + ".\r\n")
		if i == 1 { // the bare CR
			d.expect("554 5.6.0 Message contains a bare CR or LF")
			d.expectClosed()
			continue
		}
		d.expect("250 2.0.0 OK: queued as ")
	}
	ms := e.queued(t)
	if len(ms) != 2 {
		t.Fatalf("%d messages queued, want the 2 with bare LF only", len(ms))
	}
	for _, m := range ms {
		_, body, _ := mustShow(t, e, m.ID)
		if strings.Contains(strings.ReplaceAll(body, "\r\n", ""), "\n") || !strings.Contains(body, "From: alice@example.com\r\nSubject: lf\r\n\r\n") {
			t.Errorf("not normalized to CRLF: %q", body)
		}
	}
}

func TestImplicitTLSAndPipelining(t *testing.T) {
	e := newEnv(t, testOpts{})
	d := e.raw(t)
	d.login()
	d.send("MAIL FROM:<alice@example.com>\r\nRCPT TO:<b@x.org>\r\nRCPT TO:<c@x.org>\r\nDATA\r\n")
	d.expect("250 ")
	d.expect("250 ")
	d.expect("250 ")
	d.expect("354 ")
	d.send(goodMsg + ".\r\n")
	line := d.expect("250 2.0.0 OK: queued as ")
	ms := e.queued(t)
	if len(ms) != 1 || !strings.Contains(line, ms[0].ID) || len(ms[0].Recipients) != 2 {
		t.Fatalf("reply %q, queue %+v", line, ms)
	}
	if !strings.Contains(ms[0].Prepend, "with ESMTPSA") {
		t.Errorf("Received lacks ESMTPSA: %s", ms[0].Prepend)
	}
}

func TestPlainListenerRefusesAuth(t *testing.T) {
	e := newEnv(t, testOpts{})
	c, err := smtp.Dial(e.plain)
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	c.Hello("client.test")
	if ok, _ := c.Extension("STARTTLS"); ok {
		t.Error("plain listener offers STARTTLS")
	}
	wantReply(t, c.Auth(sasl.NewPlainClient("", "alice", "alice-pw")), 538, "5.7.11", "")
}

func TestInsecureAuthAllowedWhenConfigured(t *testing.T) {
	e := newEnv(t, testOpts{insecure: true})
	c, err := smtp.Dial(e.plain)
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	if err := c.Auth(sasl.NewPlainClient("", "alice", "alice-pw")); err != nil {
		t.Fatal(err)
	}
	if err := send(c, "alice@example.com", []string{"b@x.org"}, goodMsg); err != nil {
		t.Fatal(err)
	}
	if !strings.Contains(e.queued(t)[0].Prepend, "with ESMTPA id") {
		t.Error("Received does not say ESMTPA")
	}
}

func TestTrustedNetwork(t *testing.T) {
	e := newEnv(t, testOpts{policy: policy.Config{
		TrustedNetworks:   []netip.Prefix{netip.MustParsePrefix("127.0.0.0/8")},
		TrustedSenders:    []string{"*@notify.example.com"},
		EnforceHeaderFrom: true,
	}})
	c := e.client(t, "", "")
	wantReply(t, c.Mail("alice@example.com", nil), 553, "5.7.1", "")
	c = e.client(t, "", "")
	if err := send(c, "app@notify.example.com", []string{"b@x.org"}, "From: app@notify.example.com\r\n\r\nx\r\n"); err != nil {
		t.Fatal(err)
	}
	c = e.client(t, "", "")
	err := send(c, "app@notify.example.com", []string{"b@x.org"}, "From: ceo@example.com\r\n\r\nx\r\n")
	wantReply(t, err, 550, "5.7.1", "")
}

// A message too big for the journal is written to tmp/ first; with that
// folder gone, committing fails, and the client is told to try again.
// (A journal that cannot be written: TestJournalWriteFailure in the queue.)
func TestSpoolFailureIsTemporary(t *testing.T) {
	e := newEnv(t, testOpts{inlineMax: -1})
	if err := os.RemoveAll(filepath.Join(e.dir, "tmp")); err != nil {
		t.Fatal(err)
	}
	c := e.client(t, "alice", "alice-pw")
	wantReply(t, send(c, "alice@example.com", []string{"b@x.org"}, goodMsg), 451, "4.3.0", "")
}

func TestConnectionsPerIP(t *testing.T) {
	e := newEnv(t, testOpts{perIP: 2})
	var conns []net.Conn
	for i := 0; i < 2; i++ {
		c, err := net.Dial("tcp", e.plain)
		if err != nil {
			t.Fatal(err)
		}
		defer c.Close()
		bufio.NewReader(c).ReadString('\n') // greeting: the slot is taken
		conns = append(conns, c)
	}
	c, err := net.Dial("tcp", e.plain)
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	line, _ := bufio.NewReader(c).ReadString('\n')
	if !strings.HasPrefix(line, "421 4.7.0 ") {
		t.Fatalf("third connection got %q, want 421 4.7.0", line)
	}
	conns[0].Close()
	// The slot comes back once the server has seen the close.
	released := relaytest.Within(5*time.Second, func() bool {
		c, err := net.Dial("tcp", e.plain)
		if err != nil {
			t.Fatal(err)
		}
		line, _ = bufio.NewReader(c).ReadString('\n')
		c.Close()
		return strings.HasPrefix(line, "220 ")
	})
	if !released {
		t.Fatalf("slot not released: %q", line)
	}
}

func TestDSNParametersQueued(t *testing.T) {
	e := newEnv(t, testOpts{})
	d := e.raw(t)
	d.login()
	d.send("MAIL FROM:<alice@example.com> RET=HDRS ENVID=abc+2Bdef\r\nRCPT TO:<b@x.org> NOTIFY=FAILURE,DELAY ORCPT=rfc822;orig@x.org\r\nRCPT TO:<c@x.org> NOTIFY=NEVER\r\nDATA\r\n")
	d.expect("250 ")
	d.expect("250 ")
	d.expect("250 ")
	d.expect("354 ")
	d.send(goodMsg + ".\r\n")
	d.expect("250 2.0.0 OK: queued as ")
	m := e.queued(t)[0]
	if m.Ret != "HDRS" || m.EnvID != "abc+def" || strings.Join(m.Recipients[0].Notify, ",") != "FAILURE,DELAY" ||
		m.Recipients[0].ORcpt != "orig@x.org" || strings.Join(m.Recipients[1].Notify, ",") != "NEVER" {
		t.Fatalf("queued %+v", m)
	}
}

// Listeners change without dropping a session: the old port stops
// accepting, its open session finishes, the new port serves.
func TestSetListeners(t *testing.T) {
	e := newEnv(t, testOpts{insecure: true})
	old, err := smtp.Dial(e.plain)
	if err != nil {
		t.Fatal(err)
	}
	defer old.Close()
	if err := old.Auth(sasl.NewPlainClient("", "alice", "alice-pw")); err != nil {
		t.Fatal(err)
	}
	free, _ := net.Listen("tcp", "127.0.0.1:0")
	port := free.Addr().String()
	free.Close()
	// The kept listeners are named as configured (port 0 here).
	ls := []smtpd.Listener{{Address: "127.0.0.1:0", Mode: smtpd.ModeStartTLS}, {Address: "127.0.0.1:0", Mode: smtpd.ModeImplicit}, {Address: port, Mode: smtpd.ModePlain}}
	if err := e.srv.SetListeners(ls, 5*time.Second); err != nil {
		t.Fatal(err)
	}
	newPlain := e.srv.Addrs()[2].String()
	if newPlain != port || e.srv.Addrs()[0].String() != e.starttls {
		t.Fatalf("listeners now %v", e.srv.Addrs())
	}
	if err := send(old, "alice@example.com", []string{"b@x.org"}, goodMsg); err != nil {
		t.Fatalf("session on the removed listener: %v", err)
	}
	if c, err := net.DialTimeout("tcp", e.plain, time.Second); err == nil {
		c.Close()
		t.Fatal("the removed listener still accepts")
	}
	c, err := smtp.Dial(newPlain)
	if err != nil {
		t.Fatalf("new listener: %v", err)
	}
	defer c.Close()
	if err := c.Hello("c.test"); err != nil {
		t.Fatal(err)
	}
	// A listener that cannot be bound changes nothing.
	bad := append(ls, smtpd.Listener{Address: "256.0.0.1:25", Mode: smtpd.ModePlain})
	if err := e.srv.SetListeners(bad, time.Second); err == nil {
		t.Fatal("bound an impossible address")
	}
	if n := len(e.srv.Addrs()); n != 3 {
		t.Fatalf("%d listeners after a failed change, want 3", n)
	}
}

// BenchmarkSubmit10KB: one whole transaction (MAIL, RCPT, DATA of 10 KB,
// the CRLF check, header parse, Received:, spooling with fsync) over an
// authenticated TLS session that stays open, as application servers keep it.
func BenchmarkSubmit10KB(b *testing.B) {
	e := newEnv(b, testOpts{maxSize: 1 << 20})
	c := e.client(b, "alice", "alice-pw")
	msg := "From: alice@example.com\r\nSubject: bench\r\n\r\n" + strings.Repeat(strings.Repeat("x", 98)+"\r\n", 100)
	b.SetBytes(int64(len(msg)))
	b.ResetTimer()
	for i := 0; i < b.N; i++ {
		if err := send(c, "alice@example.com", []string{"b@x.org"}, msg); err != nil {
			b.Fatal(err)
		}
	}
}

// Shutdown lets an idle session go quickly with a 421 instead of waiting
// out the grace period, and finishes a message that is being sent.
func TestShutdownDrainsIdleSessions(t *testing.T) {
	e := newEnv(t, testOpts{})
	idle := e.raw(t)
	idle.login()
	busy := e.raw(t)
	busy.login()
	busy.send("MAIL FROM:<alice@example.com>\r\nRCPT TO:<b@x.org>\r\nDATA\r\n")
	busy.expect("250 ")
	busy.expect("250 ")
	busy.expect("354 ")
	busy.send("From: alice@example.com\r\n\r\nfirst half\r\n")

	done := make(chan error, 1)
	start := time.Now()
	go func() {
		ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
		defer cancel()
		done <- e.srv.Shutdown(ctx)
	}()
	// The idle session is let go at once: the drain has begun.
	idle.c.SetReadDeadline(time.Now().Add(10 * time.Second))
	line, _ := idle.r.ReadString('\n')
	if !strings.HasPrefix(line, "421 4.3.2 Service shutting down") {
		t.Errorf("idle session got %q, want 421 4.3.2", line)
	}
	// The busy client keeps sending within the drain window and finishes.
	busy.send("second half\r\n.\r\n")
	busy.expect("250 2.0.0 OK: queued as ")
	busy.send("MAIL FROM:<alice@example.com>\r\n")
	busy.expect("421 4.3.2 ")
	busy.c.Close()
	if err := <-done; err != nil {
		t.Fatalf("shutdown: %v", err)
	}
	if d := time.Since(start); d > 10*time.Second {
		t.Errorf("shutdown took %s with only idle sessions left", d)
	}
	if n := len(e.queued(t)); n != 1 {
		t.Fatalf("%d messages queued, want the one finished during the drain", n)
	}
}

// A client that keeps its TLS session resumes it on its next connection
// (a session ticket), on both kinds of listener: a full handshake only
// once, which is most of what a connection per message costs.
func TestTLSSessionResumption(t *testing.T) {
	e := newEnv(t, testOpts{})
	cfg := &tls.Config{RootCAs: e.pool, ServerName: "127.0.0.1", ClientSessionCache: tls.NewLRUClientSessionCache(4)}
	for i, want := range []bool{false, true, true} {
		c, err := tls.Dial("tcp", e.implicit, cfg)
		if err != nil {
			t.Fatal(err)
		}
		// TLS 1.3 tickets arrive after the handshake: read the greeting.
		bufio.NewReader(c).ReadString('\n')
		if got := c.ConnectionState().DidResume; got != want {
			t.Errorf("implicit TLS, connection %d: resumed %v, want %v", i, got, want)
		}
		c.Close()
	}
	cfg.ClientSessionCache = tls.NewLRUClientSessionCache(4) // a client new to the server
	for i, want := range []bool{false, true} {
		nc, err := net.Dial("tcp", e.starttls)
		if err != nil {
			t.Fatal(err)
		}
		tp := textproto.NewConn(nc)
		tp.ReadResponse(220)
		tp.PrintfLine("EHLO c.test")
		tp.ReadResponse(250)
		tp.PrintfLine("STARTTLS")
		tp.ReadResponse(220)
		tc := tls.Client(nc, cfg)
		if err := tc.Handshake(); err != nil {
			t.Fatal(err)
		}
		tp = textproto.NewConn(tc)
		tp.PrintfLine("EHLO c.test")
		tp.ReadResponse(250)
		if got := tc.ConnectionState().DidResume; got != want {
			t.Errorf("STARTTLS, connection %d: resumed %v, want %v", i, got, want)
		}
		tc.Close()
	}
}
