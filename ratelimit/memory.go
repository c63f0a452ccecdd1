package ratelimit

import (
	"context"
	"sync"
	"time"
)

// Memory is an in-process Limiter with the same GCRA arithmetic as the Redis
// one, for a single node and the quickstart.
type Memory struct {
	now func() time.Time

	mu    sync.Mutex
	tat   map[string]time.Time // theoretical arrival time per key
	calls int

	once sync.Once
	up   *memStore // holds, leases and nodes of upstream shaping
}

// NewMemory makes a Memory limiter; now may be nil (time.Now).
func NewMemory(now func() time.Time) *Memory {
	if now == nil {
		now = time.Now
	}
	return &Memory{now: now, tat: map[string]time.Time{}}
}

func (m *Memory) AllowN(_ context.Context, key string, l Limit, n int64) (Result, error) {
	m.mu.Lock()
	defer m.mu.Unlock()
	now := m.now()
	m.calls++
	if m.calls%4096 == 0 {
		m.expire(now) // keys past their reset hold nothing: drop them
	}
	interval := l.Period / time.Duration(l.Rate)
	tat, ok := m.tat[key]
	if !ok || tat.Before(now) {
		tat = now
	}
	newTAT := tat.Add(interval * time.Duration(n))
	allowAt := newTAT.Add(-interval * time.Duration(l.Burst))
	diff := now.Sub(allowAt)
	if diff < 0 {
		return Result{Allowed: false, RetryAfter: -diff, ResetAfter: tat.Sub(now)}, nil
	}
	if newTAT.After(now) {
		m.tat[key] = newTAT
	} else if n < 0 {
		delete(m.tat, key) // a refund down to a full budget
	}
	return Result{Allowed: true, Remaining: int64(diff / interval), ResetAfter: newTAT.Sub(now)}, nil
}

func (m *Memory) expire(now time.Time) {
	for k, t := range m.tat {
		if !t.After(now) {
			delete(m.tat, k)
		}
	}
}
