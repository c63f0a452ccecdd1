package ratelimit

// Against the real redis-server and three-node Redis Cluster that
// scripts/test.sh starts; skipped without them, failed under CI.

import (
	"context"
	"errors"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/redis/go-redis/v9"

	"github.com/smarthost/smarthost/relay/relaytest"
)

func env(t testing.TB, name string) string { return relaytest.Service(t, name) }

func client(t testing.TB, addrs ...string) redis.UniversalClient {
	c := redis.NewUniversalClient(&redis.UniversalOptions{Addrs: addrs, DialTimeout: time.Second, ReadTimeout: time.Second, WriteTimeout: time.Second, MaxRetries: 1})
	t.Cleanup(func() { c.Close() })
	return c
}

func TestRedisLimiter(t *testing.T) {
	r := NewRedis(client(t, env(t, "SMARTHOST_TEST_REDIS_ADDR")))
	testLimiter(t, r, nil)
	testExactUnderConcurrency(t, r)
}

func TestRedisClusterLimiter(t *testing.T) {
	addrs := strings.Split(env(t, "SMARTHOST_TEST_REDIS_CLUSTER"), ",")
	c := client(t, addrs...)
	if _, ok := c.(*redis.ClusterClient); !ok {
		t.Fatalf("several addresses gave a %T, want a cluster client", c)
	}
	r := NewRedis(c)
	testLimiter(t, r, nil)
	testExactUnderConcurrency(t, r)
	// Quotas on a cluster: every key of one user in one slot.
	q := NewQuotas(Config{Classes: map[string]Class{"default": {Messages: &Rate{2, time.Hour}, Recipients: &Rate{2, time.Hour}}}}, r, quiet())
	user := "cluster-user-" + strconv.FormatInt(time.Now().UnixNano(), 10)
	for i := 0; i < 2; i++ {
		if err := q.Mail(context.Background(), user, ""); err != nil {
			t.Fatal(err)
		}
	}
	var ex *ExceededError
	if err := q.Mail(context.Background(), user, ""); !errors.As(err, &ex) {
		t.Fatalf("third message on the cluster: %v", err)
	}
	ctx := context.Background()
	s1, _ := c.(*redis.ClusterClient).ClusterKeySlot(ctx, "rate:"+key(user, "messages")).Result()
	s2, _ := c.(*redis.ClusterClient).ClusterKeySlot(ctx, "rate:"+key(user, "bytes")).Result()
	if s1 != s2 {
		t.Errorf("one user's keys in slots %d and %d", s1, s2)
	}
}

// Keys carry TTLs, so idle users leave nothing in Redis.
func TestRedisKeysExpire(t *testing.T) {
	c := client(t, env(t, "SMARTHOST_TEST_REDIS_ADDR"))
	q := NewQuotas(Config{Classes: map[string]Class{"default": {Messages: &Rate{10, time.Hour}}}}, NewRedis(c), quiet())
	user := "ttl-user-" + strconv.FormatInt(time.Now().UnixNano(), 10)
	if err := q.Mail(context.Background(), user, ""); err != nil {
		t.Fatal(err)
	}
	ttl, err := c.TTL(context.Background(), "rate:"+key(user, "messages")).Result()
	if err != nil || ttl <= 0 || ttl > 6*time.Minute+time.Second {
		t.Fatalf("TTL %s %v, want at most one emission interval (6m)", ttl, err)
	}
}

// redis-server frozen mid-run: checks fail fast as ErrUnavailable (or pass,
// with allow), and work again once it runs, without a new client.
func TestRedisStoppedAndResumed(t *testing.T) {
	r := NewRedis(client(t, env(t, "SMARTHOST_TEST_REDIS_ADDR")))
	cls := map[string]Class{"default": {Messages: &Rate{1000, time.Hour}}}
	tempfail := NewQuotas(Config{Classes: cls, Timeout: 300 * time.Millisecond}, r, quiet())
	allow := NewQuotas(Config{Classes: cls, Timeout: 300 * time.Millisecond, AllowOnError: true}, r, quiet())
	user := "outage-" + strconv.FormatInt(time.Now().UnixNano(), 10)
	if err := tempfail.Mail(context.Background(), user, ""); err != nil {
		t.Fatal(err)
	}
	resume := relaytest.Freeze(t, "SMARTHOST_TEST_REDIS_PIDFILE")
	start := time.Now()
	if err := tempfail.Mail(context.Background(), user, ""); !errors.Is(err, ErrUnavailable) {
		t.Fatalf("tempfail while redis is stopped: %v", err)
	}
	if d := time.Since(start); d > 3*time.Second {
		t.Errorf("a check took %s with a 300ms timeout", d)
	}
	if err := allow.Mail(context.Background(), user, ""); err != nil {
		t.Fatalf("allow while redis is stopped: %v", err)
	}
	resume()
	relaytest.Eventually(t, "the recovery after SIGCONT", 10*time.Second, func() bool {
		return tempfail.Mail(context.Background(), user, "") == nil
	})
}

func BenchmarkQuotasMailRedis(b *testing.B) {
	q := NewQuotas(Config{Classes: map[string]Class{"default": {Messages: &Rate{1 << 40, time.Hour}}}},
		NewRedis(client(b, env(b, "SMARTHOST_TEST_REDIS_ADDR"))), quiet())
	ctx := context.Background()
	for i := 0; i < b.N; i++ {
		if err := q.Mail(ctx, "bench-user", ""); err != nil {
			b.Fatal(err)
		}
	}
}

// Through Redis Sentinel: the client asks the sentinel for the master.
func TestRedisSentinelLimiter(t *testing.T) {
	sentinel := env(t, "SMARTHOST_TEST_REDIS_SENTINEL")
	c := redis.NewUniversalClient(&redis.UniversalOptions{Addrs: []string{sentinel}, MasterName: "smarthost",
		DialTimeout: time.Second, ReadTimeout: time.Second, WriteTimeout: time.Second})
	t.Cleanup(func() { c.Close() })
	if _, ok := c.(*redis.Client); !ok {
		t.Fatalf("a master name gave a %T, want a failover client", c)
	}
	r := NewRedis(c)
	testLimiter(t, r, nil)
	testExactUnderConcurrency(t, r)
}
