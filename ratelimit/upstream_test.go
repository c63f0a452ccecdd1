package ratelimit

import (
	"context"
	"fmt"
	"math/rand"
	"net"
	"sort"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/redis/go-redis/v9"

	"github.com/smarthost/smarthost/relay/relaytest"
)

// testUpstreamStore is what every upstreamStore must do for shaping.
// advance moves the store's clock (nil for Redis, which keeps its own:
// waits are then real, and short).
func testUpstreamStore(t *testing.T, st upstreamStore, advance func(time.Duration)) {
	ctx := context.Background()
	id := fmt.Sprintf("id%d", rand.Int63())
	// pass lets d go by on the store's clock, after which cond holds: the
	// memory store's clock is moved; Redis keeps its own, so its TTLs run
	// out in real time, and the test waits for cond.
	pass := func(d time.Duration, what string, cond func() bool) {
		t.Helper()
		if advance != nil {
			advance(d)
			if !cond() {
				t.Fatalf("after %s: not %s", d, what)
			}
			return
		}
		relaytest.Eventually(t, what, 5*time.Second, cond)
	}

	if h, err := st.holdState(ctx, id); err != nil || h != (hold{}) {
		t.Fatalf("fresh identity: %+v %v, want no hold", h, err)
	}
	if ok, _ := st.probe(ctx, id, time.Minute); !ok {
		t.Fatal("no hold, yet a probe is refused")
	}
	// A throttle reply starts a hold at the base cool-down; a second one
	// while it lasts (a session already under way) does not make it grow.
	h, err := st.throttle(ctx, id, 200*time.Millisecond, 800*time.Millisecond)
	if err != nil || h.Level != 1 || h.Left != 200*time.Millisecond {
		t.Fatalf("first throttle: %+v %v, want level 1 for 200ms", h, err)
	}
	if h, _ = st.throttle(ctx, id, 200*time.Millisecond, 800*time.Millisecond); h.Level != 1 || h.Left > 200*time.Millisecond {
		t.Fatalf("throttle during the hold: %+v, want the same hold", h)
	}
	if h, _ = st.holdState(ctx, id); h.Left <= 0 || h.Level != 1 {
		t.Fatalf("held: %+v", h)
	}
	// The hold ends but is not cleared: one probe, and one only.
	pass(250*time.Millisecond, "the cool-down to end at level 1", func() bool {
		h, _ = st.holdState(ctx, id)
		return h.Left == 0 && h.Level == 1
	})
	if ok, _ := st.probe(ctx, id, time.Minute); !ok {
		t.Fatal("first probe refused")
	}
	if ok, _ := st.probe(ctx, id, time.Minute); ok {
		t.Fatal("a second probe while the first is out")
	}
	if h, _ = st.holdState(ctx, id); !h.Probing {
		t.Fatalf("probe out, state %+v", h)
	}
	// The probe is throttled too: the cool-down doubles, and again.
	if h, _ = st.throttle(ctx, id, 200*time.Millisecond, 800*time.Millisecond); h.Level != 2 || h.Left != 400*time.Millisecond {
		t.Fatalf("second throttle: %+v, want level 2 for 400ms", h)
	}
	pass(450*time.Millisecond, "the second cool-down to end", func() bool {
		h, _ = st.holdState(ctx, id)
		return h.Left == 0
	})
	if h, _ = st.throttle(ctx, id, 200*time.Millisecond, 800*time.Millisecond); h.Level != 3 || h.Left != 800*time.Millisecond {
		t.Fatalf("third throttle: %+v, want level 3 for 800ms", h)
	}
	pass(850*time.Millisecond, "the third cool-down to end", func() bool {
		h, _ = st.holdState(ctx, id)
		return h.Left == 0
	})
	if h, _ = st.throttle(ctx, id, 200*time.Millisecond, 800*time.Millisecond); h.Level != 4 || h.Left != 800*time.Millisecond {
		t.Fatalf("fourth throttle: %+v, want level 4 held at the 800ms ceiling", h)
	}
	// A probe that went through ends it all.
	if err := st.clear(ctx, id); err != nil {
		t.Fatal(err)
	}
	if h, _ = st.holdState(ctx, id); h != (hold{}) {
		t.Fatalf("after clear: %+v", h)
	}

	// Leases: at most the limit, the same session may renew, a released
	// or expired one frees its place.
	for i := 0; i < 2; i++ {
		if ok, err := st.lease(ctx, id, fmt.Sprint("s", i), 2, time.Minute); !ok || err != nil {
			t.Fatalf("lease %d: %v %v", i, ok, err)
		}
	}
	if ok, _ := st.lease(ctx, id, "s2", 2, time.Minute); ok {
		t.Fatal("a third lease with a limit of two")
	}
	if lost, _ := st.renew(ctx, id, []string{"s0", "s1", "s2"}, 2, time.Minute); len(lost) != 1 || lost[0] != "s2" {
		t.Fatalf("renew: lost %q, want [s2]", lost)
	}
	if n, _ := st.sessions(ctx, id); n != 2 {
		t.Fatalf("%d sessions, want 2", n)
	}
	st.unlease(ctx, id, "s0")
	if ok, _ := st.lease(ctx, id, "s2", 2, 200*time.Millisecond); !ok {
		t.Fatal("no lease after one was released")
	}
	if ok, _ := st.lease(ctx, id, "s3", 2, time.Minute); ok {
		t.Fatal("a lease over the limit")
	}
	// s2's node died: its lease expires, and frees the place.
	pass(250*time.Millisecond, "s2's lease to expire", func() bool {
		ok, _ := st.lease(ctx, id, "s3", 2, time.Minute)
		return ok
	})

	node := fmt.Sprintf("node%d", rand.Int63())
	n1, err := st.heartbeat(ctx, node+"a", time.Minute)
	if err != nil {
		t.Fatal(err)
	}
	if n2, _ := st.heartbeat(ctx, node+"b", time.Minute); n2 != n1+1 {
		t.Fatalf("two nodes counted as %d then %d", n1, n2)
	}
}

