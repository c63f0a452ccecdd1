package main

import (
	"os"
	"path/filepath"
	"regexp"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/smarthost/smarthost/relay/relaytest"
)

var queuedRe = regexp.MustCompile(`250 2\.0\.0 OK: queued as ([0-9A-F]{20})`)

// The README's flow: swaks over STARTTLS with AUTH, the message lands in the
// file:// outbox, signed, and dkimpy verifies it.
func TestSwaksToOutbox(t *testing.T) {
	e := newRelayEnv(t, envOpts{})
	e.start(t)
	out, code := swaks(t, "--server", e.starttls, "--tls", "--auth", "LOGIN", "--auth-user", "alice", "--auth-password", "alice-pw",
		"--from", "alice@example.com", "--to", "bob@example.org", "--h-From", "Alice <alice@example.com>",
		"--h-Subject", "e2e", "--body", "Hello from swaks.\n.leading dot\n")
	m := queuedRe.FindStringSubmatch(out)
	if code != 0 || m == nil {
		t.Fatalf("swaks exit %d:\n%s", code, out)
	}
	eml := e.outboxMessage(t, m[1])
	s := string(eml)
	for _, want := range []string{"Return-Path: <alice@example.com>\r\n", "X-Envelope-To: <bob@example.org>\r\n",
		"DKIM-Signature: ", "Received: from ", "with ESMTPSA id " + m[1], "Subject: e2e\r\n",
		"\r\n\r\nHello from swaks.\r\n.leading dot\r\n"} {
		if !strings.Contains(s, want) {
			t.Errorf("outbox message lacks %q:\n%s", want, s)
		}
	}
	dkimVerify(t, e.records, eml)
}

// swaks pipelining its transaction (RFC 2920): MAIL, both RCPTs and DATA in
// one go; the replies come back together and the message is queued once.
func TestSwaksPipelining(t *testing.T) {
	e := newRelayEnv(t, envOpts{})
	e.start(t)
	out, code := swaks(t, "--server", e.starttls, "--tls", "--pipeline", "--auth", "PLAIN", "--auth-user", "alice", "--auth-password", "alice-pw",
		"--from", "alice@example.com", "--to", "bob@example.org,carol@example.org", "--h-From", "Alice <alice@example.com>")
	m := queuedRe.FindStringSubmatch(out)
	if code != 0 || m == nil || !strings.Contains(out, "PIPELINING") {
		t.Fatalf("swaks exit %d:\n%s", code, out)
	}
	eml := e.outboxMessage(t, m[1])
	if !strings.Contains(string(eml), "X-Envelope-To: <bob@example.org>, <carol@example.org>\r\n") {
		t.Errorf("envelope recipients missing:\n%s", eml)
	}
	dkimVerify(t, e.records, eml)
}

// Python's smtplib over implicit TLS to a real upstream.
func TestSmtplibImplicitTLSToUpstream(t *testing.T) {
	up := sink(t, freePort(t))
	e := newRelayEnv(t, envOpts{upstream: "smtp://" + up.Addr})
	e.start(t)
	out := pySMTP(t, e.implicit, `
s = smtplib.SMTP_SSL(HOST, PORT, context=CTX)
s.login("alice", "alice-pw")
msg = "From: alice@example.com\r\nTo: a@one.org, b@two.org\r\nSubject: py\r\n\r\nline one\r\nline two\r\n"
print(s.sendmail("x@app.example.com", ["a@one.org", "b@two.org"], msg))
print(s.noop())
s.quit()
`)
	if !strings.Contains(out, "{}") {
		t.Fatalf("sendmail refused recipients: %s", out)
	}
	msgs := up.Wait(1, 10*time.Second)
	if len(msgs) != 1 {
		t.Fatalf("upstream got %d messages", len(msgs))
	}
	got := msgs[0]
	if got.From != "x@app.example.com" || strings.Join(got.To, ",") != "a@one.org,b@two.org" {
		t.Errorf("envelope %s -> %v", got.From, got.To)
	}
	if !strings.HasSuffix(string(got.Data), "\r\n\r\nline one\r\nline two\r\n") || !strings.Contains(string(got.Data), "Message-ID: <") {
		t.Errorf("upstream data:\n%s", got.Data)
	}
	dkimVerify(t, e.records, got.Data)
}

