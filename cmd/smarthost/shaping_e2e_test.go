package main

import (
	"crypto/rand"
	"encoding/hex"
	"fmt"
	"slices"
	"strings"
	"sync"
	"testing"
	"time"

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
	ups := fmt.Sprintf("upstreams:\n  - {name: %s, url: \"smtp://%s\", tls: none, timeout: 5s, limits: {messages: \"%d/5s\"}}\n",
		uniqueName("shaped"), s.Addr, shapeLimit)
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