func TestMemoryUpstreamStore(t *testing.T) {
	now := time.Unix(1_700_000_000, 0)
	var mu sync.Mutex
	m := NewMemory(func() time.Time { mu.Lock(); defer mu.Unlock(); return now })
	testUpstreamStore(t, m, func(d time.Duration) { mu.Lock(); now = now.Add(d); mu.Unlock() })
}

func TestRedisUpstreamStore(t *testing.T) {
	testUpstreamStore(t, NewRedis(client(t, env(t, "SMARTHOST_TEST_REDIS_ADDR"))), nil)
}

func TestRedisClusterUpstreamStore(t *testing.T) {
	c := client(t, strings.Split(env(t, "SMARTHOST_TEST_REDIS_CLUSTER"), ",")...)
	testUpstreamStore(t, NewRedis(c), nil)
}

// testShaperPace: two nodes sharing one store send at the pace of the
// limit together, not each: of 25 admissions, no second holds more than
// 10 (and one more at its edge), so the 25 take at least 2.4 s.
func testShaperPace(t *testing.T, a, b *Shaper) {
	ctx := context.Background()
	bud := Budget{Key: fmt.Sprintf("pace%d", rand.Int63()), Limits: UpstreamLimits{Messages: &Rate{N: 10, Per: time.Second}}}
	var mu sync.Mutex
	var at []time.Time
	var wg sync.WaitGroup
	deadline := time.Now().Add(30 * time.Second)
	for _, s := range []*Shaper{a, b, a, b} {
		wg.Add(1)
		go func() {
			defer wg.Done()
			bb := bud
			for time.Now().Before(deadline) {
				mu.Lock()
				done := len(at) >= 25
				mu.Unlock()
				if done {
					return
				}
				ad := s.Admit(ctx, &bb, 1)
				if ad.Go {
					mu.Lock()
					at = append(at, time.Now())
					mu.Unlock()
					continue
				}
				if ad.Reason != ReasonRate || ad.Wait <= 0 || ad.Wait > 100*time.Millisecond {
					t.Errorf("refused with %+v, want a wait for the rate of at most one interval", ad)
					return
				}
				time.Sleep(ad.Wait) // a sender doing as told
			}
		}()
	}
	wg.Wait()
	sort.Slice(at, func(i, j int) bool { return at[i].Before(at[j]) })
	if len(at) < 25 {
		t.Fatalf("%d admissions in 30 s", len(at))
	}
	for i := range at {
		n := 0
		for j := i; j < len(at) && at[j].Sub(at[i]) < time.Second; j++ {
			n++
		}
		if n > 11 {
			t.Errorf("%d admissions in the second from admission %d, want at most 11", n, i)
		}
	}
	if took := at[len(at)-1].Sub(at[0]); took < 2300*time.Millisecond {
		t.Errorf("25 admissions in %s, want at least 2.4 s at 10/s", took)
	}
}

