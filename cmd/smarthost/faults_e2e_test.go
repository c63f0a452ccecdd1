package main

// Faults a gateway meets in production: a full disk, repeated crashes, a
// Redis failover, a slow LDAP server, a tarpitting upstream, hostile load.
// docs/reliability.md lists what each test guarantees and its figures.

import (
	"crypto/sha256"
	"crypto/tls"
	"errors"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/emersion/go-sasl"
	"github.com/emersion/go-smtp"

	"github.com/smarthost/smarthost/relay/relaytest"
)

// submission is the outcome of one message sent by submit.
type submission struct {
	id   string // the queue ID, if acknowledged
	body string
	err  error
}

// submit sends one message as alice over implicit TLS and returns its
// queue ID or the error the relay answered.
func submit(addr, to, body string) submission {
	s := submission{body: body}
	c, err := smtp.DialTLS(addr, &tls.Config{InsecureSkipVerify: true})
	if err != nil {
		s.err = err
		return s
	}
	defer c.Close()
	c.CommandTimeout, c.SubmissionTimeout = 30*time.Second, 30*time.Second
	if s.err = c.Auth(sasl.NewPlainClient("", "alice", "alice-pw")); s.err != nil {
		return s
	}
	if s.err = c.Mail("alice@example.com", nil); s.err != nil {
		return s
	}
	if s.err = c.Rcpt(to, nil); s.err != nil {
		return s
	}
	w, err := c.Data()
	if err != nil {
		s.err = err
		return s
	}
	if _, err := w.Write([]byte(body)); err != nil {
		s.err = err
		return s
	}
	resp, err := w.CloseWithResponse()
	if err != nil {
		s.err = err
		return s
	}
	if m := regexp.MustCompile(`queued as ([0-9A-F]{20})`).FindStringSubmatch(resp.StatusText); m != nil {
		s.id = m[1]
	}
	c.Quit()
	return s
}

// reply is err's SMTP reply as "452 4.3.1", or "" if it is not one.
func reply(err error) string {
	var se *smtp.SMTPError
	if errors.As(err, &se) {
		return fmt.Sprintf("%d %d.%d.%d", se.Code, se.EnhancedCode[0], se.EnhancedCode[1], se.EnhancedCode[2])
	}
	return ""
}

func bodyOf(i int, tag string) string {
	return fmt.Sprintf("From: alice@example.com\r\nSubject: %s %d\r\n\r\n%s", tag, i, strings.Repeat(fmt.Sprintf("%s line of message %d\r\n", tag, i), 300))
}

// arrivedBodies maps each queue ID seen upstream to the hashes of the
// bodies that came with it (one per copy).
func arrivedBodies(up *relaytest.Sink) map[string][][32]byte {
	out := map[string][][32]byte{}
	for _, m := range up.Messages() {
		id := regexp.MustCompile(`with ESMTPSA id ([0-9A-F]{20})`).FindSubmatch(m.Data)
		if id == nil {
			continue
		}
		_, body, _ := strings.Cut(string(m.Data), "\r\n\r\n")
		out[string(id[1])] = append(out[string(id[1])], sha256.Sum256([]byte(body)))
	}
	return out
}

