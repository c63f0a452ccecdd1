package main

import (
	"crypto/hmac"
	"crypto/sha256"
	"crypto/tls"
	"fmt"
	"time"
)

// minTicketSecret is the least tls.session_ticket_key_file may hold.
const minTicketSecret = 32

// ticketPeriod is how long one session ticket key seals new tickets; the
// key of the period before still opens them, so a ticket lives one to two
// periods, as with Go's own keys (which it rotates daily).
const ticketPeriod = 24 * time.Hour

// ticketKeys derives the session ticket keys of period n, and of the one
// before, from the secret that every node behind the load balancer shares:
// each node computes the same keys, without talking to the others, and a
// client resumes its session on whichever node it lands. Each key is
// HMAC-SHA256(secret, label and period), so the secret itself never seals a
// ticket, and a key found out opens two periods' tickets at most.
func ticketKeys(secret []byte, n int64) [][32]byte {
	keys := make([][32]byte, 2)
	for i := range keys {
		m := hmac.New(sha256.New, secret)
		fmt.Fprintf(m, "smarthost TLS session ticket key, period %d", n-int64(i))
		copy(keys[i][:], m.Sum(nil))
	}
	return keys
}

// setTicketSecret takes tls.session_ticket_key_file's secret (nil: each
// process keeps Go's own keys); SIGHUP sets it again.
func (h *certHolder) setTicketSecret(secret []byte) {
	h.mu.Lock()
	defer h.mu.Unlock()
	h.secret, h.keyed = secret, nil
}

// sealer is the configuration whose keys seal and open session tickets:
// the keys of the current period derived from the shared secret, or
// without one this process's own (Go's, made at random and rotated).
func (h *certHolder) sealer() *tls.Config {
	h.mu.Lock()
	defer h.mu.Unlock()
	if h.secret == nil {
		if h.own == nil {
			h.own = &tls.Config{}
		}
		return h.own
	}
	n := time.Now().Unix() / int64(ticketPeriod/time.Second)
	if h.keyed == nil || n != h.period {
		c := &tls.Config{}
		c.SetSessionTicketKeys(ticketKeys(h.secret, n))
		h.keyed, h.period = c, n
	}
	return h.keyed
}