func TestShaperPaceMemory(t *testing.T) {
	m := NewMemory(nil)
	testShaperPace(t, NewShaper(ShaperConfig{}, m, quiet()), NewShaper(ShaperConfig{}, m, quiet()))
}

func TestShaperPaceRedis(t *testing.T) {
	addr := env(t, "SMARTHOST_TEST_REDIS_ADDR")
	testShaperPace(t, NewShaper(ShaperConfig{}, NewRedis(client(t, addr)), quiet()),
		NewShaper(ShaperConfig{}, NewRedis(client(t, addr)), quiet()))
}

// TestShaperHoldAndProbe: a throttle reply holds every node; after the
// cool-down exactly one probe goes, and its success ends the hold.
func TestShaperHoldAndProbe(t *testing.T) {
	ctx := context.Background()
	st := NewRedis(client(t, env(t, "SMARTHOST_TEST_REDIS_ADDR")))
	a, b := NewShaper(ShaperConfig{}, st, quiet()), NewShaper(ShaperConfig{}, st, quiet())
	bud := Budget{Key: fmt.Sprintf("hold%d", rand.Int63()), Cooldown: 300 * time.Millisecond}
	if ad := a.Admit(ctx, &bud, 1); !ad.Go || ad.Probe {
		t.Fatalf("before any throttle: %+v", ad)
	}
	if h := a.Throttled(ctx, &bud); !h.Held || h.Wait != 300*time.Millisecond {
		t.Fatalf("throttled: %+v", h)
	}
	if ad := b.Admit(ctx, &bud, 1); ad.Go || !ad.Held || ad.Reason != ReasonHold {
		t.Fatalf("the other node during the hold: %+v, want held", ad)
	}
	var probe Admission
	relaytest.Eventually(t, "the hold to end", 5*time.Second, func() bool {
		probe = a.Admit(ctx, &bud, 1)
		return probe.Go
	})
	if !probe.Probe {
		t.Fatalf("first admission after the hold: %+v, want the probe", probe)
	}
	if ad := b.Admit(ctx, &bud, 1); ad.Go || !ad.Held {
		t.Fatalf("second admission while the probe is out: %+v, want held", ad)
	}
	a.Sent(ctx, &bud, probe)
	if ad := b.Admit(ctx, &bud, 1); !ad.Go || ad.Probe {
		t.Fatalf("after the probe went through: %+v, want go", ad)
	}
}

