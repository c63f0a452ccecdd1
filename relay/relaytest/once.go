package relaytest

import (
	"net/mail"
	"sort"
	"strings"
	"testing"
	"time"
)

// Quiet is how long a sink must have received nothing, with every queue
// involved empty, before a test counts what arrived (Settled): longer
// than the relays' retry interval in the tests (200 ms) and than a
// delivery on loopback takes, so that a copy still on its way is counted.
const Quiet = 2 * time.Second

// Settled waits, within deadline, until idle reports true (every queue
// involved is empty: nothing more can be sent) and the sink has received
// nothing for quiet; it returns everything that arrived. Counting after
// this sees a duplicate that arrives late, which Wait(n) misses: it
// returns at the n-th message.
func (s *Sink) Settled(t testing.TB, quiet, deadline time.Duration, idle func() bool) []Message {
	t.Helper()
	Eventually(t, "the queues empty and the sink quiet", deadline, func() bool {
		if !idle() {
			return false
		}
		s.mu.Lock()
		last := s.last
		s.mu.Unlock()
		return time.Since(last) >= quiet
	})
	return s.Messages()
}

// ExactlyOnce fails the test unless msgs hold each of want exactly once
// and nothing else, by key (a header field, a queue ID), and logs the
// count. Call it on what Settled returned.
func ExactlyOnce(t testing.TB, msgs []Message, key func(Message) string, want []string) {
	t.Helper()
	seen := map[string]int{}
	for _, m := range msgs {
		seen[key(m)]++
	}
	wanted := map[string]bool{}
	var missing, twice, unknown []string
	for _, w := range want {
		wanted[w] = true
		switch n := seen[w]; {
		case n == 0:
			missing = append(missing, w)
		case n > 1:
			twice = append(twice, w)
		}
	}
	for k := range seen {
		if !wanted[k] {
			unknown = append(unknown, k)
		}
	}
	sort.Strings(unknown)
	if len(msgs) != len(want) || len(missing)+len(twice)+len(unknown) > 0 {
		t.Errorf("%d messages arrived, want %d, each once: missing %q; more than once %q; not sent %q",
			len(msgs), len(want), missing, twice, unknown)
		return
	}
	t.Logf("exactly once: %d messages arrived, %d distinct, none twice", len(msgs), len(seen))
}

// Header returns a key for ExactlyOnce: the value of a header field
// (Message-Id, Subject), "" if the message does not parse.
func Header(name string) func(Message) string {
	return func(m Message) string {
		pm, err := mail.ReadMessage(strings.NewReader(string(m.Data)))
		if err != nil {
			return ""
		}
		return pm.Header.Get(name)
	}
}
