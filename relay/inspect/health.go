package inspect

import (
	"sort"
	"sync"
	"time"

	"github.com/smarthost/smarthost/relay/queue"
)

// Health follows each upstream's outcomes since the relay started, from
// the delivery events: the last that went through, the last that failed
// and what the upstream said then.
type Health struct {
	mu  sync.Mutex
	ups map[string]*UpstreamHealth
}

// UpstreamHealth is one upstream's.
type UpstreamHealth struct {
	Name      string
	LastOK    time.Time
	LastFail  time.Time
	LastReply string // of the last failure: the upstream's reply, or why there was none
	OK, Fail  int    // recipients since the start
}

// State says it in a word: ok (its last outcome went through), failing,
// or idle (nothing tried since the start).
func (u UpstreamHealth) State() string {
	switch {
	case u.LastOK.IsZero() && u.LastFail.IsZero():
		return "idle"
	case u.LastFail.After(u.LastOK):
		return "failing"
	}
	return "ok"
}

var _ queue.Observer = (*Health)(nil)

func NewHealth() *Health { return &Health{ups: map[string]*UpstreamHealth{}} }

// Observe notes a delivery event's outcome for its upstream.
func (h *Health) Observe(e queue.Event) {
	if e.Upstream == "" {
		return
	}
	ok := e.Kind == queue.EventDelivered || e.Kind == queue.EventHandedOff
	failed := e.Kind == queue.EventDeferred || (e.Kind == queue.EventBounced && e.Reason != queue.BounceAdmin)
	if !ok && !failed {
		return
	}
	h.mu.Lock()
	defer h.mu.Unlock()
	u := h.ups[e.Upstream]
	if u == nil {
		u = &UpstreamHealth{Name: e.Upstream}
		h.ups[e.Upstream] = u
	}
	if ok {
		u.OK++
		u.LastOK = e.Time
		return
	}
	u.Fail++
	u.LastFail = e.Time
	u.LastReply = e.Reply
	if u.LastReply == "" {
		u.LastReply = e.Error
	}
}

// Snapshot returns every upstream's health: the configured ones (names),
// in their order, then any other seen (a peer of a drain).
func (h *Health) Snapshot(names []string) []UpstreamHealth {
	h.mu.Lock()
	defer h.mu.Unlock()
	var out []UpstreamHealth
	seen := map[string]bool{}
	for _, n := range names {
		seen[n] = true
		if u := h.ups[n]; u != nil {
			out = append(out, *u)
		} else {
			out = append(out, UpstreamHealth{Name: n})
		}
	}
	var rest []UpstreamHealth
	for n, u := range h.ups {
		if !seen[n] {
			rest = append(rest, *u)
		}
	}
	sort.Slice(rest, func(i, j int) bool { return rest[i].Name < rest[j].Name })
	return append(out, rest...)
}
