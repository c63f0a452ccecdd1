package main

// The features someone coming from Postfix needs, each against the real
// binary: masquerading (masquerade_domains), DKIM keys of a parent domain
// for its subdomains (OpenDKIM's SigningTable wildcards), unsigned mail
// counted and logged, and long lines folded as Postfix folds them.

import (
	"fmt"
	"os"
	"regexp"
	"strings"
	"testing"
	"time"

	"golang.org/x/crypto/bcrypt"

	"github.com/smarthost/smarthost/relay/relaytest"
)

// Masquerading: a host's mail (cron@host.corp.internal) leaves as
// cron@example.com, in the envelope and in From:, display name kept; the
// local part stays. What the user may send as is checked on what it sent,
// first: neither another host's address nor the masqueraded one passes.
// A From: address outside the masqueraded domains is left alone.
func TestMasquerading(t *testing.T) {
	up := sink(t, freePort(t))
	h, _ := bcrypt.GenerateFromPassword([]byte("host-pw"), bcrypt.MinCost)
	e := newRelayEnv(t, envOpts{
		upstream: "smtp://" + up.Addr,
		users:    fmt.Sprintf("  web03:\n    password_hash: %q\n    addresses: [\"*@host.corp.internal\", web03@mail.example]\n", h),
		policy:   "  rewrite:\n    - {match: {sender_domains: [host.corp.internal]}, sender: \"*@example.com\", header_from: true}\n",
	})
	e.start(t)
	out := pySMTP(t, e.starttls, `
s = smtplib.SMTP(HOST, PORT)
s.starttls(context=CTX)
s.login("web03", "host-pw")
print("other-host", s.mail("cron@other.corp.internal")); s.rset()
print("target", s.mail("cron@example.com")); s.rset()
print("sent", s.sendmail("cron@host.corp.internal", ["bob@example.org"],
    b"From: Cron Daemon <cron@host.corp.internal>\r\nTo: bob@example.org\r\nSubject: nightly\r\n\r\nall done\r\n"))
print("own", s.sendmail("cron@host.corp.internal", ["bob@example.org"],
    b"From: web03@mail.example\r\nTo: bob@example.org\r\nSubject: own\r\n\r\nmine\r\n"))
s.quit()
`)
	for _, want := range []string{"other-host (553, b'5.7.1", "target (553, b'5.7.1", "sent {}", "own {}"} {
		if !strings.Contains(out, want) {
			t.Errorf("smtplib lacks %q:\n%s", want, out)
		}
	}
	got := up.Wait(2, 20*time.Second)
	if len(got) != 2 {
		t.Fatalf("upstream got %d messages", len(got))
	}
	bySubject := map[string]string{}
	for _, m := range got {
		if m.From != "cron@example.com" {
			t.Errorf("envelope sender %s, want cron@example.com", m.From)
		}
		for _, subj := range []string{"nightly", "own"} {
			if strings.Contains(string(m.Data), "\r\nSubject: "+subj+"\r\n") {
				bySubject[subj] = string(m.Data)
			}
		}
	}
	masq := bySubject["nightly"]
	if !strings.Contains(masq, "\r\nFrom: \"Cron Daemon\" <cron@example.com>\r\n") || strings.Contains(masq, "host.corp.internal>") ||
		!strings.Contains(masq, "d=example.com") {
		t.Errorf("the masqueraded message:\n%s", masq)
	}
	dkimVerify(t, e.records, []byte(masq))
	// From: holds another address the user owns, in no masqueraded domain:
	// left as it is, though the envelope sender was masqueraded.
	if own := bySubject["own"]; !strings.Contains(own, "\r\nFrom: web03@mail.example\r\n") {
		t.Errorf("the user's own address was rewritten:\n%s", own)
	}
}

