package main

// The clients people submit mail with, each against the built relay, each
// asserting what the upstream (a recording sink with SMTPUTF8 and DSN)
// received, DKIM signatures verified: curl, msmtp, s-nail, Postfix's
// sendmail through a null client, nodemailer, Perl's Net::SMTP, Python's
// smtplib, Go's net/smtp.

import (
	"crypto/tls"
	"fmt"
	"net"
	"net/smtp"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/smarthost/smarthost/relay/relaytest"
)

// clientEnv is a relay whose upstream is a recording sink offering
// SMTPUTF8 and DSN.
func clientEnv(t *testing.T) (*relayEnv, *relaytest.Sink) {
	t.Helper()
	up, err := relaytest.NewSink(relaytest.SinkOptions{Addr: freePort(t), SMTPUTF8: true})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(up.Close)
	e := newRelayEnv(t, envOpts{upstream: "smtp://" + up.Addr})
	e.start(t)
	return e, up
}

// received waits for one message at the sink and checks its envelope, its
// text and its signatures.
func received(t *testing.T, e *relayEnv, up *relaytest.Sink, from string, to []string, body string) relaytest.Message {
	t.Helper()
	msgs := up.Wait(1, 15*time.Second)
	if len(msgs) != 1 {
		t.Fatalf("upstream got %d messages, want 1", len(msgs))
	}
	m := msgs[0]
	if m.From != from || strings.Join(m.To, ",") != strings.Join(to, ",") {
		t.Errorf("envelope %s -> %v, want %s -> %v", m.From, m.To, from, to)
	}
	if !strings.Contains(string(m.Data), body) {
		t.Errorf("upstream data lacks %q:\n%s", body, m.Data)
	}
	if strings.Contains(strings.ReplaceAll(string(m.Data), "\r\n", ""), "\n") {
		t.Errorf("upstream data has a bare LF:\n%q", m.Data)
	}
	dkimVerify(t, e.records, m.Data)
	return m
}

// writeMsg writes a message file for clients that read one.
func writeMsg(t *testing.T, text string) string {
	t.Helper()
	p := filepath.Join(t.TempDir(), "msg.eml")
	if err := os.WriteFile(p, []byte(text), 0o600); err != nil {
		t.Fatal(err)
	}
	return p
}

func runClient(t *testing.T, cmd *exec.Cmd) string {
	t.Helper()
	out, err := cmd.CombinedOutput()
	if err != nil {
		t.Fatalf("%s: %v\n%s", strings.Join(cmd.Args, " "), err, out)
	}
	return string(out)
}

func TestCurl(t *testing.T) {
	need(t, "/usr/bin/curl")
	for _, tc := range []struct{ name, url string }{{"starttls", "smtp://"}, {"implicit", "smtps://"}} {
		t.Run(tc.name, func(t *testing.T) {
			e, up := clientEnv(t)
			addr := e.starttls
			if tc.name == "implicit" {
				addr = e.implicit
			}
			msg := writeMsg(t, "From: Alice <alice@example.com>\r\nTo: bob@example.org\r\nSubject: curl\r\n\r\nsent by curl\r\n")
			runClient(t, exec.Command("/usr/bin/curl", "--silent", "--show-error", "--ssl-reqd", "--insecure",
				"--url", tc.url+addr, "--user", "alice:alice-pw", "--mail-from", "alice@example.com",
				"--mail-rcpt", "bob@example.org", "--upload-file", msg))
			received(t, e, up, "alice@example.com", []string{"bob@example.org"}, "sent by curl")
		})
	}
}

func TestMsmtp(t *testing.T) {
	need(t, "/usr/bin/msmtp")
	for _, mech := range []string{"login", "plain"} {
		t.Run(mech, func(t *testing.T) {
			e, up := clientEnv(t)
			host, port, _ := net.SplitHostPort(e.starttls)
			cmd := exec.Command("/usr/bin/msmtp", "--file=/dev/null", "--host="+host, "--port="+port, "--tls=on",
				"--tls-starttls=on", "--tls-certcheck=off", "--auth="+mech, "--user=alice", "--passwordeval=echo alice-pw",
				"--from=alice@example.com", "bob@example.org")
			cmd.Stdin = strings.NewReader("From: alice@example.com\nTo: bob@example.org\nSubject: msmtp " + mech + "\n\nsent by msmtp\n")
			runClient(t, cmd)
			received(t, e, up, "alice@example.com", []string{"bob@example.org"}, "sent by msmtp\r\n")
		})
	}
}

