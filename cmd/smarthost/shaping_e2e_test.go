package main

import (
	"crypto/rand"
	"crypto/tls"
	"encoding/hex"
	"encoding/json"
	"fmt"
	"io"
	"maps"
	"net/http"
	"regexp"
	"slices"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/emersion/go-sasl"
	"github.com/emersion/go-smtp"
	"golang.org/x/crypto/bcrypt"

	"github.com/smarthost/smarthost/relay/daemon"
	"github.com/smarthost/smarthost/relay/relaytest"
)

// The upstream's limit in these tests: 10 messages per 5 seconds. The
// budget is paced (one every 500 ms), so a window of 5 s holds at most
// 10 admissions and one more at its edge; one more again is allowed for
// the time between the budget's decision and the sink's arrival, which
// varies with the load on the machine. So: at most 12 in any window.
const (
	shapeLimit  = 10
	shapeWindow = 5 * time.Second
	shapeBurst  = 2
)

// shapedRelay is a relay keeping its limits in Redis at redisAddr, with
// upstreams as its upstreams: section (and routes:), and more YAML.
func shapedRelay(t *testing.T, redisAddr, upstreams, extra string) *relayEnv {
	t.Helper()
	return newRelayEnv(t, envOpts{upstreams: upstreams, extra: fmt.Sprintf(`ratelimit:
  backend: redis
  redis: {addrs: [%q]}
  on_backend_error: tempfail
%s`, redisAddr, extra)})
}

// uniqueName is an upstream name no other run has used, so that its
// budget in the shared test Redis starts empty.
func uniqueName(prefix string) string {
	var b [4]byte
	rand.Read(b[:])
	return prefix + "-" + hex.EncodeToString(b[:])
}

// submitMany sends n messages as alice, spread over addrs in turn, all at
// once; every one must be acknowledged.
func submitMany(t *testing.T, addrs []string, n int, subject func(i int) string) {
	t.Helper()
	var wg sync.WaitGroup
	errs := make(chan error, n)
	for i := 0; i < n; i++ {
		wg.Add(1)
		go func(i int) {
			defer wg.Done()
			s := submit(addrs[i%len(addrs)], "r@example.org", fmt.Sprintf("From: alice@example.com\r\nSubject: %s\r\n\r\nx\r\n", subject(i)))
			if s.err != nil || s.id == "" {
				errs <- fmt.Errorf("message %d: %v", i, s.err)
			}
		}(i)
	}
	wg.Wait()
	close(errs)
	for err := range errs {
		t.Fatal(err)
	}
}

// windowCounts counts arrivals in consecutive windows from the first one,
// and the most in any window starting at an arrival (a sliding window).
func windowCounts(msgs []relaytest.Message, w time.Duration) (fixed []int, sliding int) {
	ts := make([]time.Time, len(msgs))
	for i, m := range msgs {
		ts[i] = m.At
	}
	slices.SortFunc(ts, func(a, b time.Time) int { return a.Compare(b) })
	if len(ts) == 0 {
		return nil, 0
	}
	for _, at := range ts {
		k := int(at.Sub(ts[0]) / w)
		for len(fixed) <= k {
			fixed = append(fixed, 0)
		}
		fixed[k]++
	}
	for i := range ts {
		n := 0
		for j := i; j < len(ts) && ts[j].Sub(ts[i]) < w; j++ {
			n++
		}
		sliding = max(sliding, n)
	}
	return fixed, sliding
}

