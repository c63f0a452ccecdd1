package main

import "testing"

// Nodes that share a secret derive the same keys; the key that seals in a
// period still opens in the next one (a ticket lives one to two periods),
// and another secret gives other keys.
func TestTicketKeys(t *testing.T) {
	secret := []byte("0123456789abcdef0123456789abcdef")
	now, next := ticketKeys(secret, 100), ticketKeys(secret, 101)
	if len(now) != 2 || now[0] == now[1] {
		t.Fatalf("want two distinct keys, got %x", now)
	}
	if next[1] != now[0] {
		t.Error("the key sealing now does not open tickets in the next period")
	}
	if again := ticketKeys(secret, 100); again[0] != now[0] || again[1] != now[1] {
		t.Error("the same secret and period gave other keys")
	}
	if other := ticketKeys([]byte("another secret, as long as needed"), 100); other[0] == now[0] {
		t.Error("another secret gave the same key")
	}
}