func TestSNail(t *testing.T) {
	need(t, "/usr/bin/s-nail")
	e, up := clientEnv(t)
	cmd := exec.Command("/usr/bin/s-nail", "-:/", "-Sv15-compat", "-Sttycharset=utf-8", "-Ssendcharsets=utf-8",
		"-Smta=smtp://alice:alice-pw@"+e.starttls, "-Ssmtp-use-starttls", "-Stls-verify=ignore",
		"-Sfrom=alice@example.com", "-s", "s-nail", "bob@example.org")
	cmd.Stdin = strings.NewReader("sent by s-nail\n")
	cmd.Env = append(os.Environ(), "HOME="+t.TempDir(), "MAILRC=/dev/null")
	runClient(t, cmd)
	received(t, e, up, "alice@example.com", []string{"bob@example.org"}, "sent by s-nail\r\n")
}

// A Postfix null client (relayhost = the relay, SASL, and
// smtp_tls_security_level = encrypt) forwards what sendmail(1) is given,
// here with a UTF-8 sender and recipient: Postfix then says SMTPUTF8 and
// ORCPT=utf-8;zo\x{EB}@pf.test, which the upstream must get as sent.
func TestPostfixNullClient(t *testing.T) {
	e, up := clientEnv(t)
	nc := nullClient(t, e.starttls)
	if err := nc.Sendmail("zoë@example.com", []string{"zoë@pf.test"},
		"From: Zoë <zoë@example.com>\nTo: zoë@pf.test\nSubject: null client\n\nsent by postfix\n"); err != nil {
		t.Fatal(err)
	}
	m := received(t, e, up, "zoë@example.com", []string{"zoë@pf.test"}, "sent by postfix\r\n")
	if !m.UTF8 || m.ORcptType["zoë@pf.test"] != "utf-8" || m.ORcpt["zoë@pf.test"] != "zoë@pf.test" {
		t.Errorf("upstream got SMTPUTF8 %v, ORCPT %q %q", m.UTF8, m.ORcptType, m.ORcpt)
	}
	if !strings.Contains(nc.Log(), "status=sent (250 2.0.0 OK: queued as ") {
		t.Errorf("the null client's log does not show our reply:\n%s", nc.Log())
	}
}

// nullClient is a private Postfix that relays everything to relay with
// SASL (as zoe) over STARTTLS it insists on.
func nullClient(t *testing.T, relay string) *relaytest.Postfix {
	return relaytest.StartPostfix(t, relaytest.PostfixOptions{Main: []string{
		"myhostname = nullclient.test",
		"relayhost = [127.0.0.1]:" + port(relay),
		"smtputf8_enable = yes",
		"smtp_sasl_auth_enable = yes",
		"smtp_sasl_password_maps = static:zoe:zoe-pw",
		"smtp_sasl_security_options = noanonymous",
		"smtp_tls_security_level = encrypt",
	}})
}

func port(addr string) string {
	_, p, _ := net.SplitHostPort(addr)
	return p
}

// nodemailer, from Debian's node-nodemailer: STARTTLS with requireTLS on
// the submission port, and secure: true on the implicit TLS port.
func TestNodemailer(t *testing.T) {
	need(t, "/usr/share/nodejs/nodemailer/package.json")
	node := "/usr/bin/node"
	need(t, node)
	for _, secure := range []bool{false, true} {
		t.Run(fmt.Sprintf("secure=%v", secure), func(t *testing.T) {
			e, up := clientEnv(t)
			addr := e.starttls
			if secure {
				addr = e.implicit
			}
			script := fmt.Sprintf(`
const nodemailer = require("nodemailer");
const t = nodemailer.createTransport({host: "127.0.0.1", port: %s, secure: %v, requireTLS: %v,
  auth: {user: "alice", pass: "alice-pw"}, tls: {rejectUnauthorized: false}});
t.sendMail({from: "Alice <alice@example.com>", to: "bob@example.org", subject: "nodemailer", text: "sent by nodemailer\n"})
 .then(info => { console.log(info.response); })
 .catch(err => { console.error(err); process.exit(1); });
`, port(addr), secure, !secure)
			cmd := exec.Command(node, "-e", script)
			cmd.Env = append(os.Environ(), "NODE_PATH=/usr/share/nodejs")
			out := runClient(t, cmd)
			if !strings.Contains(out, "250 2.0.0 OK: queued as ") {
				t.Errorf("nodemailer saw %q", out)
			}
			received(t, e, up, "alice@example.com", []string{"bob@example.org"}, "sent by nodemailer")
		})
	}
}

