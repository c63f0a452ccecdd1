package queue

import (
	"path"
	"slices"
	"strings"
	"time"
)

// The states of a queued message, as Postfix admins know them.
const (
	StateActive   = "active"   // being delivered, or awaiting its first attempt
	StateDeferred = "deferred" // an attempt failed; waiting for the next
	StateHeld     = "held"     // on hold: not attempted until released
)

// Filter picks queued messages, as `smarthost queue list|hold|release|
// delete` take them. Every field set must match; the zero Filter matches
// every message.
type Filter struct {
	IDs []string // any of these queue IDs
	// From and To match the sender and any recipient: an address, "@domain"
	// for every address of a domain, or a pattern with "*" (any run of
	// characters); letter case does not matter.
	From, To  string
	OlderThan time.Duration
	Upstream  string // the upstream a pending recipient was last tried at
	State     string // StateActive, StateDeferred or StateHeld
}

// Empty reports whether f picks every message.
func (f Filter) Empty() bool {
	return len(f.IDs) == 0 && f.From == "" && f.To == "" && f.OlderThan == 0 && f.Upstream == "" && f.State == ""
}

// State is m's state now; busy: a worker is delivering it.
func (m *Message) State(busy bool) string {
	switch {
	case !m.HeldSince.IsZero():
		return StateHeld
	case busy || m.Attempts == 0:
		return StateActive
	}
	return StateDeferred
}

// Match reports whether f picks m (in state, at now).
func (f Filter) Match(m *Message, state string, now time.Time) bool {
	if len(f.IDs) > 0 && !slices.Contains(f.IDs, m.ID) {
		return false
	}
	if f.From != "" && !matchAddr(f.From, m.From) {
		return false
	}
	if f.To != "" && !slices.ContainsFunc(m.Recipients, func(r Recipient) bool { return matchAddr(f.To, r.Addr) }) {
		return false
	}
	if f.OlderThan > 0 && now.Sub(m.Created) < f.OlderThan {
		return false
	}
	if f.Upstream != "" && !slices.ContainsFunc(m.Recipients, func(r Recipient) bool {
		return r.Status == StatusPending && r.LastUpstream == f.Upstream
	}) {
		return false
	}
	return f.State == "" || f.State == state
}

// matchAddr matches an address against a filter's address, "@domain" or
// pattern. "<>" or "" in a pattern's place matches the null sender.
func matchAddr(pattern, addr string) bool {
	pattern, addr = strings.ToLower(pattern), strings.ToLower(addr)
	if pattern == "<>" {
		return addr == ""
	}
	if strings.HasPrefix(pattern, "@") {
		pattern = "*" + pattern
	}
	if !strings.Contains(pattern, "*") {
		return pattern == addr
	}
	// path.Match treats "/" and "\\" specially; neither belongs in a
	// pattern of an address, and "?" and "[" are taken as themselves.
	pattern = strings.NewReplacer(`\`, `\\`, "?", `\?`, "[", `\[`).Replace(pattern)
	ok, err := path.Match(pattern, strings.ReplaceAll(addr, "/", "\x00"))
	return err == nil && ok
}
