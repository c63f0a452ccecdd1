package ratelimit

import (
	"context"
	"fmt"
	"sync"
	"time"

	"github.com/redis/go-redis/v9"
)

// What upstream shaping keeps beside the GCRA budgets, per sending
// identity: the hold after a throttle reply (its level, which doubles the
// cool-down while throttle replies go on, and the one probe that may end
// it) and the leases of open sessions; and, for all identities, which
// nodes are alive (for the share each takes when the store is down).
// Memory and Redis keep them; the Redis forms are Lua scripts, so that
// every change is one atomic step on the server's clock, whatever the
// nodes' clocks say. redis_rate has no such scripts: they are ours.
type upstreamStore interface {
	Limiter
	// holdState reads the hold of key.
	holdState(ctx context.Context, key string) (hold, error)
	// throttle starts a hold, or returns the one in force: a throttle
	// reply from a session that was already under way when the hold
	// began does not make the cool-down grow.
	throttle(ctx context.Context, key string, base, maxCool time.Duration) (hold, error)
	// clear ends the hold and forgets its level.
	clear(ctx context.Context, key string) error
	// probe takes the right to send the one message that tests an
	// expired hold, for ttl; false if another has it.
	probe(ctx context.Context, key string, ttl time.Duration) (bool, error)
	// unprobe hands the probe back unused.
	unprobe(ctx context.Context, key string) error
	// lease adds session id to key's open sessions if fewer than limit
	// are open; an expired lease no longer counts.
	lease(ctx context.Context, key, id string, limit int, ttl time.Duration) (bool, error)
	// renew extends leases; it returns those that had expired and could
	// not be taken again.
	renew(ctx context.Context, key string, ids []string, limit int, ttl time.Duration) ([]string, error)
	unlease(ctx context.Context, key, id string) error
	// sessions counts key's live leases.
	sessions(ctx context.Context, key string) (int, error)
	// heartbeat says node is alive for ttl and counts the nodes alive.
	heartbeat(ctx context.Context, node string, ttl time.Duration) (int, error)
}

// hold is the state of one identity's hold.
type hold struct {
	Left    time.Duration // until the hold ends; 0: not held
	Level   int           // throttle replies in a row (0: none since the last success)
	Probing bool          // a probe is out
}

var (
	_ upstreamStore = (*Memory)(nil)
	_ upstreamStore = (*Redis)(nil)
)

// cooldown is base doubled for each level past the first, at most maxCool.
func cooldown(level int, base, maxCool time.Duration) time.Duration {
	d := base
	for i := 1; i < level && d < maxCool; i++ {
		d *= 2
	}
	return min(d, maxCool)
}

// levelTTL is how long a hold's level is remembered after it: long enough
// that a throttle reply to the probe finds it, short enough that an
// upstream quiet for a while starts again from the base cool-down.
func levelTTL(cool, maxCool time.Duration) time.Duration { return cool + 2*maxCool }

// memStore is Memory's part of upstreamStore.
type memStore struct {
	mu     sync.Mutex
	holds  map[string]*memHold
	leases map[string]map[string]time.Time // key → session → expiry
	nodes  map[string]time.Time
}

type memHold struct {
	until, levelUntil, probeUntil time.Time
	level                         int
}

func (m *Memory) store() *memStore {
	m.once.Do(func() {
		m.up = &memStore{holds: map[string]*memHold{}, leases: map[string]map[string]time.Time{}, nodes: map[string]time.Time{}}
	})
	return m.up
}

func (m *Memory) holdState(_ context.Context, key string) (hold, error) {
	s := m.store()
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.read(key, m.now()), nil
}

func (s *memStore) read(key string, now time.Time) hold {
	h := s.holds[key]
	if h == nil || !h.levelUntil.After(now) {
		delete(s.holds, key)
		return hold{}
	}
	return hold{Left: max(h.until.Sub(now), 0), Level: h.level, Probing: h.probeUntil.After(now)}
}

func (m *Memory) throttle(_ context.Context, key string, base, maxCool time.Duration) (hold, error) {
	s := m.store()
	s.mu.Lock()
	defer s.mu.Unlock()
	now := m.now()
	if cur := s.read(key, now); cur.Left > 0 {
		return cur, nil
	}
	h := s.holds[key]
	if h == nil {
		h = &memHold{}
		s.holds[key] = h
	}
	h.level++
	cool := cooldown(h.level, base, maxCool)
	h.until, h.levelUntil, h.probeUntil = now.Add(cool), now.Add(levelTTL(cool, maxCool)), time.Time{}
	return hold{Left: cool, Level: h.level}, nil
}