// The contract's refusals, as real clients see them.
func TestRefusalsWithRealClients(t *testing.T) {
	e := newRelayEnv(t, envOpts{})
	e.start(t)

	out, _ := swaks(t, "--server", e.starttls, "--tls", "--from", "alice@example.com", "--to", "b@example.org")
	if !strings.Contains(out, "530 5.7.0 Authentication required") {
		t.Errorf("no AUTH:\n%s", out)
	}
	out, _ = swaks(t, "--server", e.starttls, "--auth", "PLAIN", "--auth-user", "alice", "--auth-password", "alice-pw",
		"--from", "alice@example.com", "--to", "b@example.org")
	if strings.Contains(out, "235 ") || strings.Contains(out, "250 2.0.0 OK") {
		t.Errorf("AUTH without TLS succeeded:\n%s", out)
	}
	out, _ = swaks(t, "--server", e.starttls, "--tls", "--auth", "PLAIN", "--auth-user", "alice", "--auth-password", "wrong",
		"--from", "alice@example.com", "--to", "b@example.org")
	if !strings.Contains(out, "535 5.7.8 Authentication credentials invalid") {
		t.Errorf("bad password:\n%s", out)
	}
	out, _ = swaks(t, "--server", e.starttls, "--tls", "--auth", "PLAIN", "--auth-user", "alice", "--auth-password", "alice-pw",
		"--from", "ceo@example.com", "--to", "b@example.org")
	if !strings.Contains(out, "553 5.7.1 Sender address rejected: not owned by user") {
		t.Errorf("foreign sender:\n%s", out)
	}
	out, _ = swaks(t, "--server", e.starttls, "--tls", "--auth", "PLAIN", "--auth-user", "alice", "--auth-password", "alice-pw",
		"--from", "alice@example.com", "--to", "b@example.org", "--h-From", "ceo@example.com")
	if !strings.Contains(out, "550 5.7.1 ") {
		t.Errorf("foreign From header:\n%s", out)
	}

	res := pySMTP(t, e.starttls, `
def attempt(name, f):
    s = smtplib.SMTP(HOST, PORT)
    s.starttls(context=CTX)
    s.login("alice", "alice-pw")
    try:
        print(name, f(s))
    except smtplib.SMTPResponseException as e:
        print(name, e.smtp_code, e.smtp_error.decode())
    except smtplib.SMTPRecipientsRefused as e:
        print(name, list(e.recipients.values())[0][0])
    finally:
        s.close()

def size(s):
    return s.mail("alice@example.com", ["SIZE=10000000"])

def rcpts(s):
    s.mail("alice@example.com")
    for r in ["a@x.org", "b@x.org", "c@x.org"]:
        s.rcpt(r)
    return s.rcpt("d@x.org")

def big(s):
    return s.sendmail("alice@example.com", ["a@x.org"], "From: alice@example.com\r\n\r\n" + "x" * 70 + "\r\n" * 1 + ("y" * 998 + "\r\n") * 80)

attempt("size", size)
attempt("rcpts", rcpts)
attempt("big", big)
`)
	for _, want := range []string{"size (552, b'5.3.4", "rcpts (452, b'4.5.3", "big 552 5.3.4"} {
		if !strings.Contains(res, want) {
			t.Errorf("want %q in:\n%s", want, res)
		}
	}
	if ents, _ := os.ReadDir(e.outbox); len(ents) != 0 {
		t.Errorf("refused mail reached the outbox: %v", ents)
	}
}

