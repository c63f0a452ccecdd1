package ratelimit

import (
	"context"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"math/rand"
	"sync"
	"sync/atomic"
	"testing"
	"time"
)

func quiet() *slog.Logger { return slog.New(slog.NewTextHandler(io.Discard, nil)) }

// testLimiter is what every Limiter must do. advance moves the limiter's
// clock forward; nil when it cannot be moved (Redis uses its own clock).
func testLimiter(t *testing.T, l Limiter, advance func(time.Duration)) {
	ctx := context.Background()
	prefix := fmt.Sprintf("t%d:", rand.Int63())
	lim := Limit{Rate: 5, Burst: 5, Period: time.Hour}

	peek, err := l.AllowN(ctx, prefix+"a", lim, 0)
	if err != nil {
		t.Fatal(err)
	}
	if !peek.Allowed || peek.Remaining != 5 {
		t.Fatalf("fresh key: %+v, want 5 remaining", peek)
	}
	for i := 0; i < 5; i++ {
		r, err := l.AllowN(ctx, prefix+"a", lim, 1)
		if err != nil || !r.Allowed || r.Remaining != int64(4-i) {
			t.Fatalf("event %d: %+v %v", i+1, r, err)
		}
	}
	r, err := l.AllowN(ctx, prefix+"a", lim, 1)
	if err != nil || r.Allowed {
		t.Fatalf("sixth event allowed: %+v %v", r, err)
	}
	if r.RetryAfter < 11*time.Minute || r.RetryAfter > 12*time.Minute {
		t.Errorf("retry after %s, want about 12m (1h/5)", r.RetryAfter)
	}
	if r.ResetAfter < 59*time.Minute || r.ResetAfter > time.Hour {
		t.Errorf("reset after %s, want about 1h", r.ResetAfter)
	}
	// Peeking does not charge, and other keys are untouched.
	if r, _ := l.AllowN(ctx, prefix+"a", lim, 0); r.Remaining != 0 {
		t.Errorf("peek at an empty budget: %+v", r)
	}
	if r, _ := l.AllowN(ctx, prefix+"b", lim, 1); !r.Allowed {
		t.Error("a second key shares the first's budget")
	}
	// A cost above the burst never passes; one at the burst does.
	if r, _ := l.AllowN(ctx, prefix+"c", lim, 6); r.Allowed {
		t.Error("cost above burst allowed")
	}
	if r, _ := l.AllowN(ctx, prefix+"c", lim, 5); !r.Allowed {
		t.Error("cost equal to burst refused on a fresh key")
	}
	if advance != nil {
		advance(12*time.Minute + time.Second)
		if r, _ := l.AllowN(ctx, prefix+"a", lim, 1); !r.Allowed {
			t.Error("no event allowed after one emission interval")
		}
		if r, _ := l.AllowN(ctx, prefix+"a", lim, 1); r.Allowed {
			t.Error("two events allowed after one emission interval")
		}
	}
}

// testExactUnderConcurrency: many goroutines race for a budget of 100;
// exactly 100 win.
func testExactUnderConcurrency(t *testing.T, l Limiter) {
	key := fmt.Sprintf("race%d", rand.Int63())
	lim := Limit{Rate: 100, Burst: 100, Period: time.Hour}
	var won atomic.Int64
	var wg sync.WaitGroup
	for g := 0; g < 8; g++ {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for i := 0; i < 25; i++ {
				if r, err := l.AllowN(context.Background(), key, lim, 1); err == nil && r.Allowed {
					won.Add(1)
				}
			}
		}()
	}
	wg.Wait()
	if won.Load() != 100 {
		t.Fatalf("%d of 200 allowed, want exactly 100", won.Load())
	}
}

type clock struct {
	mu sync.Mutex
	t  time.Time
}

func (c *clock) now() time.Time      { c.mu.Lock(); defer c.mu.Unlock(); return c.t }
func (c *clock) add(d time.Duration) { c.mu.Lock(); defer c.mu.Unlock(); c.t = c.t.Add(d) }

func TestMemoryLimiter(t *testing.T) {
	c := &clock{t: time.Unix(1_800_000_000, 0)}
	testLimiter(t, NewMemory(c.now), c.add)
	testExactUnderConcurrency(t, NewMemory(nil))
}

func TestMemoryForgetsIdleKeys(t *testing.T) {
	c := &clock{t: time.Unix(1_800_000_000, 0)}
	m := NewMemory(c.now)
	lim := Limit{Rate: 1, Burst: 1, Period: time.Second}
	for i := 0; i < 5000; i++ {
		m.AllowN(context.Background(), fmt.Sprint(i), lim, 1)
		c.add(10 * time.Millisecond)
	}
	if n := len(m.tat); n > 4096 {
		t.Fatalf("%d keys kept; idle ones are never dropped", n)
	}
}

// failing is a Limiter whose backend is down.
type failing struct{}

func (failing) AllowN(context.Context, string, Limit, int64) (Result, error) {
	return Result{}, errors.New("dial tcp: connection refused")
}

