package main

// Real upstreams: a Postfix that requires STARTTLS and AUTH (Cyrus sasldb2)
// and offers DSN and SMTPUTF8, one without SMTPUTF8, and Mailpit.

import (
	"fmt"
	"os"
	"regexp"
	"strings"
	"testing"
	"time"

	"github.com/smarthost/smarthost/relay/relaytest"
)

// postfixUpstream is a Postfix that takes mail only over STARTTLS and only
// from "relay" (Cyrus sasldb2), and delivers pf.test and example.org into
// its maildir.
func postfixUpstream(t *testing.T, extra ...string) *relaytest.Postfix {
	return relaytest.StartPostfix(t, relaytest.PostfixOptions{
		Listen:    true,
		TLS:       true,
		SASLUsers: map[string]string{"relay": "relay-pw"},
		Mailboxes: []string{"pf.test", "example.org", "example.com"},
		Main: append([]string{
			"myhostname = upstream.test",
			"smtputf8_enable = yes",
			"smtpd_tls_security_level = encrypt",
			"smtpd_tls_auth_only = yes",
			"smtpd_relay_restrictions = permit_sasl_authenticated, reject",
			"smtpd_recipient_restrictions = permit_sasl_authenticated, reject",
		}, extra...),
	})
}

func postfixUpstreamYAML(name string, p *relaytest.Postfix) string {
	return fmt.Sprintf("  - {name: %s, url: \"smtp://%s\", tls: required, ca_file: %q, username: relay, password: relay-pw, timeout: 10s}\n",
		name, p.Addr, p.Dir+"/conf/cert.pem")
}

// The case: a UTF-8 sender and recipient through a Postfix null
// client, the relay, and a Postfix upstream with DSN and SMTPUTF8: the
// message arrives within seconds, with SMTPUTF8 on the upstream's MAIL and
// the original recipient as ORCPT=utf-8, signed.
func TestUTF8ThroughPostfixes(t *testing.T) {
	up := postfixUpstream(t)
	e := newRelayEnv(t, envOpts{upstreams: "upstreams:\n" + postfixUpstreamYAML("postfix", up)})
	p := e.start(t)
	nc := nullClient(t, e.starttls)
	start := time.Now()
	if err := nc.Sendmail("zoë@example.com", []string{"zoë@pf.test"},
		"From: Zoë <zoë@example.com>\nTo: zoë@pf.test\nSubject: héllo\n\nthrough three servers\n"); err != nil {
		t.Fatal(err)
	}
	var box [][]byte
	relaytest.Eventually(t, "the message in the upstream's mailbox", 20*time.Second, func() bool {
		box = up.Mailbox()
		return len(box) == 1
	})
	t.Logf("arrived in %s", time.Since(start).Round(time.Millisecond))
	log := up.Log()
	for _, re := range []string{
		`< localhost\[127\.0\.0\.1\]: STARTTLS`,
		`< localhost\[127\.0\.0\.1\]: AUTH PLAIN `,
		`< localhost\[127\.0\.0\.1\]: MAIL FROM:<zoë@example\.com> .*SIZE=\d+ SMTPUTF8`,
		`(?i)< localhost\[127\.0\.0\.1\]: RCPT TO:<zoë@pf\.test> ORCPT=utf-8;zoë@pf\.test`,
	} {
		if !regexp.MustCompile(re).MatchString(log) {
			t.Errorf("the upstream's log lacks %s", re)
		}
	}
	if !strings.Contains(string(box[0]), "through three servers") {
		t.Errorf("mailbox:\n%s", box[0])
	}
	// Postfix adds its Return-Path: and Delivered-To: fields above ours;
	// the signatures cover what we sent.
	dkimVerify(t, e.records, box[0])
	checkQueuedAs(t, p, up)
}

// checkQueuedAs checks the delivery line of the one message: it has the
// upstream's reply as Postfix sent it, with the queue ID Postfix gave the
// message (its log names it), as Postfix's own status=sent lines do.
func checkQueuedAs(t *testing.T, p *proc, up *relaytest.Postfix) {
	t.Helper()
	var lines logRecords
	relaytest.Eventually(t, "the delivery line", 10*time.Second, func() bool {
		lines = p.records().with("msg", "delivered")
		return len(lines) == 1
	})
	m := regexp.MustCompile(`^250 2\.0\.0 Ok: (?:[0-9]+ bytes )?queued as ([0-9A-Za-z]+)$`).FindStringSubmatch(lines[0]["reply"])
	if m == nil || lines[0]["upstream"] != "postfix" || lines[0]["dsn"] != "2.0.0" || lines[0]["upstream_addr"] != up.Addr || !strings.HasPrefix(lines[0]["tls"], "TLSv1.") {
		t.Fatalf("the delivery line: %v", lines[0])
	}
	if !strings.Contains(up.Log(), " "+m[1]+": ") {
		t.Errorf("the upstream's log never names its queue ID %s", m[1])
	}
}