// dkim.sign_subdomains: example.com's keys sign mail From: a subdomain
// (app.example.com), as d=example.com, and the signatures verify against
// example.com's records. Mail From: a domain with no key goes out unsigned,
// with a warning naming the message and a count by reason.
func TestDKIMSubdomainsAndUnsigned(t *testing.T) {
	up := sink(t, freePort(t))
	web := freePort(t)
	h, _ := bcrypt.GenerateFromPassword([]byte("nk-pw"), bcrypt.MinCost)
	e := newRelayEnv(t, envOpts{
		upstream: "smtp://" + up.Addr,
		users:    fmt.Sprintf("  nokey:\n    password_hash: %q\n    addresses: [u@nokey.example]\n", h),
		extra:    fmt.Sprintf("metrics: {listen: %q}\n", web),
	})
	setConfig(t, e, "\ndkim:\n", "\ndkim:\n  sign_subdomains: [example.com]\n")
	p := e.start(t)
	out, code := swaks(t, "--server", e.implicit, "--tls-on-connect", "--auth-user", "alice", "--auth-password", "alice-pw",
		"--from", "billing@app.example.com", "--to", "bob@example.org", "--h-Subject", "sub")
	if code != 0 {
		t.Fatalf("swaks: %s", out)
	}
	out, code = swaks(t, "--server", e.implicit, "--tls-on-connect", "--auth-user", "nokey", "--auth-password", "nk-pw",
		"--from", "u@nokey.example", "--to", "bob@example.org", "--h-Subject", "unsigned")
	m := queuedRe.FindStringSubmatch(out)
	if code != 0 || m == nil {
		t.Fatalf("swaks: %s", out)
	}
	got := up.Wait(2, 20*time.Second)
	if len(got) != 2 {
		t.Fatalf("upstream got %d messages", len(got))
	}
	for _, msg := range got {
		data := string(msg.Data)
		switch msg.From {
		case "billing@app.example.com":
			if strings.Count(data, "DKIM-Signature:") != 2 || strings.Count(data, "d=example.com;") != 2 {
				t.Errorf("the subdomain's message is not signed by example.com:\n%s", data)
			}
			dkimVerify(t, e.records, msg.Data)
		case "u@nokey.example":
			if strings.Contains(data, "DKIM-Signature:") {
				t.Errorf("signed without a key:\n%s", data)
			}
		}
	}
	if !regexp.MustCompile(`level=WARN msg="sending unsigned" .*msg_id=` + m[1] + ` reason=no_key`).MatchString(p.logText()) {
		t.Errorf("no warning names the unsigned message:\n%s", p.logText())
	}
	_, metrics := httpGet(t, "http://"+web+"/metrics")
	if v := metric(metrics, `smarthost_dkim_unsigned_total{reason="no_key"}`); v != 1 {
		t.Errorf("smarthost_dkim_unsigned_total{reason=\"no_key\"} = %v, want 1", v)
	}
	if v := metric(metrics, `smarthost_dkim_signatures_total{domain="example.com"}`); v != 1 {
		t.Errorf("smarthost_dkim_signatures_total{domain=\"example.com\"} = %v, want 1", v)
	}
}

// setConfig replaces old with new in the relay's configuration file.
func setConfig(t *testing.T, e *relayEnv, old, new string) {
	t.Helper()
	b, err := os.ReadFile(e.config)
	if err != nil || !strings.Contains(string(b), old) {
		t.Fatalf("the configuration has no %q: %v", old, err)
	}
	if err := os.WriteFile(e.config, []byte(strings.Replace(string(b), old, new, 1)), 0o600); err != nil {
		t.Fatal(err)
	}
}

// longLineMessage holds lines at, just over and far over 998 bytes, in the
// header and the body, one starting with a dot.
func longLineMessage(from string) string {
	x := func(n int) string { return strings.Repeat("x", n) }
	return "From: " + from + "\r\nTo: bob@example.org\r\nSubject: long lines\r\n" +
		"X-Long: " + x(1500) + "\r\n\r\n" +
		x(998) + "\r\n" + x(999) + "\r\n" + x(2500) + "\r\n" + "." + x(1200) + "\r\nend\r\n"
}

