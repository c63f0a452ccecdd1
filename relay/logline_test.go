package relay

import (
	"encoding/json"
	"fmt"
	"testing"

	"github.com/smarthost/smarthost/policy"
)

func jsonNumber(n any) json.Number { return json.Number(fmt.Sprint(n)) }

// A refusal is logged with each key once, the user, and the addresses as
// the client gave them: a refused sender too, which is not the
// transaction's.
func TestRejectedLine(t *testing.T) {
	e := newEnv(t, testOpts{})
	c := e.client(t, "alice", "alice-pw")
	wantReply(t, c.Mail("mallory@evil.example", nil), 553, "5.7.1", "")
	lines := e.logs.Lines(t, "rejected")
	if len(lines) == 0 {
		t.Fatal("no rejected line")
	}
	l := lines[0]
	if l["from"] != "mallory@evil.example" || l["user"] != "alice" || l["cmd"] != "MAIL" || l["code"] != jsonNumber(553) || l["enhanced"] != "5.7.1" {
		t.Errorf("rejected line %v: want the refused sender as given, the user, MAIL, 553 5.7.1", l)
	}
	if _, ok := l["rcpt"]; ok {
		t.Errorf("a MAIL refusal names a recipient: %v", l)
	}
}

// A recipient refused at RCPT is named as given, beside the accepted
// sender.
func TestRejectedRecipientLine(t *testing.T) {
	e := newEnv(t, testOpts{policy: policy.Config{EnforceHeaderFrom: true, AllowedRecipientDomains: []string{"example.org"}}})
	c := e.client(t, "alice", "alice-pw")
	if err := c.Mail("alice@example.com", nil); err != nil {
		t.Fatal(err)
	}
	wantReply(t, c.Rcpt("Someone@Elsewhere.example", nil), 554, "5.7.1", "")
	lines := e.logs.Lines(t, "rejected")
	if len(lines) != 1 || lines[0]["rcpt"] != "Someone@Elsewhere.example" || lines[0]["from"] != "alice@example.com" || lines[0]["cmd"] != "RCPT" {
		t.Fatalf("rejected lines %v: want one naming the recipient as given", lines)
	}
}

// The queued line has what finds the message again: the queue ID, the
// Message-ID, the user, the client's address, the size and the number of
// recipients.
func TestQueuedLine(t *testing.T) {
	e := newEnv(t, testOpts{})
	c := e.client(t, "alice", "alice-pw")
	msg := "From: alice@example.com\r\nMessage-ID: <reset-42@app.example.com>\r\n\r\nbody\r\n"
	if err := send(c, "alice@example.com", []string{"bob@example.org", "carol@example.org"}, msg); err != nil {
		t.Fatal(err)
	}
	ms := e.queued(t)
	lines := e.logs.Lines(t, "queued")
	if len(ms) != 1 || len(lines) != 1 {
		t.Fatalf("%d messages, %d queued lines", len(ms), len(lines))
	}
	l := lines[0]
	want := map[string]any{"msg_id": ms[0].ID, "message_id": "<reset-42@app.example.com>", "user": "alice",
		"from": "alice@example.com", "rcpts": jsonNumber(2), "size": jsonNumber(ms[0].Size), "remote": "127.0.0.1"}
	for k, v := range want {
		if l[k] != v {
			t.Errorf("queued line's %s = %v, want %v (%v)", k, l[k], v, l)
		}
	}
	if ms[0].MessageID != "<reset-42@app.example.com>" || ms[0].User != "alice" || ms[0].Client != "127.0.0.1" {
		t.Errorf("queued with Message-ID %q, user %q, client %q", ms[0].MessageID, ms[0].User, ms[0].Client)
	}
}