// Two relays share one Redis and one upstream limited to 10 messages per
// 5 s. 60 messages offered at once, half to each relay, reach the sink at
// the limit's pace: no window holds more than the limit and its burst
// allowance, all 60 arrive, none bounces.
func TestShapingExactAcrossTwoRelays(t *testing.T) {
	addr := ldapEnv(t, "SMARTHOST_TEST_REDIS_ADDR")
	s := sink(t, "127.0.0.1:0")
	name := uniqueName("shaped")
	ups := fmt.Sprintf("upstreams:\n  - {name: %s, url: \"smtp://%s\", tls: none, timeout: 5s, limits: {messages: \"%d/5s\"}}\n",
		name, s.Addr, shapeLimit)
	a, b := shapedRelay(t, addr, ups, ""), shapedRelay(t, addr, ups, "")
	pa, pb := a.start(t), b.start(t)

	start := time.Now()
	submitMany(t, []string{a.implicit, b.implicit}, 60, func(i int) string { return fmt.Sprint("shaped ", i) })
	got := s.Wait(60, 90*time.Second)
	fixed, sliding := windowCounts(got, shapeWindow)
	t.Logf("sink arrivals per 5 s window: %v (most in any 5 s: %d; limit %d, burst allowance %d); all within %s",
		fixed, sliding, shapeLimit, shapeBurst, time.Since(start).Round(time.Millisecond))
	if len(got) != 60 {
		t.Fatalf("the sink got %d of 60 messages", len(got))
	}
	if sliding > shapeLimit+shapeBurst {
		t.Errorf("%d messages arrived within 5 s; the limit is %d and the burst allowance %d", sliding, shapeLimit, shapeBurst)
	}
	// 60 at one per 500 ms take at least 29.5 s less the burst: a relay
	// that did not share the budget would send them in half that.
	if span := got[len(got)-1].At.Sub(got[0].At); span < 27*time.Second {
		t.Errorf("60 messages arrived within %s: faster than the limit allows", span)
	}
	noBounce(t, got, pa, pb)
	// The budget in Redis, read by the command without the relays.
	out, err := runCLI("limits", "show", "--upstream", name, "--config", a.config)
	if err != nil || !regexp.MustCompile(`messages +10/5s +\d+ left`).MatchString(out) || !strings.Contains(out, "not on hold") {
		t.Errorf("limits show --upstream: %v\n%s", err, out)
	}
}

// noBounce fails the test if a relay bounced a message or a bounce
// reached the sink.
func noBounce(t *testing.T, got []relaytest.Message, ps ...*proc) {
	t.Helper()
	for _, m := range got {
		if m.From != "alice@example.com" {
			t.Errorf("the sink got a message from %q (a bounce?)", m.From)
		}
	}
	for _, p := range ps {
		if strings.Contains(p.logText(), "status=bounced") {
			t.Errorf("a relay bounced a message")
		}
	}
}

// windowGate accepts n messages per window (from the first) and refuses
// the rest with reply.
func windowGate(n int, w time.Duration, reply *smtp.SMTPError) func() error {
	var mu sync.Mutex
	var start time.Time
	taken := map[int]int{}
	return func() error {
		mu.Lock()
		defer mu.Unlock()
		if start.IsZero() {
			start = time.Now()
		}
		k := int(time.Since(start) / w)
		if taken[k] >= n {
			return reply
		}
		taken[k]++
		return nil
	}
}

// An upstream that takes 5 messages per 5 s and refuses the rest with a
// throttle reply: the route holds (cool-down 1 s, doubling to 4 s) instead
// of each message retrying on its own (every 200 ms here), so nothing
// bounces, every message arrives at its first attempt, and the refusals
// are few: in each window the sessions in flight when the first refusal
// came (max_connections, 2) and the probes that end a hold (at most 3 in
// a window: after 1, 2 and 4 s). The generic reply, and Microsoft's and
// Google's daily quotas, 5xx replies that mean later, give the same
// (Google's over two windows only, to keep it short).
func TestShapingHoldsOnThrottle(t *testing.T) {
	for _, tc := range []struct {
		name  string
		n     int
		reply *smtp.SMTPError
	}{
		{"generic", 20, &smtp.SMTPError{Code: 421, EnhancedCode: smtp.EnhancedCode{4, 7, 0}, Message: "Too many messages"}},
		{"microsoft", 20, &smtp.SMTPError{Code: 554, EnhancedCode: smtp.EnhancedCode{5, 2, 0},
			Message: "STOREDRV.Submission.Exception:SubmissionQuotaExceededException; Failed to process message due to a permanent exception with message Cannot submit message."}},
		// As Google's "Gmail SMTP errors and codes" has it.
		{"google", 10, &smtp.SMTPError{Code: 550, EnhancedCode: smtp.EnhancedCode{5, 4, 5},
			Message: "Daily user sending limit exceeded. For more information on Gmail sending limits go to https://support.google.com/a/answer/166852 - gsmtp"}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			const perWindow, conns = 5, 2
			n := tc.n
			s := sink(t, "127.0.0.1:0")
			s.Gate(windowGate(perWindow, shapeWindow, tc.reply))
			ups := fmt.Sprintf("upstreams:\n  - {name: %s, url: \"smtp://%s\", tls: none, timeout: 5s, max_connections: %d, throttle: {cooldown: 1s, max_cooldown: 4s}}\n",
				uniqueName("throttled"), s.Addr, conns)
			e := shapedRelay(t, ldapEnv(t, "SMARTHOST_TEST_REDIS_ADDR"), ups, "")
			p := e.start(t)
			submitMany(t, []string{e.implicit}, n, func(i int) string { return fmt.Sprint("throttled ", i) })
			got := s.Wait(n, 60*time.Second)
			fixed, _ := windowCounts(got, shapeWindow)
			windows := len(fixed) + 1 // the last one's refusals may come after its last arrival
			bound := windows * (conns + 3)
			t.Logf("sink arrivals per 5 s window: %v; refused %d (bound %d)", fixed, s.Refused(), bound)
			if len(got) != n {
				t.Fatalf("the sink got %d of %d messages", len(got), n)
			}
			if s.Refused() == 0 || s.Refused() > bound {
				t.Errorf("the upstream refused %d messages; want between 1 and %d", s.Refused(), bound)
			}
			// The relay logs a delivery just after the sink has it.
			relaytest.Eventually(t, "every delivery logged", 10*time.Second, func() bool { return strings.Count(p.logText(), "status=sent") == n })
			noBounce(t, got, p)
			log := p.logText()
			if k := strings.Count(log, "attempt=1 "); k != n {
				t.Errorf("%d messages sent, %d lines with attempt=1: a hold spent attempts", n, k)
			}
			if !strings.Contains(log, "upstream throttled us") {
				t.Errorf("no hold in the log")
			}
		})
	}
}