func TestPerlNetSMTP(t *testing.T) {
	need(t, "/usr/bin/perl", "-MNet::SMTP", "-MIO::Socket::SSL", "-MAuthen::SASL", "-e1")
	e, up := clientEnv(t)
	script := fmt.Sprintf(`
use strict; use Net::SMTP;
my $s = Net::SMTP->new("127.0.0.1", Port => %s, Hello => "perl.test", Timeout => 20) or die "connect: $@";
$s->starttls(SSL_verify_mode => 0) or die "starttls: " . $s->message;
$s->auth("alice", "alice-pw") or die "auth: " . $s->message;
$s->mail("alice\@example.com") or die "mail: " . $s->message;
$s->to("bob\@example.org") or die "rcpt: " . $s->message;
$s->data() or die "data: " . $s->message;
$s->datasend("From: alice\@example.com\nTo: bob\@example.org\nSubject: perl\n\nsent by Net::SMTP\n");
$s->dataend() or die "dataend: " . $s->message;
print $s->message;
$s->quit;
`, port(e.starttls))
	out := runClient(t, exec.Command("/usr/bin/perl", "-e", script))
	if !strings.Contains(out, "OK: queued as") {
		t.Errorf("Net::SMTP saw %q", out)
	}
	received(t, e, up, "alice@example.com", []string{"bob@example.org"}, "sent by Net::SMTP\r\n")
}

// smtplib with SMTPUTF8 and a UTF-8 local part, its header in UTF-8 too
// (RFC 6532): kept whole, signed, and sent upstream with SMTPUTF8.
func TestSmtplibSMTPUTF8(t *testing.T) {
	e, up := clientEnv(t)
	out := pySMTP(t, e.starttls, `
s = smtplib.SMTP(HOST, PORT)
s.starttls(context=CTX)
s.login("zoe", "zoe-pw")
msg = "From: Zoë <zoë@example.com>\r\nTo: Élise <élise@exemple.fr>\r\nSubject: héllo\r\n\r\nsent by smtplib\r\n".encode()
print(s.sendmail("zoë@example.com", ["élise@exemple.fr"], msg, mail_options=["SMTPUTF8"]))
s.quit()
`)
	if !strings.Contains(out, "{}") {
		t.Fatalf("smtplib: %s", out)
	}
	m := received(t, e, up, "zoë@example.com", []string{"élise@exemple.fr"}, "Subject: héllo\r\n")
	if !m.UTF8 {
		t.Error("the upstream did not get SMTPUTF8")
	}
}

func TestGoNetSMTP(t *testing.T) {
	e, up := clientEnv(t)
	c, err := smtp.Dial(e.starttls)
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	if err := c.StartTLS(&tls.Config{InsecureSkipVerify: true}); err != nil {
		t.Fatal(err)
	}
	if err := c.Auth(smtp.PlainAuth("", "alice", "alice-pw", "127.0.0.1")); err != nil {
		t.Fatal(err)
	}
	if err := c.Mail("alice@example.com"); err != nil {
		t.Fatal(err)
	}
	if err := c.Rcpt("bob@example.org"); err != nil {
		t.Fatal(err)
	}
	w, err := c.Data()
	if err != nil {
		t.Fatal(err)
	}
	fmt.Fprint(w, "From: alice@example.com\r\nTo: bob@example.org\r\nSubject: go\r\n\r\nsent by net/smtp\r\n")
	if err := w.Close(); err != nil {
		t.Fatal(err)
	}
	c.Quit()
	received(t, e, up, "alice@example.com", []string{"bob@example.org"}, "sent by net/smtp\r\n")
}

// An application that writes bare LF line endings (as many libraries do)
// is accepted, as by Postfix 3.9's default: the upstream gets CRLF, and the
// signatures made over the normalized message verify.
func TestBareLFNormalized(t *testing.T) {
	e, up := clientEnv(t)
	out := pySMTP(t, e.starttls, `
import socket, base64
s = smtplib.SMTP(HOST, PORT)
s.starttls(context=CTX)
s.login("alice", "alice-pw")
s.mail("alice@example.com")
s.rcpt("bob@example.org")
s.putcmd("DATA")
print(s.getreply())
# Written straight to the socket: smtplib would make every LF a CRLF.
s.sock.sendall(b"From: alice@example.com\nTo: bob@example.org\nSubject: lf\n\nline one\nline two\n.\nnot the end\r\n.\r\n")
print(s.getreply())
s.quit()
`)
	if !strings.Contains(out, "OK: queued as") {
		t.Fatalf("bare-LF message: %s", out)
	}
	m := received(t, e, up, "alice@example.com", []string{"bob@example.org"}, "Subject: lf\r\n\r\nline one\r\nline two\r\n.\r\nnot the end\r\n")
	_ = m
}