func (m *Memory) clear(_ context.Context, key string) error {
	s := m.store()
	s.mu.Lock()
	delete(s.holds, key)
	s.mu.Unlock()
	return nil
}

func (m *Memory) probe(_ context.Context, key string, ttl time.Duration) (bool, error) {
	s := m.store()
	s.mu.Lock()
	defer s.mu.Unlock()
	now := m.now()
	if s.read(key, now).Level == 0 {
		return true, nil // no hold: nothing to probe
	}
	h := s.holds[key]
	if h.probeUntil.After(now) {
		return false, nil
	}
	h.probeUntil = now.Add(ttl)
	return true, nil
}

func (m *Memory) unprobe(_ context.Context, key string) error {
	s := m.store()
	s.mu.Lock()
	if h := s.holds[key]; h != nil {
		h.probeUntil = time.Time{}
	}
	s.mu.Unlock()
	return nil
}

func (m *Memory) lease(_ context.Context, key, id string, limit int, ttl time.Duration) (bool, error) {
	s := m.store()
	s.mu.Lock()
	defer s.mu.Unlock()
	now := m.now()
	ls := s.live(key, now)
	if _, ok := ls[id]; !ok && len(ls) >= limit {
		return false, nil
	}
	ls[id] = now.Add(ttl)
	return true, nil
}

// live drops key's expired leases and returns the rest.
func (s *memStore) live(key string, now time.Time) map[string]time.Time {
	ls := s.leases[key]
	if ls == nil {
		ls = map[string]time.Time{}
		s.leases[key] = ls
	}
	for id, exp := range ls {
		if !exp.After(now) {
			delete(ls, id)
		}
	}
	return ls
}

func (m *Memory) renew(ctx context.Context, key string, ids []string, limit int, ttl time.Duration) ([]string, error) {
	var lost []string
	for _, id := range ids {
		if ok, _ := m.lease(ctx, key, id, limit, ttl); !ok {
			lost = append(lost, id)
		}
	}
	return lost, nil
}

func (m *Memory) unlease(_ context.Context, key, id string) error {
	s := m.store()
	s.mu.Lock()
	delete(s.leases[key], id)
	s.mu.Unlock()
	return nil
}

func (m *Memory) sessions(_ context.Context, key string) (int, error) {
	s := m.store()
	s.mu.Lock()
	defer s.mu.Unlock()
	return len(s.live(key, m.now())), nil
}

func (m *Memory) heartbeat(_ context.Context, node string, ttl time.Duration) (int, error) {
	s := m.store()
	s.mu.Lock()
	defer s.mu.Unlock()
	now := m.now()
	s.nodes[node] = now.Add(ttl)
	for n, exp := range s.nodes {
		if !exp.After(now) {
			delete(s.nodes, n)
		}
	}
	return len(s.nodes), nil
}

// The Redis forms. An identity's keys share its hash tag (key()), so that
// each script touches one Redis Cluster slot.
var (
	holdScript = redis.NewScript(`
local left = redis.call("PTTL", KEYS[1])
local level = tonumber(redis.call("GET", KEYS[2]) or "0")
return {math.max(left, 0), level, redis.call("EXISTS", KEYS[3])}`)

	throttleScript = redis.NewScript(`
local left = redis.call("PTTL", KEYS[1])
if left > 0 then
  return {left, tonumber(redis.call("GET", KEYS[2]) or "1")}
end
local level = redis.call("INCR", KEYS[2])
local cool = tonumber(ARGV[1])
local max = tonumber(ARGV[2])
for i = 2, level do
  if cool >= max then break end
  cool = cool * 2
end
cool = math.min(cool, max)
redis.call("SET", KEYS[1], level, "PX", cool)
redis.call("PEXPIRE", KEYS[2], cool + 2 * max)
redis.call("DEL", KEYS[3])
return {cool, level}`)

	probeScript = redis.NewScript(`
if redis.call("EXISTS", KEYS[1]) == 0 then return 1 end
if redis.call("SET", KEYS[2], "1", "NX", "PX", ARGV[1]) then return 1 end
return 0`)

	// leaseScript: KEYS[1] the sorted set of sessions, scored by expiry
	// (ms of the server's clock); ARGV: max, ttl (ms), ids. It returns the
	// ids it could not (re)take.
	leaseScript = redis.NewScript(`
local t = redis.call("TIME")
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
redis.call("ZREMRANGEBYSCORE", KEYS[1], "-inf", now)
local max, ttl = tonumber(ARGV[1]), tonumber(ARGV[2])
local lost = {}
for i = 3, #ARGV do
  if redis.call("ZSCORE", KEYS[1], ARGV[i]) or redis.call("ZCARD", KEYS[1]) < max then
    redis.call("ZADD", KEYS[1], now + ttl, ARGV[i])
  else
    table.insert(lost, ARGV[i])
  end
end
redis.call("PEXPIRE", KEYS[1], 2 * ttl)
return lost`)

	countScript = redis.NewScript(`
local t = redis.call("TIME")
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
if ARGV[1] ~= "" then
  redis.call("ZADD", KEYS[1], now + tonumber(ARGV[2]), ARGV[1])
  redis.call("PEXPIRE", KEYS[1], 2 * tonumber(ARGV[2]))
end
redis.call("ZREMRANGEBYSCORE", KEYS[1], "-inf", now)
return redis.call("ZCARD", KEYS[1])`)
)