func TestQuotas(t *testing.T) {
	ctx := context.Background()
	c := &clock{t: time.Unix(1_800_000_000, 0)}
	q := NewQuotas(Config{
		Classes: map[string]Class{
			"default": {Messages: &Rate{2, time.Hour}, Recipients: &Rate{3, time.Hour}, Bytes: &Rate{1000, time.Hour}},
			"bulk":    {Messages: &Rate{5, time.Hour}},
		},
		AuthFailures:   &Rate{3, 10 * time.Minute},
		MaxMessageSize: 500,
	}, NewMemory(c.now), quiet())

	var ex *ExceededError
	for i := 0; i < 2; i++ {
		if err := q.Mail(ctx, "u", ""); err != nil {
			t.Fatal(err)
		}
	}
	if err := q.Mail(ctx, "u", ""); !errors.As(err, &ex) || ex.What != "messages" || ex.RetryAfter <= 0 {
		t.Fatalf("third message: %v", err)
	}
	// An unknown class is the default class; bulk has its own budget.
	if err := q.Mail(ctx, "u", "no-such-class"); !errors.As(err, &ex) {
		t.Fatalf("unknown class: %v", err)
	}
	for i := 0; i < 5; i++ {
		if err := q.Mail(ctx, "b", "bulk"); err != nil {
			t.Fatalf("bulk message %d: %v", i+1, err)
		}
	}
	if err := q.Rcpt(ctx, "b", "bulk"); err != nil {
		t.Fatalf("bulk has no recipient limit: %v", err)
	}
	for i := 0; i < 3; i++ {
		if err := q.Rcpt(ctx, "u", ""); err != nil {
			t.Fatal(err)
		}
	}
	if err := q.Rcpt(ctx, "u", ""); !errors.As(err, &ex) || ex.What != "recipients" {
		t.Fatalf("fourth recipient: %v", err)
	}
	// Bytes: SIZE= is checked without charging; DATA charges.
	if err := q.CheckSize(ctx, "u", "", 900); err != nil {
		t.Fatal(err)
	}
	if err := q.CheckSize(ctx, "u", "", 1001); !errors.As(err, &ex) || ex.What != "bytes" {
		t.Fatalf("SIZE over budget: %v", err)
	}
	if err := q.Bytes(ctx, "u", "", 900); err != nil {
		t.Fatal(err)
	}
	if err := q.CheckSize(ctx, "u", "", 200); !errors.As(err, &ex) {
		t.Fatalf("SIZE after DATA charged: %v", err)
	}
	if err := q.Bytes(ctx, "u", "", 200); !errors.As(err, &ex) {
		t.Fatalf("bytes over budget: %v", err)
	}
	st, err := q.Show(ctx, "u", "")
	if err != nil || len(st) != 3 || st[0].Remaining != 0 || st[2].Remaining != 100 {
		t.Fatalf("Show: %+v %v", st, err)
	}

	// Auth failures: three, then locked even before trying a password.
	for i := 0; i < 3; i++ {
		if err := q.LoginAllowed(ctx, "192.0.2.1"); err != nil {
			t.Fatalf("login %d refused: %v", i+1, err)
		}
		q.LoginFailed(ctx, "192.0.2.1")
	}
	if err := q.LoginAllowed(ctx, "192.0.2.1"); !errors.As(err, &ex) || ex.RetryAfter <= 0 || ex.RetryAfter > 4*time.Minute {
		t.Fatalf("after 3 failures: %v", err)
	}
	if err := q.LoginAllowed(ctx, "192.0.2.2"); err != nil {
		t.Fatalf("another address locked too: %v", err)
	}
	c.add(4 * time.Minute)
	if err := q.LoginAllowed(ctx, "192.0.2.1"); err != nil {
		t.Fatalf("still locked after the interval: %v", err)
	}
}

func TestBackendDown(t *testing.T) {
	ctx := context.Background()
	cls := map[string]Class{"default": {Messages: &Rate{1, time.Hour}}}
	q := NewQuotas(Config{Classes: cls, AuthFailures: &Rate{1, time.Hour}}, failing{}, quiet())
	if err := q.Mail(ctx, "u", ""); !errors.Is(err, ErrUnavailable) {
		t.Fatalf("tempfail: %v", err)
	}
	if err := q.LoginAllowed(ctx, "192.0.2.1"); !errors.Is(err, ErrUnavailable) {
		t.Fatalf("tempfail login: %v", err)
	}
	q = NewQuotas(Config{Classes: cls, AllowOnError: true}, failing{}, quiet())
	if err := q.Mail(ctx, "u", ""); err != nil {
		t.Fatalf("allow: %v", err)
	}
}

func TestKeysShareASlotPerUser(t *testing.T) {
	if k := key("uid=a{b},dc=x", "messages"); k != "smarthost:{uid=a_b_,dc=x}:messages" {
		t.Fatalf("key %q", k)
	}
}

func BenchmarkQuotasMailMemory(b *testing.B) {
	q := NewQuotas(Config{Classes: map[string]Class{"default": {Messages: &Rate{1 << 40, time.Hour}}}}, NewMemory(nil), quiet())
	ctx := context.Background()
	for i := 0; i < b.N; i++ {
		if err := q.Mail(ctx, "user", ""); err != nil {
			b.Fatal(err)
		}
	}
}
