package main

// Faults a gateway meets in production: a full disk, repeated crashes, a
// Redis failover, a slow LDAP server, a tarpitting upstream, hostile load.
// docs/reliability.md lists what each test guarantees and its figures.

import (
	"bufio"
	"crypto/sha256"
	"crypto/tls"
	"errors"
	"fmt"
	"io"
	"math/rand/v2"
	"net"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"strings"
	"sync"
	"sync/atomic"
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

// allArrived reports whether every acknowledged message reached up.
func allArrived(up *relaytest.Sink, acked []submission) bool {
	got := arrivedBodies(up)
	for _, s := range acked {
		if len(got[s.id]) == 0 {
			return false
		}
	}
	return true
}

// checkArrived fails the test for every copy that is not the body that was
// sent, and returns the number of duplicates.
func checkArrived(t *testing.T, up *relaytest.Sink, acked []submission) int {
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
	return dups
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
	relaytest.Eventually(t, "the messages acknowledged before the disk filled", 30*time.Second, func() bool {
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
		deadline := time.Now().Add(time.Minute) // longer than the wait below
		for time.Now().Before(deadline) {
			relaytest.Fill(t, disk)
			select {
			case <-keepFull:
				return
			case <-time.After(5 * time.Millisecond):
			}
		}
	}()
	up.FailRcpt("gone@example.org", &smtp.SMTPError{Code: 550, EnhancedCode: smtp.EnhancedCode{5, 1, 1}, Message: "no such user"})
	relaytest.Eventually(t, "a bounce refused by the full disk", 30*time.Second, func() bool {
		return len(p.records().with("msg", "queue: cannot queue bounce; will try again").of([]string{gone.id})) > 0
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
	relaytest.Eventually(t, "every acknowledged message, and the bounce", 60*time.Second, func() bool {
		if !allArrived(up, acked) {
			return false
		}
		for _, m := range up.Messages() {
			if m.From == "" && strings.Contains(string(m.Data), "gone@example.org") {
				bounce = &m
				return true
			}
		}
		return false
	})
	dups := checkArrived(t, up, acked)
	if bounce.To[0] != "alice@example.com" || !strings.Contains(string(bounce.Data), "Status: 5.1.1") {
		t.Errorf("bounce: %+v\n%s", bounce.Envelope(), bounce.Data)
	}
	t.Logf("%d acknowledged, all delivered whole; %d duplicates", len(acked), dups)
	if out, _ := exec.Command("df", "-h", disk).CombinedOutput(); t.Failed() {
		t.Logf("%s", out)
	}
}

// Fifty times: a burst from 20 sessions, SIGKILL at a random moment once
// it is under way (crashAckedEach acknowledged in the cycle), a
// restart. The queue starts every time, and every acknowledged message is
// delivered, unchanged. Delivery is at least once: a message is sent again
// only if it was being delivered when the process died (taken by the
// upstream, not yet recorded as done), so duplicates are bounded by the
// kills, not by the messages: at most crashDupsPerKill each. Counted once
// the queue is empty and the upstream has been quiet.
func TestCrashLoop(t *testing.T) {
	up := sink(t, freePort(t))
	e := newRelayEnv(t, envOpts{upstream: "smtp://" + up.Addr, workers: crashWorkers})
	var mu sync.Mutex
	var acked []submission
	ackedNow := func() int { mu.Lock(); defer mu.Unlock(); return len(acked) }
	kills := 50
	if testing.Short() {
		kills = 5
	}
	for cycle := 0; cycle < kills; cycle++ {
		p := e.start(t)
		stop := make(chan struct{})
		var wg sync.WaitGroup
		for s := 0; s < 20; s++ {
			wg.Add(1)
			go func(s int) {
				defer wg.Done()
				deadline := time.Now().Add(time.Minute) // the kill comes within a second
				for i := 0; time.Now().Before(deadline); i++ {
					select {
					case <-stop:
						return
					default:
					}
					r := submit(e.implicit, "bob@example.org", bodyOf(i, fmt.Sprintf("cycle %d session %d", cycle, s)))
					if r.err != nil {
						if reply(r.err) != "" && !strings.HasPrefix(reply(r.err), "4") {
							t.Errorf("cycle %d: %v", cycle, r.err)
						}
						return // the server died under us
					}
					mu.Lock()
					acked = append(acked, r)
					mu.Unlock()
				}
			}(s)
		}
		// A random moment in the burst, once it is under way: the kill is
		// what is under test, and a slow machine must not make a test of
		// kills between messages.
		before := ackedNow()
		relaytest.Eventually(t, "the burst under way", 60*time.Second, func() bool { return ackedNow() >= before+crashAckedEach })
		time.Sleep(time.Duration(rand.IntN(400)) * time.Millisecond)
		p.signal(t, syscall.SIGKILL)
		p.wait(t, 10*time.Second)
		close(stop)
		wg.Wait()
	}
	e.start(t)
	up.Settled(t, relaytest.Quiet, 180*time.Second, func() bool { return queueCount(t, e) == 0 })
	if !allArrived(up, acked) {
		t.Fatalf("the queue is empty, and not every acknowledged message arrived")
	}
	dups := checkArrived(t, up, acked)
	t.Logf("crash loop: %d kills, %d acknowledged, all delivered; %d duplicates (%.2f%%, %.2f a kill; bound %d a kill)",
		kills, len(acked), dups, 100*float64(dups)/float64(len(acked)), float64(dups)/float64(kills), crashDupsPerKill)
	if dups > kills*crashDupsPerKill {
		t.Errorf("%d duplicates after %d kills: more than the %d a kill that can be in flight", dups, kills, crashDupsPerKill)
	}
}

// crashWorkers is the crash loop's delivery workers, and crashDupsPerKill
// what a kill may send twice: the deliveries then under way, one per
// worker, and the "done" records of as many finished deliveries still
// waiting for the journal's writer (a kill loses only what was not yet
// written: the page cache survives it). The bound is per kill, not a share
// of the messages: a slower machine acknowledges fewer messages in each
// cycle, and has as many in flight.
const (
	crashWorkers     = 4
	crashDupsPerKill = 2 * crashWorkers
	crashAckedEach   = 5 // acknowledged in a cycle before its kill may come
)

// login opens a session over implicit TLS and logs in; it returns the
// reply ("235 2.7.0", "454 4.7.0", "421 4.7.0") and how long the whole took.
func tryLogin(addr, user, pass string) (string, time.Duration) {
	start := time.Now()
	c, err := smtp.DialTLS(addr, &tls.Config{InsecureSkipVerify: true})
	if err != nil {
		if r := reply(err); r != "" {
			return r, time.Since(start)
		}
		return "dial: " + err.Error(), time.Since(start)
	}
	defer c.Close()
	c.CommandTimeout = 30 * time.Second
	err = c.Auth(sasl.NewPlainClient("", user, pass))
	took := time.Since(start)
	if err == nil {
		c.Quit()
		return "235 2.7.0", took
	}
	if r := reply(err); r != "" {
		return r, took
	}
	return err.Error(), took
}

// slapd stopped (SIGSTOP: it accepts connections and never answers):
// logins answer 454 within the LDAP timeout, a user logged in before is
// served from the login cache, and sessions waiting on LDAP never exceed
// the connection cap (the others get 421 at once).
func TestSlowLDAP(t *testing.T) {
	const timeout, capConns = 2 * time.Second, 20
	web := freePort(t)
	e := ldapRelay(t, "", fmt.Sprintf("ratelimit:\n  backend: memory\n  max_connections: %d\n  connections_per_ip: %d\nmetrics: {listen: %q}\n", capConns, capConns, web))
	e.start(t)
	if r, _ := tryLogin(e.implicit, "alice", "alice-secret"); r != "235 2.7.0" {
		t.Fatalf("alice before the stall: %s", r)
	}
	resume := relaytest.Freeze(t, "SMARTHOST_TEST_LDAP_PIDFILE")
	// From the cache: a login that asked the hung LDAP would take its
	// whole timeout (and answer 454), so under the timeout is the bound,
	// not a figure of a second that TLS under -race on a loaded machine
	// may miss.
	if r, took := tryLogin(e.implicit, "alice", "alice-secret"); r != "235 2.7.0" || took >= timeout {
		t.Errorf("alice from the cache while LDAP hangs: %s after %s, want 235 2.7.0 within the LDAP timeout (%s)", r, took, timeout)
	}
	if r, took := tryLogin(e.implicit, "bob", "bob-secret"); r != "454 4.7.0" || took > timeout+time.Second {
		t.Errorf("bob while LDAP hangs: %s after %s, want 454 4.7.0 within %s", r, took, timeout)
	}

	// 60 clients at once, 20 allowed in.
	type result struct {
		reply string
		took  time.Duration
	}
	results := make(chan result, 60)
	peak := 0.0
	done, sampled := make(chan struct{}), make(chan struct{})
	go func() {
		defer close(sampled)
		for {
			select {
			case <-done:
				return
			case <-time.After(100 * time.Millisecond):
			}
			resp, err := http.Get("http://" + web + "/metrics")
			if err != nil {
				continue
			}
			b, _ := io.ReadAll(resp.Body)
			resp.Body.Close()
			for _, line := range strings.Split(string(b), "\n") {
				if strings.HasPrefix(line, "smarthost_connections{") {
					var v float64
					fmt.Sscan(line[strings.LastIndexByte(line, ' ')+1:], &v)
					peak = max(peak, v)
				}
			}
		}
	}()
	for i := 0; i < 60; i++ {
		go func() {
			r, took := tryLogin(e.implicit, "bob", "bob-secret")
			results <- result{r, took}
		}()
	}
	counts := map[string]int{}
	var slowest time.Duration
	for i := 0; i < 60; i++ {
		r := <-results
		counts[r.reply]++
		slowest = max(slowest, r.took)
	}
	close(done)
	<-sampled
	if counts["454 4.7.0"]+counts["421 4.7.0"] != 60 || counts["454 4.7.0"] == 0 || counts["421 4.7.0"] == 0 {
		t.Errorf("replies: %v; want only 454 4.7.0 and 421 4.7.0", counts)
	}
	if peak > capConns {
		t.Errorf("%v connections at once, over the cap of %d", peak, capConns)
	}
	if slowest > 3*timeout+2*time.Second {
		t.Errorf("the slowest answer took %s", slowest)
	}
	resume()
	relaytest.Eventually(t, "logins again once LDAP answers", 20*time.Second, func() bool {
		r, _ := tryLogin(e.implicit, "bob", "bob-secret")
		return r == "235 2.7.0"
	})
	t.Logf("slow LDAP: %v; peak %v connections (cap %d); slowest answer %s", counts, peak, capConns, slowest.Round(time.Millisecond))
}

// tarpit is an SMTP server that answers nothing for 30 s, greeting
// included, as a tarpitting or overloaded server does; it counts the
// connections it holds (those held at least 300 ms).
type tarpit struct {
	addr       string
	mu         sync.Mutex
	open, peak int
}

func startTarpit(t *testing.T) *tarpit {
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	tp := &tarpit{addr: ln.Addr().String()}
	stop := make(chan struct{})
	t.Cleanup(func() { close(stop); ln.Close() })
	go func() {
		for {
			c, err := ln.Accept()
			if err != nil {
				return
			}
			go func() {
				settled := false
				defer func() {
					c.Close()
					if settled {
						tp.mu.Lock()
						tp.open--
						tp.mu.Unlock()
					}
				}()
				// The client hanging up ends the connection at once; only
				// the ones it still holds count.
				gone := make(chan struct{})
				go func() { io.Copy(io.Discard, c); close(gone) }()
				// A connection counts once it has been held 300 ms: a client
				// that closes one connection and dials the next at once would
				// otherwise be counted holding both while this side has yet
				// to see the first one's end (it happened under -race in CI).
				select {
				case <-gone:
					return
				case <-time.After(300 * time.Millisecond):
					settled = true
					tp.mu.Lock()
					tp.open++
					tp.peak = max(tp.peak, tp.open)
					tp.mu.Unlock()
				}
				select {
				case <-stop:
				case <-gone:
				case <-time.After(30 * time.Second):
					io.WriteString(c, "220 tarpit.test ESMTP\r\n")
					<-gone
				}
			}()
		}
	}()
	return tp
}

// holding is how many connections it holds now.
func (tp *tarpit) holding() int {
	tp.mu.Lock()
	defer tp.mu.Unlock()
	return tp.open
}

func (tp *tarpit) peakOpen() int {
	tp.mu.Lock()
	defer tp.mu.Unlock()
	return tp.peak
}

// An upstream that tarpits (nothing for 30 s) on one route: its
// connection cap and timeout hold, the attempts are deferred, and the other
// route keeps delivering: the workers are not all stuck on it.
func TestTarpittingUpstream(t *testing.T) {
	tp := startTarpit(t)
	up := sink(t, freePort(t))
	e := newRelayEnv(t, envOpts{workers: 4, upstreams: fmt.Sprintf("upstreams:\n"+
		"  - {name: tarpit, url: \"smtp://%s\", tls: none, timeout: 4s, max_connections: 2}\n"+
		"  - {name: good, url: \"smtp://%s\", tls: none, timeout: 5s}\n"+
		"routes:\n  - {match: {recipient_domains: [slow.example]}, upstreams: [tarpit]}\n  - {upstreams: [good]}\n", tp.addr, up.Addr)})
	p := e.start(t)
	var slow []string
	for i := 0; i < 20; i++ {
		s := submit(e.implicit, fmt.Sprintf("r%d@slow.example", i), bodyOf(i, "tarpit"))
		if s.err != nil {
			t.Fatal(s.err)
		}
		slow = append(slow, s.id)
	}
	start := time.Now()
	for i := 0; i < 40; i++ {
		if s := submit(e.implicit, "bob@example.org", bodyOf(i, "good")); s.err != nil {
			t.Fatal(s.err)
		}
	}
	relaytest.Eventually(t, "the other route's 40 messages", 30*time.Second, func() bool { return len(up.Messages()) == 40 })
	took := time.Since(start)
	var deferred logRecords
	relaytest.Eventually(t, "an attempt deferred for each message at the tarpit", 20*time.Second, func() bool {
		deferred = p.records().with("msg", "delivery deferred").of(slow)
		ids := map[string]bool{}
		for _, r := range deferred {
			ids[r["msg_id"]] = true
		}
		return len(ids) == len(slow)
	})
	if n := tp.peakOpen(); n > 2 {
		t.Errorf("%d connections to the tarpit at once; max_connections is 2", n)
	}
	// Each deferral says why: the upstream's timeout, or its connections
	// all busy and stalled.
	for _, r := range deferred {
		if !strings.Contains(r["err"], "i/o timeout") && !strings.Contains(r["err"], "busy") {
			t.Errorf("message %s deferred with err=%q, which does not say why", r["msg_id"], r["err"])
		}
	}
	t.Logf("tarpit: the other route's 40 messages delivered in %s; peak %d connections to the tarpit", took.Round(time.Millisecond), tp.peakOpen())
}

// failoverBudget: what a failover may add to a user's budget. Redis
// replicates asynchronously: the charges the old master took in its last
// moments (before the replica had them) are lost with it, so a user may
// send that many more messages. At one charge per message and a
// replication lag well under a second, 20 is generous.
const failoverBudget = 20

// failoverRun sends from 20 sessions as alice (budget 150/h) and kills the
// Redis master once 60 messages are acknowledged. It returns the replies
// by kind and how long the limiter was unavailable (from the kill to the
// last 451 4.4.3).
func failoverRun(t *testing.T, ratelimitYAML string, kill func()) (map[string]int, time.Duration) {
	up := sink(t, freePort(t))
	e := newRelayEnv(t, envOpts{upstream: "smtp://" + up.Addr, extra: ratelimitYAML})
	e.start(t)
	var mu sync.Mutex
	counts := map[string]int{}
	var killedAt, lastDown time.Time
	limited := 0
	var wg sync.WaitGroup
	deadline := time.Now().Add(3 * time.Minute) // the run takes under a minute
	for s := 0; s < 20; s++ {
		wg.Add(1)
		go func(s int) {
			defer wg.Done()
			for i := 0; time.Now().Before(deadline); i++ {
				r := submit(e.implicit, "bob@example.org", bodyOf(i, "failover"))
				kind := "250"
				if r.err != nil {
					kind = reply(r.err)
					if kind == "" {
						kind = "error: " + r.err.Error()
					}
				}
				mu.Lock()
				counts[kind]++
				if kind == "450 4.7.1" {
					limited++
				}
				if kind == "451 4.4.3" {
					lastDown = time.Now()
				}
				if killedAt.IsZero() && counts["250"] >= 60 {
					killedAt = time.Now()
					kill()
				}
				enough := limited >= 50 || time.Since(killedAt) > 40*time.Second && !killedAt.IsZero()
				mu.Unlock()
				if enough {
					return
				}
			}
		}(s)
	}
	wg.Wait()
	if time.Now().After(deadline) {
		t.Fatalf("the failover run did not end within its deadline (killed at %v): %v", killedAt, counts)
	}
	if lastDown.Before(killedAt) {
		return counts, 0
	}
	return counts, lastDown.Sub(killedAt)
}

func checkFailover(t *testing.T, kind string, counts map[string]int, recovery time.Duration) {
	for k, n := range counts {
		if k != "250" && k != "450 4.7.1" && k != "451 4.4.3" {
			t.Errorf("%d replies %q: want only 250, 450 4.7.1 (limited) and 451 4.4.3 (limiter unavailable)", n, k)
		}
	}
	if counts["250"] > 150+failoverBudget {
		t.Errorf("%d messages accepted on a budget of 150 (+%d for the failover)", counts["250"], failoverBudget)
	}
	if recovery > 15*time.Second {
		t.Errorf("the limiter was unavailable for %s after the master died", recovery)
	}
	if counts["450 4.7.1"] == 0 {
		t.Errorf("the limit was never reached after the failover: %v", counts)
	}
	t.Logf("%s failover: %v; limiter unavailable for %s", kind, counts, recovery.Round(time.Millisecond))
}

// A Sentinel group (master, replica, three Sentinels): the master is
// killed mid-burst. No 5xx; the budget holds within failoverBudget.
func TestRedisSentinelFailover(t *testing.T) {
	g := relaytest.StartSentinelGroup(t)
	yaml := fmt.Sprintf("ratelimit:\n  backend: redis\n  redis: {addrs: [%s], master_name: mymaster}\n  on_backend_error: tempfail\n"+
		"  classes:\n    default: {messages: \"150/h\"}\n", strings.Join(g.SentinelAddrs(), ", "))
	master := g.Master.Addr
	counts, recovery := failoverRun(t, yaml, g.Master.Kill)
	if now := g.MasterAddr(); now == master || now == "" {
		t.Errorf("no failover: the master is %q", now)
	}
	checkFailover(t, "Sentinel", counts, recovery)
}

// A Redis Cluster (three masters with a replica each): the master holding
// alice's keys is killed mid-burst and its replica promoted.
func TestRedisClusterFailover(t *testing.T) {
	c := relaytest.StartRedisCluster(t)
	yaml := fmt.Sprintf("ratelimit:\n  backend: redis\n  redis: {addrs: [%s]}\n  on_backend_error: tempfail\n"+
		"  classes:\n    default: {messages: \"150/h\"}\n", strings.Join(c.Addrs(), ", "))
	victim := c.MasterOf(t, "{alice}")
	counts, recovery := failoverRun(t, yaml, victim.Kill)
	if now := c.MasterOf(t, "{alice}"); now == victim {
		t.Errorf("no failover: %s still serves alice", now.Addr)
	}
	checkFailover(t, "Cluster", counts, recovery)
}

// procStatus reads the relay's VmRSS and VmHWM (KiB) and its open files.
func procStatus(t *testing.T, pid int) (rss, hwm int64, fds int) {
	b, err := os.ReadFile(fmt.Sprintf("/proc/%d/status", pid))
	if err != nil {
		t.Fatal(err)
	}
	for _, line := range strings.Split(string(b), "\n") {
		f := strings.Fields(line)
		if len(f) >= 2 && f[0] == "VmRSS:" {
			fmt.Sscan(f[1], &rss)
		}
		if len(f) >= 2 && f[0] == "VmHWM:" {
			fmt.Sscan(f[1], &hwm)
		}
	}
	ents, _ := os.ReadDir(fmt.Sprintf("/proc/%d/fd", pid))
	return rss, hwm, len(ents)
}

// Hostile load on the memory: 2,000 sessions each in the middle of a
// 25 MiB message that they send slowly (1,000 have sent 100 KiB, which
// would fit the in-memory draft; 1,000 have sent 300 KiB, which does not),
// then, on a fresh process, 10,000 idle sessions. The relay's RSS stays
// under the bounds below; messages being received live on disk, not in
// memory. What the memory is (a heap profile of the first case, about
// 250 MB live): a 32 KiB read buffer per session in DATA, a 32 KiB write
// buffer per draft on disk, at most 64 MiB of drafts in memory (their
// buffers' capacity somewhat more), and the Go collector's headroom,
// which about doubles the live heap in RSS.
const (
	slowSessionsRSSMax = 640 << 10 // KiB
	idleSessionsRSSMax = 400 << 10 // KiB
)

func TestMemoryUnderHostileLoad(t *testing.T) {
	if os.Geteuid() == 0 {
		// 10,000 sessions need that many files on each side; root may
		// raise the limit, which the relay inherits.
		lim := syscall.Rlimit{Cur: 65536, Max: 65536}
		syscall.Setrlimit(syscall.RLIMIT_NOFILE, &lim)
	}
	var lim syscall.Rlimit
	syscall.Getrlimit(syscall.RLIMIT_NOFILE, &lim)
	if lim.Cur < 11000 {
		msg := fmt.Sprintf("10,000 sessions need more open files than the limit of %d", lim.Cur)
		if os.Getenv("CI") == "true" {
			t.Fatal(msg)
		}
		t.Skip(msg)
	}
	up := sink(t, freePort(t))
	e := newRelayEnv(t, envOpts{upstream: "smtp://" + up.Addr, plain: true, maxSize: "25MiB",
		policy: "  trusted_networks: [127.0.0.0/8]\n  trusted_senders: [alice@example.com]\n",
		extra:  "ratelimit:\n  backend: memory\n  max_connections: 12000\n  connections_per_ip: 12000\n"})
	e.bin = plainBinary(t)
	p := e.start(t)
	pid := p.cmd.Process.Pid

	// 2,000 slow senders.
	var wg sync.WaitGroup
	var ready sync.WaitGroup
	stop := make(chan struct{})
	var failures atomic.Int32
	for i := 0; i < 2000; i++ {
		size := 100 << 10
		if i%2 == 1 {
			size = 300 << 10
		}
		wg.Add(1)
		ready.Add(1)
		go func() {
			defer wg.Done()
			sent := false
			defer func() {
				if !sent {
					failures.Add(1)
					ready.Done()
				}
			}()
			c, err := net.Dial("tcp", e.plain)
			if err != nil {
				return
			}
			defer c.Close()
			c.SetDeadline(time.Now().Add(5 * time.Minute))
			r := bufio.NewReader(c)
			expect := func(code string) bool {
				for {
					line, err := r.ReadString('\n')
					if err != nil || !strings.HasPrefix(line, code) {
						return false
					}
					if len(line) < 4 || line[3] == ' ' {
						return true
					}
				}
			}
			if !expect("220") {
				return
			}
			for _, step := range [][2]string{{"EHLO slow.test", "250"}, {"MAIL FROM:<alice@example.com> SIZE=26214400", "250"},
				{"RCPT TO:<bob@example.org>", "250"}, {"DATA", "354"}} {
				io.WriteString(c, step[0]+"\r\n")
				if !expect(step[1]) {
					return
				}
			}
			io.WriteString(c, "From: alice@example.com\r\nSubject: slow\r\n\r\n")
			line := strings.Repeat("x", 1022) + "\r\n"
			chunk := strings.Repeat(line, 16) // 16 KiB
			for n := 0; n < size; n += len(chunk) {
				if _, err := io.WriteString(c, chunk); err != nil {
					return
				}
				time.Sleep(50 * time.Millisecond)
			}
			sent = true
			ready.Done()
			<-stop // and never finishes the message
		}()
	}
	ready.Wait()
	// Every 300 KiB message and all but MemoryMax (64 MiB) of the
	// 100 KiB ones go to disk: wait for the relay to have taken in what
	// is in flight, then measure.
	wantDrafts := 1000 + 1000 - (64<<20)/(100<<10) - 10
	var drafts []os.DirEntry
	relaytest.Within(30*time.Second, func() bool {
		drafts, _ = os.ReadDir(filepath.Join(e.dir, "queue", "tmp"))
		return len(drafts) >= wantDrafts
	})
	rss, hwm, fds := procStatus(t, pid)
	t.Logf("2,000 slow senders (%d failed to start): RSS %d MiB (peak %d MiB), %d open files, %d drafts on disk",
		failures.Load(), rss>>10, hwm>>10, fds, len(drafts))
	if failures.Load() > 0 {
		t.Errorf("%d slow senders were refused", failures.Load())
	}
	if hwm > slowSessionsRSSMax {
		t.Errorf("peak RSS %d MiB with 2,000 slow senders, over the bound of %d MiB", hwm>>10, slowSessionsRSSMax>>10)
	}
	if len(drafts) < wantDrafts {
		t.Errorf("only %d drafts on disk: messages are held in memory", len(drafts))
	}
	close(stop)
	wg.Wait()
	relaytest.Eventually(t, "the aborted drafts removed", 30*time.Second, func() bool {
		d, _ := os.ReadDir(filepath.Join(e.dir, "queue", "tmp"))
		return len(d) == 0
	})

	// 10,000 idle sessions, on a fresh process.
	p.signal(t, syscall.SIGKILL)
	p.wait(t, 10*time.Second)
	p = e.start(t)
	pid = p.cmd.Process.Pid
	var conns []net.Conn
	defer func() {
		for _, c := range conns {
			c.Close()
		}
	}()
	for i := 0; i < 10000; i++ {
		c, err := net.Dial("tcp", e.plain)
		if err != nil {
			t.Fatalf("session %d: %v", i, err)
		}
		conns = append(conns, c)
	}
	for i, c := range conns {
		c.SetReadDeadline(time.Now().Add(60 * time.Second))
		if line, err := bufio.NewReader(c).ReadString('\n'); err != nil || !strings.HasPrefix(line, "220 ") {
			t.Fatalf("session %d: %q %v", i, line, err)
		}
	}
	rss, _, fds = procStatus(t, pid)
	t.Logf("10,000 idle sessions: RSS %d MiB, %d open files", rss>>10, fds)
	if rss > idleSessionsRSSMax {
		t.Errorf("RSS %d MiB with 10,000 idle sessions, over the bound of %d MiB", rss>>10, idleSessionsRSSMax>>10)
	}
	if fds < 10000 || fds > 10100 {
		t.Errorf("%d open files for 10,000 sessions", fds)
	}
}