// Upstream down: the message waits in the queue (visible to `queue list`),
// then arrives once the upstream is up, with nothing lost.
func TestUpstreamDownThenUp(t *testing.T) {
	addr := freePort(t)
	e := newRelayEnv(t, envOpts{upstream: "smtp://" + addr})
	p := e.start(t)
	out, code := swaks(t, "--server", e.implicit, "--tls-on-connect", "--auth", "PLAIN", "--auth-user", "alice", "--auth-password", "alice-pw",
		"--from", "alice@example.com", "--to", "b@example.org", "--h-From", "alice@example.com", "--h-Subject", "patience")
	m := queuedRe.FindStringSubmatch(out)
	if code != 0 || m == nil {
		t.Fatalf("swaks exit %d:\n%s", code, out)
	}
	relaytest.Eventually(t, "a failed attempt", 10*time.Second, func() bool {
		return len(p.records().with("msg", "delivery deferred").of([]string{m[1]})) > 0
	})
	list, err := runCLI("queue", "list", "--config", e.config)
	if err != nil || !strings.Contains(list, m[1]) || !strings.Contains(list, "b@example.org") {
		t.Fatalf("queue list: %v\n%s", err, list)
	}
	up := sink(t, addr)
	msgs := up.Wait(1, 15*time.Second)
	if len(msgs) != 1 || !strings.Contains(string(msgs[0].Data), "Subject: patience") || !strings.Contains(string(msgs[0].Data), "id "+m[1]) {
		t.Fatalf("upstream got %d messages: %+v", len(msgs), msgs)
	}
	relaytest.Eventually(t, "an empty queue", 10*time.Second, func() bool { return queueCount(t, e) == 0 })
}

// SIGKILL in the middle of a burst: every acknowledged message arrives after
// a restart; at most the ones in flight arrive twice.
func TestSIGKILLDuringBurst(t *testing.T) {
	addr := freePort(t)
	up := sink(t, addr)
	e := newRelayEnv(t, envOpts{upstream: "smtp://" + addr, workers: 2})
	p := e.start(t)
	acks := filepath.Join(e.dir, "acks")

	done := make(chan string, 1)
	go func() {
		// The client writes each queue ID as soon as it is acknowledged;
		// it dies with the server, which is the point.
		out, _ := pyBurst(e.implicit, acks, 200)
		done <- out
	}()
	relaytest.Eventually(t, "80 acknowledgements", 60*time.Second, func() bool {
		select {
		case out := <-done:
			t.Fatalf("the client stopped before 80 acknowledgements:\n%s", out)
		default:
		}
		b, _ := os.ReadFile(acks)
		return len(strings.Fields(string(b))) >= 80
	})
	p.signal(t, syscall.SIGKILL)
	p.wait(t, 10*time.Second)
	<-done
	b, _ := os.ReadFile(acks)
	acked := strings.Fields(string(b))

	e.start(t)
	// Counted once the queue is empty and the upstream has been quiet: a
	// copy sent again late is counted too.
	up.Settled(t, relaytest.Quiet, 90*time.Second, func() bool { return queueCount(t, e) == 0 })
	arrived := map[string]int{}
	for _, m := range up.Messages() {
		if id := regexp.MustCompile(`with ESMTPSA id ([0-9A-F]{20})`).FindStringSubmatch(string(m.Data)); id != nil {
			arrived[id[1]]++
		}
	}
	for _, id := range acked {
		if arrived[id] == 0 {
			t.Errorf("acknowledged message %s never arrived", id)
		}
	}
	dups := 0
	for _, n := range arrived {
		dups += n - 1
	}
	if dups > 2 {
		t.Errorf("%d duplicates; at most the 2 in flight may repeat", dups)
	}
	t.Logf("%d acknowledged before SIGKILL, %d distinct arrived, %d duplicates (at most 2)", len(acked), len(arrived), dups)
}

func pyBurst(addr, acks string, n int) (string, error) {
	host, port, _ := strings.Cut(addr, ":")
	script := `
import smtplib, ssl, sys
ctx = ssl.create_default_context(); ctx.check_hostname = False; ctx.verify_mode = ssl.CERT_NONE
acks = open(sys.argv[3], "a")
s = None
for i in range(int(sys.argv[4])):
    if s is None or i % 20 == 0:
        if s is not None:
            s.quit()
        s = smtplib.SMTP_SSL(sys.argv[1], int(sys.argv[2]), context=ctx, timeout=20)
        s.login("alice", "alice-pw")
    s.mail("alice@example.com")
    s.rcpt("bulk@example.org")
    code, resp = s.data("From: alice@example.com\r\nSubject: burst %d\r\n\r\n%s" % (i, ("z" * 98 + "\r\n") * 20))
    if code == 250:
        acks.write(resp.decode().rsplit(" ", 1)[1] + "\n"); acks.flush()
`
	out, err := execCommand(python, "-c", script, host, port, acks, fmtInt(n))
	return out, err
}