func holdKeys(key string) []string {
	return []string{upKey(key, "hold"), upKey(key, "level"), upKey(key, "probe")}
}

// upKey names one of an identity's keys.
func upKey(identity, what string) string { return key("upstream:"+identity, what) }

// nodesKey is where the nodes say they are alive.
const nodesKey = "smarthost:nodes"

func (r *Redis) holdState(ctx context.Context, key string) (hold, error) {
	v, err := holdScript.Run(ctx, r.c, holdKeys(key)).Int64Slice()
	if err != nil {
		return hold{}, err
	}
	return hold{Left: time.Duration(v[0]) * time.Millisecond, Level: int(v[1]), Probing: v[2] == 1}, nil
}

func (r *Redis) throttle(ctx context.Context, key string, base, maxCool time.Duration) (hold, error) {
	v, err := throttleScript.Run(ctx, r.c, holdKeys(key), max(base.Milliseconds(), 1), max(maxCool.Milliseconds(), 1)).Int64Slice()
	if err != nil {
		return hold{}, err
	}
	return hold{Left: time.Duration(v[0]) * time.Millisecond, Level: int(v[1])}, nil
}

func (r *Redis) clear(ctx context.Context, key string) error {
	return r.c.Del(ctx, holdKeys(key)...).Err()
}

func (r *Redis) probe(ctx context.Context, key string, ttl time.Duration) (bool, error) {
	k := holdKeys(key)
	return probeScript.Run(ctx, r.c, []string{k[1], k[2]}, max(ttl.Milliseconds(), 1)).Bool()
}

func (r *Redis) unprobe(ctx context.Context, key string) error {
	return r.c.Del(ctx, upKey(key, "probe")).Err()
}

func (r *Redis) lease(ctx context.Context, key, id string, limit int, ttl time.Duration) (bool, error) {
	lost, err := r.renew(ctx, key, []string{id}, limit, ttl)
	return err == nil && len(lost) == 0, err
}

func (r *Redis) renew(ctx context.Context, key string, ids []string, limit int, ttl time.Duration) ([]string, error) {
	args := []any{limit, max(ttl.Milliseconds(), 1)}
	for _, id := range ids {
		args = append(args, id)
	}
	lost, err := leaseScript.Run(ctx, r.c, []string{upKey(key, "sessions")}, args...).StringSlice()
	if err == redis.Nil {
		return nil, nil
	}
	return lost, err
}

func (r *Redis) unlease(ctx context.Context, key, id string) error {
	return r.c.ZRem(ctx, upKey(key, "sessions"), id).Err()
}

func (r *Redis) sessions(ctx context.Context, key string) (int, error) {
	n, err := countScript.Run(ctx, r.c, []string{upKey(key, "sessions")}, "", 0).Int()
	return n, err
}

func (r *Redis) heartbeat(ctx context.Context, node string, ttl time.Duration) (int, error) {
	if node == "" {
		return 0, fmt.Errorf("ratelimit: a heartbeat needs the node's name")
	}
	return countScript.Run(ctx, r.c, []string{nodesKey}, node, max(ttl.Milliseconds(), 1)).Int()
}