// policy.long_lines: wrap (the default) folds a message line over 998
// bytes the way Postfix does when it relays: the same message through a
// Postfix null client and through smarthost reaches the upstream with the
// same lines. With reject, such a line is refused as before.
func TestLongLinesFoldAsPostfix(t *testing.T) {
	pfUp, ourUp := sink(t, freePort(t)), sink(t, freePort(t))
	pf := relaytest.StartPostfix(t, relaytest.PostfixOptions{Main: []string{
		"myhostname = nullclient.test", "relayhost = [127.0.0.1]:" + port(pfUp.Addr), "smtp_tls_security_level = none",
	}})
	if err := pf.Sendmail("alice@example.com", []string{"bob@example.org"}, strings.ReplaceAll(longLineMessage("alice@example.com"), "\r\n", "\n")); err != nil {
		t.Fatal(err)
	}
	e := newRelayEnv(t, envOpts{upstream: "smtp://" + ourUp.Addr, maxSize: "1MiB"})
	e.start(t)
	out := pySMTP(t, e.starttls, `
s = smtplib.SMTP(HOST, PORT)
s.starttls(context=CTX)
s.login("alice", "alice-pw")
print(s.sendmail("alice@example.com", ["bob@example.org"], sys.argv[1].encode()))
s.quit()
`, longLineMessage("alice@example.com"))
	if !strings.Contains(out, "{}") {
		t.Fatalf("smtplib: %s", out)
	}
	theirs, ours := pfUp.Wait(1, 30*time.Second), ourUp.Wait(1, 20*time.Second)
	if len(theirs) != 1 || len(ours) != 1 {
		t.Fatalf("Postfix's upstream got %d messages, ours %d", len(theirs), len(ours))
	}
	// The X-Long: field and the body, as each upstream received them
	// (each adds header fields of its own: Message-ID:, Date:).
	tail := func(data []byte) string {
		head, body, _ := strings.Cut(string(data), "\r\n\r\n")
		_, field, _ := strings.Cut(head, "\r\nX-Long: ")
		field = regexp.MustCompile(`\r\n[^ \t][\s\S]*$`).ReplaceAllString(field, "")
		return field + "\r\n\r\n" + body
	}
	if got, want := tail(ours[0].Data), tail(theirs[0].Data); got != want || want == "" {
		t.Errorf("smarthost folded the long lines otherwise than Postfix:\nsmarthost: %s\nPostfix:   %s", shape(got), shape(want))
	}
	for _, line := range strings.Split(string(ours[0].Data), "\r\n") {
		if len(line) > 998 {
			t.Errorf("a line of %d bytes reached the upstream", len(line))
		}
	}
	dkimVerify(t, e.records, ours[0].Data)
}

// policy.long_lines: reject refuses a line over 2,000 bytes with 554 5.6.0
// and ends the session, as before there was a choice.
func TestLongLinesReject(t *testing.T) {
	e := newRelayEnv(t, envOpts{policy: "  long_lines: reject\n", maxSize: "1MiB"})
	e.start(t)
	out := pySMTP(t, e.starttls, `
s = smtplib.SMTP(HOST, PORT)
s.starttls(context=CTX)
s.login("alice", "alice-pw")
try:
    s.sendmail("alice@example.com", ["bob@example.org"], sys.argv[1].encode())
except smtplib.SMTPDataError as e:
    print("refused", e.smtp_code, e.smtp_error)
`, longLineMessage("alice@example.com"))
	if !strings.Contains(out, "refused 554 b'5.6.0 Message has a line that is too long'") {
		t.Fatalf("a 2,500-byte line under long_lines: reject: %s", out)
	}
}

// shape describes text line by line: each line's length and how it starts.
func shape(text string) string {
	var b strings.Builder
	for _, l := range strings.Split(text, "\r\n") {
		fmt.Fprintf(&b, "[%d %q] ", len(l), l[:min(len(l), 3)])
	}
	return b.String()
}