// Redis dies mid-run under two relays sharing an upstream's limit of 10
// per 5 s. Under tempfail nothing is sent while it is down (a message
// admitted just before may still arrive), and all goes on when it is
// back. Under allow each relay sends under its share (5 per 5 s), so the
// rate holds: in any 5 s at most the limit, the burst allowance, and one
// more per relay as it changes to its own share and back. Nothing is
// lost either way.
func TestShapingWhenRedisDies(t *testing.T) {
	for _, mode := range []string{"tempfail", "allow"} {
		t.Run(mode, func(t *testing.T) {
			const n, relays = 30, 2
			rd := relaytest.StartRedis(t)
			s := sink(t, "127.0.0.1:0")
			ups := fmt.Sprintf("upstreams:\n  - {name: up, url: \"smtp://%s\", tls: none, timeout: 5s, limits: {messages: \"%d/5s\"}}\n", s.Addr, shapeLimit)
			var envs []*relayEnv
			var procs []*proc
			for i := 0; i < relays; i++ {
				e := newRelayEnv(t, envOpts{upstreams: ups, extra: fmt.Sprintf("ratelimit:\n  backend: redis\n  redis: {addrs: [%q]}\n  on_backend_error: %s\n  timeout: 300ms\n", rd.Addr, mode)})
				envs = append(envs, e)
				procs = append(procs, e.start(t))
			}
			submitMany(t, []string{envs[0].implicit, envs[1].implicit}, n, func(i int) string { return fmt.Sprint("redis dies ", i) })
			s.Wait(12, 30*time.Second)
			rd.Kill()
			if mode == "tempfail" {
				time.Sleep(1500 * time.Millisecond) // what was admitted before may still arrive, on a busy machine
				before := len(s.Messages())
				time.Sleep(3 * time.Second)
				if k := len(s.Messages()) - before; k > 0 {
					t.Errorf("%d messages sent while Redis was down under tempfail", k)
				}
				rd.Restart(t)
			}
			got := s.Wait(n, 60*time.Second)
			fixed, sliding := windowCounts(got, shapeWindow)
			bound := shapeLimit + shapeBurst + relays
			t.Logf("sink arrivals per 5 s window: %v (most in any 5 s: %d; bound %d)", fixed, sliding, bound)
			if len(got) != n {
				t.Fatalf("the sink got %d of %d messages", len(got), n)
			}
			if sliding > bound {
				t.Errorf("%d messages arrived within 5 s; the bound is %d", sliding, bound)
			}
			noBounce(t, got, procs...)
		})
	}
}

// shapingUsers are users of the classes the priority and fairness tests
// use, each with the password "pw" and the addresses *@<name>.example and
// *@urgent.example.
func shapingUsers(t *testing.T, classes map[string]string) string {
	h, err := bcrypt.GenerateFromPassword([]byte("pw"), bcrypt.MinCost)
	if err != nil {
		t.Fatal(err)
	}
	var b strings.Builder
	for _, name := range slices.Sorted(maps.Keys(classes)) {
		fmt.Fprintf(&b, "  %s:\n    password_hash: %q\n    addresses: [\"*@%s.example\", \"*@urgent.example\"]\n    class: %s\n", name, h, name, classes[name])
	}
	return b.String()
}