// TestShaperLeasesOfADeadNode: a node that dies with sessions open keeps
// nobody out for longer than its leases live.
func TestShaperLeasesOfADeadNode(t *testing.T) {
	ctx := context.Background()
	addr := env(t, "SMARTHOST_TEST_REDIS_ADDR")
	cfg := ShaperConfig{Heartbeat: 100 * time.Millisecond}
	dead := NewShaper(cfg, NewRedis(client(t, addr)), quiet())
	live := NewShaper(cfg, NewRedis(client(t, addr)), quiet())
	rctx, stop := context.WithCancel(ctx)
	defer stop()
	go live.Run(rctx)
	bud := Budget{Key: fmt.Sprintf("lease%d", rand.Int63()), Limits: UpstreamLimits{Connections: 2}}
	for i := 0; i < 2; i++ {
		if l, ad := dead.Lease(ctx, &bud); l == nil || !ad.Go {
			t.Fatalf("lease %d: %+v", i, ad)
		}
	}
	if l, ad := live.Lease(ctx, &bud); l != nil || ad.Reason != ReasonConnections {
		t.Fatalf("third session: %+v, want a wait for connections", ad)
	}
	start := time.Now()
	var l *Lease
	relaytest.Eventually(t, "the dead node's leases to expire", 5*time.Second, func() bool {
		l, _ = live.Lease(ctx, &bud)
		return l != nil
	})
	if took := time.Since(start); took < 200*time.Millisecond {
		t.Errorf("a place came free after %s, before the dead node's leases could expire (300ms)", took)
	}
	// The live node's own lease outlives its first life: Run renews it.
	rdb := client(t, addr)
	first, _ := rdb.ZScore(ctx, "smarthost:{upstream:"+bud.Key+"}:sessions", l.id).Result()
	relaytest.Eventually(t, "the lease to be renewed twice", 5*time.Second, func() bool {
		exp, err := rdb.ZScore(ctx, "smarthost:{upstream:"+bud.Key+"}:sessions", l.id).Result()
		return err == nil && exp >= first+200
	})
	if n, _ := live.store.sessions(ctx, bud.Key); n != 1 || l.Lost() {
		t.Fatalf("the renewed lease: %d sessions, lost %v; want 1, kept", n, l.Lost())
	}
	l.Release()
	if n, _ := live.store.sessions(ctx, bud.Key); n != 0 {
		t.Fatalf("%d sessions after release", n)
	}
}

// deadRedis is a client of a port where nothing listens.
func deadRedis(t *testing.T) *Redis {
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	addr := ln.Addr().String()
	ln.Close()
	return NewRedis(redis.NewClient(&redis.Options{Addr: addr, DialTimeout: 100 * time.Millisecond, MaxRetries: 0}))
}

// TestShaperStoreDown: with the shared store unreachable, tempfail waits
// (an upstream with limits) and allow sends under this node's share of the
// limit.
func TestShaperStoreDown(t *testing.T) {
	ctx := context.Background()
	bud := Budget{Key: "down", Limits: UpstreamLimits{Messages: &Rate{N: 6, Per: time.Hour}, Connections: 4}}

	tempfail := NewShaper(ShaperConfig{}, deadRedis(t), quiet())
	if ad := tempfail.Admit(ctx, &bud, 1); ad.Go || ad.Reason != ReasonBackend || ad.Wait <= 0 {
		t.Fatalf("tempfail: %+v, want a wait for the store", ad)
	}
	if l, ad := tempfail.Lease(ctx, &bud); l != nil || ad.Reason != ReasonBackend {
		t.Fatalf("tempfail lease: %+v", ad)
	}
	// An upstream without limits has nothing to wait for but holds.
	if ad := tempfail.Admit(ctx, &Budget{Key: "free"}, 1); !ad.Go {
		t.Fatalf("tempfail, no limits: %+v, want go", ad)
	}

	allow := NewShaper(ShaperConfig{AllowOnError: true}, deadRedis(t), quiet())
	allow.nodes = 3 // as the last heartbeat said
	went := 0
	for i := 0; i < 10; i++ {
		if ad := allow.Admit(ctx, &bud, 1); ad.Go {
			went++
		} else if ad.Reason != ReasonRate {
			t.Fatalf("allow: %+v", ad)
		}
	}
	if went != 2 {
		t.Errorf("allow with 3 nodes: %d of 6/h admitted, want this node's share, 2", went)
	}
	var ls []*Lease
	for i := 0; i < 3; i++ {
		if l, _ := allow.Lease(ctx, &bud); l != nil {
			ls = append(ls, l)
		}
	}
	if len(ls) != 1 {
		t.Errorf("allow with 3 nodes: %d of 4 sessions, want this node's share, 1", len(ls))
	}
}