// The same message to an upstream without SMTPUTF8 is bounced at once with
// 5.6.7, not retried for days; the bounce goes to the sender through the
// route that can carry it, and nothing stays in the queue.
func TestNoSMTPUTF8UpstreamBouncesAtOnce(t *testing.T) {
	plain := postfixUpstream(t, "smtputf8_enable = no")
	bounces, err := relaytest.NewSink(relaytest.SinkOptions{Addr: freePort(t), SMTPUTF8: true})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(bounces.Close)
	e := newRelayEnv(t, envOpts{upstreams: "upstreams:\n" + postfixUpstreamYAML("nosmtputf8", plain) +
		fmt.Sprintf("  - {name: sink, url: \"smtp://%s\", tls: none, timeout: 5s}\n", bounces.Addr) +
		"routes:\n  - {match: {recipient_domains: [pf.test]}, upstreams: [nosmtputf8]}\n  - {upstreams: [sink]}\n"})
	e.start(t)
	out := pySMTP(t, e.starttls, `
s = smtplib.SMTP(HOST, PORT)
s.starttls(context=CTX)
s.login("zoe", "zoe-pw")
msg = "From: Zoë <zoë@example.com>\r\nTo: zoë@pf.test\r\nSubject: héllo\r\n\r\nno SMTPUTF8 on the way\r\n".encode()
print(s.sendmail("zoë@example.com", ["zoë@pf.test"], msg, mail_options=["SMTPUTF8"]))
s.quit()
`)
	if !strings.Contains(out, "{}") {
		t.Fatalf("smtplib: %s", out)
	}
	got := bounces.Wait(1, 15*time.Second)
	if len(got) != 1 || got[0].From != "" || got[0].To[0] != "zoë@example.com" || !got[0].UTF8 {
		t.Fatalf("bounce sink got %d messages, the first: %+v", len(got), got[0].Envelope())
	}
	dsn := string(got[0].Data)
	for _, want := range []string{"Status: 5.6.7", "SMTPUTF8 required but not offered", "Final-Recipient: utf-8; zoë@pf.test"} {
		if !strings.Contains(dsn, want) {
			t.Errorf("bounce lacks %q:\n%s", want, dsn)
		}
	}
	relaytest.Eventually(t, "an empty queue", 10*time.Second, func() bool { return queueCount(t, e) == 0 })
	if strings.Contains(plain.Log(), "MAIL FROM:<zoë") {
		t.Error("the upstream without SMTPUTF8 was sent the message")
	}
}

// Mailpit as the upstream: the message is there, by its HTTP API, with both
// DKIM signatures, and they verify.
func TestMailpitUpstream(t *testing.T) {
	mp := relaytest.StartMailpit(t)
	e := newRelayEnv(t, envOpts{upstream: "smtp://" + mp.SMTP})
	e.start(t)
	out, code := swaks(t, "--server", e.starttls, "--tls", "--auth-user", "alice", "--auth-password", "alice-pw",
		"--from", "alice@example.com", "--to", "bob@example.org", "--h-From", "Alice <alice@example.com>", "--h-Subject", "to mailpit")
	if code != 0 {
		t.Fatalf("swaks exit %d:\n%s", code, out)
	}
	var msgs []relaytest.MailpitMessage
	relaytest.Eventually(t, "the message in Mailpit", 15*time.Second, func() bool {
		msgs, _ = mp.Messages()
		return len(msgs) == 1
	})
	if msgs[0].Subject != "to mailpit" || msgs[0].From.Address != "alice@example.com" {
		t.Errorf("Mailpit lists %+v", msgs[0])
	}
	raw, err := mp.Raw(msgs[0].ID)
	if err != nil {
		t.Fatal(err)
	}
	if n := strings.Count(string(raw), "DKIM-Signature: "); n != 2 {
		t.Errorf("%d DKIM-Signature fields, want 2:\n%s", n, raw)
	}
	dkimVerify(t, e.records, raw)
}

// An operator who has fixed the upstream asks for every deferred message
// now (`queue retry --all`, Postfix's `postqueue -f`) instead of waiting out
// the retry schedule: Mailpit refuses with 451 until then.
func TestQueueRetryAll(t *testing.T) {
	mp := relaytest.StartMailpit(t)
	if err := mp.Chaos(`{"Sender": {"ErrorCode": 451, "Probability": 100}}`); err != nil {
		t.Fatal(err)
	}
	e := newRelayEnv(t, envOpts{upstream: "smtp://" + mp.SMTP})
	text, _ := os.ReadFile(e.config)
	os.WriteFile(e.config, []byte(strings.Replace(string(text), "retry: [200ms]", "retry: [1h]", 1)), 0o600)
	e.start(t)
	for i := range 3 {
		if s := submit(e.implicit, "bob@example.org", bodyOf(i, "retry-all")); s.err != nil {
			t.Fatalf("message %d: %v", i, s.err)
		}
	}
	relaytest.Eventually(t, "three messages deferred", 30*time.Second, func() bool {
		out, _ := runCLI("queue", "list", "--config", e.config)
		return strings.Count(out, "Chaos sender error") == 3
	})
	if err := mp.Chaos(`{}`); err != nil {
		t.Fatal(err)
	}
	out, err := runCLI("queue", "retry", "--all", "--config", e.config)
	if err != nil || counts(t, out, `retry requested for (\d+) message\(s\)`)[0] != 3 {
		t.Fatalf("queue retry --all: %v\n%s", err, out)
	}
	// The next attempt is an hour away: only the request brings them.
	relaytest.Eventually(t, "the three in Mailpit", 30*time.Second, func() bool {
		msgs, _ := mp.Messages()
		return len(msgs) == 3
	})
	if out, err := runCLI("queue", "retry", "--all", "extra", "--config", e.config); exitCode(err) != 2 {
		t.Errorf("queue retry --all with an ID: exit %d\n%s", exitCode(err), out)
	}
}