// session sends the messages whose subjects are given, in one session
// as user (password "pw"), from user@domain.
func session(addr, user, domain string, subjects []string) error {
	c, err := smtp.DialTLS(addr, &tls.Config{InsecureSkipVerify: true})
	if err != nil {
		return err
	}
	defer c.Close()
	c.CommandTimeout, c.SubmissionTimeout = 30*time.Second, 30*time.Second
	if err := c.Auth(sasl.NewPlainClient("", user, "pw")); err != nil {
		return err
	}
	from := user + "@" + domain
	for _, subj := range subjects {
		msg := fmt.Sprintf("From: %s\r\nSubject: %s\r\n\r\nx\r\n", from, subj)
		if err := c.SendMail(from, []string{"r@example.org"}, strings.NewReader(msg)); err != nil {
			return fmt.Errorf("%s: %w", subj, err)
		}
	}
	return c.Quit()
}

// sessions sends n messages as user from user@domain over k sessions at
// once, subjects "<domain> <i>".
func sessions(t *testing.T, addr, user, domain string, n, k int) {
	t.Helper()
	var wg sync.WaitGroup
	errs := make(chan error, k)
	for j := 0; j < k; j++ {
		var subj []string
		for i := j; i < n; i += k {
			subj = append(subj, fmt.Sprint(domain, " ", i))
		}
		wg.Add(1)
		go func() {
			defer wg.Done()
			if err := session(addr, user, domain, subj); err != nil {
				errs <- err
			}
		}()
	}
	wg.Wait()
	close(errs)
	for err := range errs {
		t.Fatal(err)
	}
}

// arrivalOrder says of each message the sink has, in order of arrival,
// who sent it (user, "urgent" when from urgent.example).
func arrivalOrder(msgs []relaytest.Message) []string {
	slices.SortFunc(msgs, func(a, b relaytest.Message) int { return a.At.Compare(b.At) })
	out := make([]string, len(msgs))
	for i, m := range msgs {
		user, domain, _ := strings.Cut(m.From, "@")
		out[i] = user
		if domain == "urgent.example" {
			out[i] = "urgent"
		}
	}
	return out
}

// prioritySetup is one relay (memory limits) whose upstream takes 2
// messages a second, with the users of classes; a route gives mail from
// urgent.example high priority.
func prioritySetup(t *testing.T, classes map[string]string, classYAML string) (*relaytest.Sink, *relayEnv, *proc) {
	s := sink(t, "127.0.0.1:0")
	e := newRelayEnv(t, envOpts{users: shapingUsers(t, classes),
		upstreams: fmt.Sprintf("upstreams:\n  - {name: up, url: \"smtp://%s\", tls: none, timeout: 5s, limits: {messages: \"2/s\"}}\n"+
			"routes:\n  - {match: {sender_domains: [urgent.example]}, upstreams: [up], priority: high}\n  - {upstreams: [up]}\n", s.Addr),
		extra: "ratelimit:\n  classes:\n" + classYAML})
	return s, e, e.start(t)
}

// Priority: 50 bulk messages (by their class) wait for the upstream's
// budget, then the same user sends 3 high ones (by their route); the high
// ones arrive before the 10th bulk one (of every 21 messages let go while
// all three priorities wait, 16 are high, 4 normal, 1 bulk). One user
// sends both, so that its turns among users play no part.
func TestShapingPriority(t *testing.T) {
	s, e, _ := prioritySetup(t, map[string]string{"bulky": "bulk"}, "    bulk: {priority: bulk}\n")
	sessions(t, e.implicit, "bulky", "bulky.example", 50, 5)
	before := len(s.Messages())
	sessions(t, e.implicit, "bulky", "urgent.example", 3, 1)
	got := s.Wait(before+13, 30*time.Second)
	order := arrivalOrder(got)
	t.Logf("arrival order: %s (%d bulk had arrived when the high ones were sent)", strings.Join(order, " "), before)
	bulk := 0
	high := 0
	for _, who := range order {
		switch who {
		case "bulky":
			bulk++
		case "urgent":
			high++
		}
		if bulk == 10 && high < 3 {
			t.Fatalf("the 10th bulk message arrived before the 3 high ones (%d of them)", high)
		}
	}
	if high != 3 {
		t.Fatalf("%d of 3 high messages arrived", high)
	}
}

