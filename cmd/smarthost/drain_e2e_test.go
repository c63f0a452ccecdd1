package main

import (
	"fmt"
	"strings"
	"syscall"
	"testing"
	"time"

	"golang.org/x/crypto/bcrypt"

	"github.com/smarthost/smarthost/relay/relaytest"
)

// peerUser is a users.yaml entry for the account a draining relay hands
// its queue to.
func peerUser(t *testing.T) string {
	h, err := bcrypt.GenerateFromPassword([]byte("peer-pw"), bcrypt.MinCost)
	if err != nil {
		t.Fatal(err)
	}
	return fmt.Sprintf("  peer:\n    password_hash: %q\n    addresses: []\n    relay_peer: true\n", h)
}

// A node that leaves hands its queue over: with the upstream down, relay A
// holds 100 messages; `smarthost drain` makes A pass them to B and exit 0;
// once the upstream is back B delivers every one, exactly once (counted
// once B's queue is empty and the upstream has been quiet), still with A's
// signatures only.
func TestDrainHandsOffTheQueue(t *testing.T) {
	upAddr := freePort(t) // nothing listens yet: the upstream is down
	b := newRelayEnv(t, envOpts{upstream: "smtp://" + upAddr, users: peerUser(t)})
	bp := b.start(t)
	metricsA := freePort(t)
	a := newRelayEnv(t, envOpts{
		upstreams: fmt.Sprintf("upstreams:\n  - {name: up, url: %q, tls: none, timeout: 5s}\n"+
			"  - {name: relay-b, url: \"smtp://%s\", tls: required, tls_verify: false, username: peer, password: peer-pw, timeout: 5s}\n"+
			"routes:\n  - {upstreams: [up]}\n", "smtp://"+upAddr, b.starttls),
		queue: "  handoff: {upstreams: [relay-b]}",
		extra: fmt.Sprintf("metrics: {listen: %q}\n", metricsA),
	})
	ap := a.start(t)

	const n = 100
	out := pySMTP(t, a.starttls, fmt.Sprintf(`
s = smtplib.SMTP(HOST, PORT)
s.starttls(context=CTX)
s.login("alice", "alice-pw")
for i in range(%d):
    msg = "From: alice@example.com\r\nTo: bob@example.org\r\nSubject: handoff %%d\r\nMessage-ID: <handoff-%%d@example.com>\r\n\r\nbody\r\n" %% (i, i)
    s.sendmail("alice@example.com", ["bob@example.org"], msg, rcpt_options=["NOTIFY=FAILURE,DELAY"])
print("sent")
s.quit()
`, n))
	if !strings.Contains(out, "sent") {
		t.Fatalf("submitting: %s", out)
	}
	if k := queueCount(t, a); k != n {
		t.Fatalf("A holds %d messages, want %d", k, n)
	}

	out, err := runCLI("drain", "--config", a.config, "--timeout", "60s")
	if err != nil || !strings.Contains(out, "drained") {
		t.Fatalf("drain: %v\n%s", err, out)
	}
	if code := ap.wait(t, 20*time.Second); code != 0 {
		t.Fatalf("A exited %d after the drain, want 0", code)
	}
	if k := queueCount(t, a); k != 0 {
		t.Fatalf("A's spool holds %d messages after the drain", k)
	}
	if k := queueCount(t, b); k != n {
		t.Fatalf("B holds %d messages, want %d", k, n)
	}

	up, err := relaytest.NewSink(relaytest.SinkOptions{Addr: upAddr})
	if err != nil {
		t.Fatal(err)
	}
	defer up.Close()
	msgs := up.Settled(t, relaytest.Quiet, 90*time.Second, func() bool { return queueCount(t, b) == 0 })
	var want []string
	for i := range n {
		want = append(want, fmt.Sprintf("<handoff-%d@example.com>", i))
	}
	relaytest.ExactlyOnce(t, msgs, relaytest.Header("Message-Id"), want)
	for _, m := range msgs {
		if m.From != "alice@example.com" || len(m.To) != 1 || m.Notify["bob@example.org"] != "FAILURE,DELAY" {
			t.Errorf("envelope changed on the way: %+v", m.Envelope())
		}
		if k := strings.Count(string(m.Data), "DKIM-Signature: "); k != 2 {
			t.Errorf("%d signatures, want A's 2 only", k)
		}
	}
	dkimVerify(t, a.records, msgs[0].Data)
	_ = bp
}

