package main

import (
	"encoding/json"
	"fmt"
	"os/exec"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/smarthost/smarthost/relay/history"
	"github.com/smarthost/smarthost/relay/queue"
	"github.com/smarthost/smarthost/relay/relaytest"
)

// traceEnv is a relay in front of a sink, with its admin listener on.
func traceEnv(t *testing.T) (*relayEnv, *relaytest.Sink) {
	up := sink(t, "127.0.0.1:0")
	e := newRelayEnv(t, envOpts{upstream: "smtp://" + up.Addr, extra: fmt.Sprintf("metrics: {listen: %q}\n", freePort(t))})
	return e, up
}

// sendAs sends a message with Message-ID id from alice to rcpts.
func sendAs(t *testing.T, e *relayEnv, id string, rcpts ...string) {
	t.Helper()
	c := aliceSession(t, e.implicit)
	msg := "From: alice@example.com\r\nTo: " + rcpts[0] + "\r\nMessage-ID: " + id + "\r\nSubject: trace\r\n\r\nbody\r\n"
	if err := c.SendMail("alice@example.com", rcpts, strings.NewReader(msg)); err != nil {
		t.Fatal(err)
	}
}

// traceJSON is `smarthost trace QUERY --json`'s stories.
func traceJSON(t *testing.T, e *relayEnv, query string) []history.Story {
	t.Helper()
	out, err := exec.Command(binary, "trace", query, "--json", "--config", e.config).Output()
	if err != nil && exitCode(err) != 1 {
		t.Fatalf("trace: %v", err)
	}
	var stories []history.Story
	dec := json.NewDecoder(strings.NewReader(string(out)))
	for dec.More() {
		var s history.Story
		if err := dec.Decode(&s); err != nil {
			t.Fatalf("trace --json: %v\n%s", err, out)
		}
		stories = append(stories, s)
	}
	return stories
}

// kinds is the kinds of the events of the stories, each once.
func kinds(stories []history.Story) map[string]bool {
	k := map[string]bool{}
	for _, s := range stories {
		for _, e := range s.Events {
			k[e.Kind] = true
		}
	}
	return k
}

// `smarthost trace` tells a message's story by its Message-ID, from
// acceptance through signing to the upstream's reply as sent (with its
// DSN status for the refused recipient, and the notification to the
// sender), once it has left the queue, while the relay is stopped and
// after it has started again.
func TestTraceByMessageID(t *testing.T) {
	e, up := traceEnv(t)
	up.FailRcpt("refused@dest.test", relaytest.ErrPerm)
	p := e.start(t)
	sendAs(t, e, "<cli-trace@example.com>", "ok@dest.test", "refused@dest.test")
	relaytest.Eventually(t, "delivered, bounced and the notification sent", 20*time.Second, func() bool {
		k := kinds(traceJSON(t, e, "<cli-trace@example.com>"))
		return k[queue.EventDelivered] && k[queue.EventBounced] && k[queue.EventDSN] && queueCount(t, e) == 0
	})
	p.signal(t, syscall.SIGTERM)
	if code := p.wait(t, 40*time.Second); code != 0 {
		t.Fatalf("exit %d after SIGTERM", code)
	}
	stopped, err := runCLI("trace", "cli-trace@example.com", "--since", "1h", "--config", e.config)
	if err != nil {
		t.Fatalf("trace with the relay stopped: %v\n%s", err, stopped)
	}
	e.start(t)
	out, err := runCLI("trace", "<cli-trace@example.com>", "--config", e.config)
	if err != nil {
		t.Fatalf("trace after the restart: %v\n%s", err, out)
	}
	for _, want := range []string{"<cli-trace@example.com>  from <alice@example.com>  user alice", " accepted ", " signed ", "dkim=example.com/e2e",
		"delivered  to=<ok@dest.test> upstream=up[", "dsn=2.0.0 (250 2.0.0 OK: queued)",
		"bounced    to=<refused@dest.test>", "dsn=5.1.1 reason=refused (550 5.1.1 no such user)", " dsn ", "notification="} {
		if !strings.Contains(out, want) {
			t.Errorf("trace lacks %q:\n%s", want, out)
		}
	}
	if stopped != out {
		t.Errorf("the trace changed across the restart:\n%s\nthen:\n%s", stopped, out)
	}
	if out, err := runCLI("trace", "<nobody@example.com>", "--config", e.config); exitCode(err) != 1 || !strings.Contains(out, "no message found") {
		t.Errorf("trace of nothing: exit %d\n%s", exitCode(err), out)
	}
}

// queued is `smarthost queue list --json` with args, by Message-ID.
func queued(t *testing.T, e *relayEnv, args ...string) map[string]queue.Queued {
	t.Helper()
	out, err := exec.Command(binary, append([]string{"queue", "list", "--json", "--config", e.config}, args...)...).Output()
	if err != nil {
		t.Fatalf("queue list --json %v: %v", args, err)
	}
	got := map[string]queue.Queued{}
	dec := json.NewDecoder(strings.NewReader(string(out)))
	for dec.More() {
		var m queue.Queued
		if err := dec.Decode(&m); err != nil {
			t.Fatalf("queue list --json: %v\n%s", err, out)
		}
		got[m.MessageID] = m
	}
	return got
}

// runWith runs the command with input on its standard input.
func runWith(input string, args ...string) (string, error) {
	cmd := exec.Command(binary, args...)
	cmd.Stdin = strings.NewReader(input)
	out, err := cmd.CombinedOutput()
	return string(out), err
}

