package relaytest

import (
	"testing"
	"time"
)

// PollInterval is how often Eventually asks again.
const PollInterval = 20 * time.Millisecond

// Eventually asks cond every PollInterval until it holds, and fails the
// test if it does not within d. It is the one way the tests wait for
// something to happen in the background: every wait has a deadline, and
// no test sleeps to let something happen. Call it from the test's own
// goroutine (it calls t.Fatalf).
func Eventually(t testing.TB, what string, d time.Duration, cond func() bool) {
	t.Helper()
	EventuallyEvery(t, what, d, PollInterval, cond)
}

// EventuallyEvery is Eventually asking cond every interval: for a cond
// that costs a machine under load something to ask (a docker inspect, a
// container's HTTP API).
func EventuallyEvery(t testing.TB, what string, d, interval time.Duration, cond func() bool) {
	t.Helper()
	if !WithinEvery(d, interval, cond) {
		t.Fatalf("timed out after %s waiting for %s", d, what)
	}
}

// Within asks cond every PollInterval until it holds or d passes, and
// reports whether it held: for a goroutine other than the test's, or a
// wait whose end is not a failure.
func Within(d time.Duration, cond func() bool) bool { return WithinEvery(d, PollInterval, cond) }

// WithinEvery is Within asking cond every interval.
func WithinEvery(d, interval time.Duration, cond func() bool) bool {
	deadline := time.Now().Add(d)
	for !cond() {
		if time.Now().After(deadline) {
			return false
		}
		time.Sleep(interval)
	}
	return true
}