// The queue on a 4 MiB file system that fills up: submissions get 452
// 4.3.1 (never a 5xx), the relay keeps running and restarts on the full
// disk, the spool stays readable, a bounce that cannot be queued is not
// lost, a DKIM key is not left cut off; once space returns, every
// acknowledged message is delivered whole.
func TestFullDisk(t *testing.T) {
	disk := relaytest.TinyFS(t, "4m")
	up := sink(t, freePort(t))
	up.FailData(&smtp.SMTPError{Code: 451, EnhancedCode: smtp.EnhancedCode{4, 3, 0}, Message: "not now"})
	e := newRelayEnv(t, envOpts{upstream: "smtp://" + up.Addr, queueDir: filepath.Join(disk, "queue")})
	p := e.start(t)

	var acked []submission
	for i := 0; i < 5; i++ {
		s := submit(e.implicit, "bob@example.org", bodyOf(i, "before"))
		if s.err != nil || s.id == "" {
			t.Fatalf("message %d before the disk fills: %v", i, s.err)
		}
		acked = append(acked, s)
	}
	gone := submit(e.implicit, "gone@example.org", bodyOf(0, "bounces"))
	if gone.err != nil {
		t.Fatal(gone.err)
	}
	filler := relaytest.Fill(t, disk)

	for i := 0; i < 5; i++ {
		s := submit(e.implicit, "bob@example.org", bodyOf(i, "full"))
		if s.err == nil {
			acked = append(acked, s) // a message that still fitted is fine, if it is delivered
			continue
		}
		if reply(s.err) != "452 4.3.1" {
			t.Fatalf("submission on a full disk: %v, want 452 4.3.1", s.err)
		}
	}
	if out, err := runCLI("queue", "list", "--config", e.config); err != nil || !strings.Contains(out, gone.id) {
		t.Fatalf("queue list on a full disk: %v\n%s", err, out)
	}
	keys := filepath.Join(disk, "keys")
	os.MkdirAll(keys, 0o700)
	if out, err := runCLI("dkim", "keygen", "--domain", "full.test", "--selector", "s1", "--algo", "rsa4096", "--out", keys); err == nil {
		t.Errorf("dkim keygen on a full disk succeeded:\n%s", out)
	}
	if left, _ := os.ReadDir(keys); len(left) != 0 {
		t.Errorf("dkim keygen left %v behind on a full disk", left)
	}

	// The upstream takes mail again, but not yet for gone@. Deliveries
	// free space; the disk is filled again before gone@ is refused for
	// good, so that its bounce cannot be queued.
	up.FailRcpt("gone@example.org", &smtp.SMTPError{Code: 451, EnhancedCode: smtp.EnhancedCode{4, 2, 0}, Message: "later"})
	up.FailData(nil)
	eventually(t, "the messages acknowledged before the disk filled", 30*time.Second, func() bool {
		got := arrivedBodies(up)
		for _, s := range acked[:5] {
			if len(got[s.id]) == 0 {
				return false
			}
		}
		return true
	})
	// Space freed by the queue as it cleans up is taken again at once.
	keepFull := make(chan struct{})
	kept := make(chan struct{})
	go func() {
		defer close(kept)
		for {
			relaytest.Fill(t, disk)
			select {
			case <-keepFull:
				return
			case <-time.After(5 * time.Millisecond):
			}
		}
	}()
	up.FailRcpt("gone@example.org", &smtp.SMTPError{Code: 550, EnhancedCode: smtp.EnhancedCode{5, 1, 1}, Message: "no such user"})
	eventually(t, "a bounce refused by the full disk", 30*time.Second, func() bool {
		return strings.Contains(p.logText(), "cannot queue bounce; will try again")
	})
	close(keepFull)
	<-kept

	// A crash on the full disk, and a start on it.
	p.signal(t, syscall.SIGKILL)
	p.wait(t, 10*time.Second)
	p = e.start(t)

	os.Remove(filler)
	after := submit(e.implicit, "bob@example.org", bodyOf(0, "after"))
	if after.err != nil {
		t.Fatalf("after space returned: %v", after.err)
	}
	acked = append(acked, after)
	var bounce *relaytest.Message
	eventually(t, "every acknowledged message, and the bounce", 60*time.Second, func() bool {
		got := arrivedBodies(up)
		for _, s := range acked {
			if len(got[s.id]) == 0 {
				return false
			}
		}
		for _, m := range up.Messages() {
			if m.From == "" && strings.Contains(string(m.Data), "gone@example.org") {
				bounce = &m
				return true
			}
		}
		return false
	})
	got := arrivedBodies(up)
	dups := 0
	for _, s := range acked {
		_, body, _ := strings.Cut(s.body, "\r\n\r\n")
		for _, h := range got[s.id] {
			if h != sha256.Sum256([]byte(body)) {
				t.Errorf("message %s arrived cut short or changed", s.id)
			}
		}
		dups += len(got[s.id]) - 1
	}
	if bounce.To[0] != "alice@example.com" || !strings.Contains(string(bounce.Data), "Status: 5.1.1") {
		t.Errorf("bounce: %+v\n%s", bounce.Envelope(), bounce.Data)
	}
	t.Logf("%d acknowledged, all delivered whole; %d duplicates", len(acked), dups)
	if out, _ := exec.Command("df", "-h", disk).CombinedOutput(); t.Failed() {
		t.Logf("%s", out)
	}
}