// Fairness: user A sends 100 messages, then user B 5, at one priority.
// Users take turns in the lane, so B's arrive among the next A's, not
// after all of A's: between B's first message sent and its last arrived,
// at most 5 of A's (one per turn) and 2 in flight.
func TestShapingFairness(t *testing.T) {
	s, e, _ := prioritySetup(t, map[string]string{"appa": "default", "appb": "default"}, "    default: {}\n")
	sessions(t, e.implicit, "appa", "appa.example", 100, 5)
	before := len(s.Messages())
	sessions(t, e.implicit, "appb", "appb.example", 5, 1)
	relaytest.Eventually(t, "B's 5 messages", 30*time.Second, func() bool {
		n := 0
		for _, who := range arrivalOrder(s.Messages()) {
			if who == "appb" {
				n++
			}
		}
		return n == 5
	})
	order := arrivalOrder(s.Messages())
	last := slices.Index(order, "appb")
	for i, who := range order {
		if who == "appb" {
			last = i
		}
	}
	a := 0
	for _, who := range order[before : last+1] {
		if who == "appa" {
			a++
		}
	}
	t.Logf("arrival order: %s (%d of A's had arrived when B sent)", strings.Join(order, " "), before)
	if a > 7 {
		t.Errorf("%d of A's messages arrived between B's first sent and its last arrived; want at most 7", a)
	}
}

// get is the body of GET url, and its status code.
func get(t *testing.T, url string) (string, int) {
	t.Helper()
	resp, err := http.Get(url)
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	b, _ := io.ReadAll(resp.Body)
	return string(b), resp.StatusCode
}

// What waits for an upstream's limits is visible: queue list says so
// against each message, limits show --upstream and the admin API show
// the budget, /metrics counts the waiting.
func TestShapingVisible(t *testing.T) {
	s := sink(t, "127.0.0.1:0")
	web := freePort(t)
	e := newRelayEnv(t, envOpts{
		upstreams: fmt.Sprintf("upstreams:\n  - {name: up, url: \"smtp://%s\", tls: none, timeout: 5s, limits: {messages: \"2/m\", connections: 1}}\n", s.Addr),
		extra:     fmt.Sprintf("metrics: {listen: %q}\n", web)})
	e.start(t)
	start := time.Now()
	submitMany(t, []string{e.implicit}, 3, func(i int) string { return fmt.Sprint("visible ", i) })
	s.Wait(1, 20*time.Second)

	var list string
	relaytest.Eventually(t, "queue list shows two waiting", 10*time.Second, func() bool {
		list, _ = runCLI("queue", "list", "--config", e.config)
		return strings.Count(list, "waiting for upstream rate (up)") == 2
	})
	if n := counts(t, list, `(\d+) message\(s\)`)[0]; n != 2 {
		t.Errorf("queue list holds %d messages, want 2:\n%s", n, list)
	}
	t.Logf("queue list after %s:\n%s", time.Since(start).Round(time.Millisecond), list)
	out, err := runCLI("limits", "show", "--upstream", "up", "--config", e.config)
	t.Logf("limits show --upstream up:\n%s", out)
	if err != nil || !strings.Contains(out, `upstream up (limits kept as "upstream:up")`) ||
		!regexp.MustCompile(`messages +2/m +0 left`).MatchString(out) || !strings.Contains(out, "connections 1") || !strings.Contains(out, "not on hold") {
		t.Errorf("limits show --upstream up: %v\n%s", err, out)
	}
	body, code := get(t, "http://"+web+"/v1/upstreams/up/limits")
	var v daemon.UpstreamView
	if err := json.Unmarshal([]byte(body), &v); code != 200 || err != nil || v.Identity != "upstream:up" || len(v.Limits) != 1 || v.Held {
		t.Errorf("GET /v1/upstreams/up/limits: %d %s", code, body)
	}
	if _, code := get(t, "http://"+web+"/v1/upstreams/nothere/limits"); code != 404 {
		t.Errorf("an unknown upstream: %d, want 404", code)
	}
	metrics, _ := get(t, "http://"+web+"/metrics")
	if !strings.Contains(metrics, `smarthost_upstream_shaping_waiting{reason="rate",upstream="up"} 2`) {
		t.Errorf("/metrics has no 2 waiting for up:\n%s", grepLines(metrics, "shaping"))
	}
}

// grepLines are the lines of text that contain s.
func grepLines(text, s string) string {
	var out []string
	for _, l := range strings.Split(text, "\n") {
		if strings.Contains(l, s) {
			out = append(out, l)
		}
	}
	return strings.Join(out, "\n")
}