// The same for a node that is gone: its spool, handed over by `smarthost
// queue handoff` (to the upstream --to names), is empty after, and the
// peer has every message.
func TestQueueHandoffOfStoppedNode(t *testing.T) {
	upAddr := freePort(t)
	b := newRelayEnv(t, envOpts{upstream: "smtp://" + upAddr, users: peerUser(t)})
	b.start(t)
	a := newRelayEnv(t, envOpts{
		upstreams: fmt.Sprintf("upstreams:\n  - {name: up, url: %q, tls: none, timeout: 5s}\n"+
			"  - {name: relay-b, url: \"smtp://%s\", tls: required, tls_verify: false, username: peer, password: peer-pw, timeout: 5s}\n"+
			"routes:\n  - {upstreams: [up]}\n", "smtp://"+upAddr, b.starttls),
	})
	ap := a.start(t)
	pySMTP(t, a.starttls, `
s = smtplib.SMTP(HOST, PORT)
s.starttls(context=CTX)
s.login("alice", "alice-pw")
for i in range(10):
    s.sendmail("alice@example.com", ["bob@example.org"], "From: alice@example.com\r\nSubject: %d\r\n\r\nx\r\n" % i)
s.quit()
`)
	ap.signal(t, syscall.SIGTERM)
	if code := ap.wait(t, 30*time.Second); code != 0 {
		t.Fatalf("A exited %d", code)
	}
	// Without queue.handoff and without --to there is nobody to hand to.
	if out, err := runCLI("queue", "handoff", "--config", a.config); exitCode(err) != 2 {
		t.Errorf("handoff without peers: exit %d\n%s", exitCode(err), out)
	}
	out, err := runCLI("queue", "handoff", "--config", a.config, "--to", "relay-b", "--timeout", "60s")
	if err != nil {
		t.Fatalf("queue handoff: %v\n%s", err, out)
	}
	if c := counts(t, out, `(\d+) message\(s\) handed off, (\d+) left`); c[0] != 10 || c[1] != 0 {
		t.Fatalf("queue handoff: %d handed off, %d left; want 10 and 0", c[0], c[1])
	}
	if k := queueCount(t, a); k != 0 {
		t.Fatalf("A's spool holds %d after the handoff", k)
	}
	// A's history has each message taken by relay-b, as its relay would.
	if out, err := runCLI("trace", "bob@example.org", "--json", "--config", a.config); err != nil || strings.Count(out, `"upstream":"relay-b"`) != 10 {
		t.Errorf("A's history after the handoff: %v; %d deliveries to relay-b, want 10:\n%s", err, strings.Count(out, `"upstream":"relay-b"`), out)
	}
	// B acknowledged each before the handoff went on, and its upstream is
	// down: it holds all 10, and no more.
	if k := queueCount(t, b); k != 10 {
		t.Fatalf("B holds %d messages, want the 10 handed to it", k)
	}
}

// A node that must leave while its upstream tarpits: each attempt in
// flight would wait out the upstream's timeout (5 minutes, the default
// here). The drain cuts them short and hands their messages over with the
// rest, so it ends well within its --timeout, and the peer delivers every
// one exactly once (the tarpit never took any), counted once B's queue is
// empty and the sink has been quiet.
func TestDrainCutsShortATarpit(t *testing.T) {
	sink, err := relaytest.NewSink(relaytest.SinkOptions{Addr: freePort(t)})
	if err != nil {
		t.Fatal(err)
	}
	defer sink.Close()
	b := newRelayEnv(t, envOpts{upstream: "smtp://" + sink.Addr, users: peerUser(t)})
	b.start(t)
	tp := startTarpit(t)
	metricsA := freePort(t)
	a := newRelayEnv(t, envOpts{
		upstreams: fmt.Sprintf("upstreams:\n  - {name: up, url: \"smtp://%s\", tls: none}\n"+
			"  - {name: relay-b, url: \"smtp://%s\", tls: required, tls_verify: false, username: peer, password: peer-pw, timeout: 5s}\n"+
			"routes:\n  - {upstreams: [up]}\n", tp.addr, b.starttls),
		queue:   "  handoff: {upstreams: [relay-b]}",
		extra:   fmt.Sprintf("metrics: {listen: %q}\n", metricsA),
		workers: 8, // one for each message, and more
	})
	ap := a.start(t)
	const n = 5
	for i := range n {
		if s := submit(a.implicit, "bob@example.org", bodyOf(i, "tarpit-drain")); s.err != nil {
			t.Fatalf("message %d: %v", i, s.err)
		}
	}
	relaytest.Eventually(t, "deliveries held by the tarpit", 20*time.Second, func() bool { return tp.holding() == n })
	out, err := runCLI("drain", "--config", a.config, "--timeout", "20s")
	if err != nil || !strings.Contains(out, "drained") {
		t.Fatalf("drain with deliveries stuck at a tarpit: %v\n%s", err, out)
	}
	if code := ap.wait(t, 20*time.Second); code != 0 {
		t.Fatalf("A exited %d after the drain, want 0", code)
	}
	got := sink.Settled(t, relaytest.Quiet, 60*time.Second, func() bool { return queueCount(t, b) == 0 })
	var want []string
	for i := range n {
		want = append(want, fmt.Sprintf("tarpit-drain %d", i))
	}
	relaytest.ExactlyOnce(t, got, relaytest.Header("Subject"), want)
}