// mustSay runs the command and fails unless it exits code and says want.
func mustSay(t *testing.T, code int, want, input string, args ...string) {
	t.Helper()
	out, err := runWith(input, args...)
	if exitCode(err) != code || !strings.Contains(out, want) {
		t.Fatalf("%v: exit %d, want %d and %q:\n%s", args, exitCode(err), code, want, out)
	}
}

// waitDeferred waits until the message id is deferred in the queue.
func waitDeferred(t *testing.T, e *relayEnv, id string) queue.Queued {
	t.Helper()
	var m queue.Queued
	relaytest.Eventually(t, id+" deferred", 20*time.Second, func() bool {
		var ok bool
		m, ok = queued(t, e, "--state", "deferred")[id]
		return ok
	})
	return m
}

// Postfix's everyday queue tools: a held message is not attempted while
// another, deferred alongside it, goes out; released it goes; delete by
// filter says how many and asks; bounce returns a message with a DSN;
// and with no relay running, hold works on the spool. The history
// records each act.
func TestQueueHoldReleaseDeleteBounce(t *testing.T) {
	e, up := traceEnv(t)
	up.FailRcpt("slow@dest.test", relaytest.ErrTemp)
	up.FailRcpt("wait@other.test", relaytest.ErrTemp)
	p := e.start(t)
	sendAs(t, e, "<held@example.com>", "slow@dest.test")
	sendAs(t, e, "<other@example.com>", "wait@other.test")
	waitDeferred(t, e, "<other@example.com>")
	held := waitDeferred(t, e, "<held@example.com>")
	mustSay(t, 0, "1 message(s) held", "", "queue", "hold", "--to", "@dest.test", "--config", e.config)
	if got := queued(t, e, "--state", "held"); len(got) != 1 || got["<held@example.com>"].ID != held.ID {
		t.Fatalf("held: %+v", got)
	}
	up.FailRcpt("slow@dest.test", nil)
	up.FailRcpt("wait@other.test", nil)
	relaytest.Eventually(t, "the message not held delivered", 20*time.Second, func() bool { return queueCount(t, e) == 1 })
	if m := queued(t, e, "--state", "held")["<held@example.com>"]; m.Attempts > held.Attempts+1 || len(up.Messages()) != 1 {
		t.Fatalf("the held message was attempted: %d attempts, %d before; the sink has %d", m.Attempts, held.Attempts, len(up.Messages()))
	}
	mustSay(t, 0, held.ID+": released", "", "queue", "release", held.ID, "--config", e.config)
	up.Wait(2, 20*time.Second)
	relaytest.Eventually(t, "the released message delivered", 20*time.Second, func() bool { return queueCount(t, e) == 0 })

	up.FailRcpt("slow@dest.test", relaytest.ErrTemp)
	sendAs(t, e, "<deleted@example.com>", "slow@dest.test")
	sendAs(t, e, "<bounced@example.com>", "slow@dest.test")
	waitDeferred(t, e, "<deleted@example.com>")
	bounced := waitDeferred(t, e, "<bounced@example.com>")
	mustSay(t, 0, "1 message(s) bounced", "", "queue", "bounce", bounced.ID, "--config", e.config)
	mustSay(t, 1, "delete 1 message(s)? [y/N] nothing done", "n\n", "queue", "delete", "--to", "slow@dest.test", "--config", e.config)
	mustSay(t, 0, "1 message(s) deleted", "y\n", "queue", "delete", "--to", "slow@dest.test", "--config", e.config)
	checkActsTraced(t, e, up)

	sendAs(t, e, "<offline@example.com>", "slow@dest.test")
	waitDeferred(t, e, "<offline@example.com>")
	p.signal(t, syscall.SIGTERM)
	if code := p.wait(t, 40*time.Second); code != 0 {
		t.Fatalf("exit %d after SIGTERM", code)
	}
	mustSay(t, 0, "1 message(s) held", "", "queue", "hold", "--from", "alice@example.com", "--config", e.config)
	if k := kinds(traceJSON(t, e, "<offline@example.com>")); !k[queue.EventHeld] {
		t.Errorf("the hold of a stopped relay's message is not in its history: %v", k)
	}
	if _, ok := queued(t, e, "--state", "held")["<offline@example.com>"]; !ok {
		t.Error("held on a stopped relay, the message is not held")
	}
}

// checkActsTraced checks that the history has the bounce (with its DSN
// sent to the sender) and the deletion, each with who asked.
func checkActsTraced(t *testing.T, e *relayEnv, up *relaytest.Sink) {
	t.Helper()
	relaytest.Eventually(t, "the DSN of the bounce delivered", 20*time.Second, func() bool {
		for _, m := range up.Messages() {
			if m.From == "" && len(m.To) == 1 && m.To[0] == "alice@example.com" {
				return true
			}
		}
		return false
	})
	// One asked of a message in flight is done as its attempt ends.
	for id, want := range map[string]string{"<bounced@example.com>": queue.EventBounced, "<deleted@example.com>": queue.EventDeleted} {
		relaytest.Eventually(t, id+": a "+want+" event by smarthost queue in its trace", 20*time.Second, func() bool {
			for _, s := range traceJSON(t, e, id) {
				for _, ev := range s.Events {
					if ev.Kind == want && strings.HasPrefix(ev.By, "smarthost queue ") {
						return true
					}
				}
			}
			return false
		})
	}
	relaytest.Eventually(t, "the deleted message gone", 20*time.Second, func() bool { return queueCount(t, e) == 0 })
}
