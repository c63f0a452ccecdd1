package ratelimit

import (
	"context"

	"github.com/go-redis/redis_rate/v10"
	"github.com/redis/go-redis/v9"
)

// Redis is a Limiter shared by every relay node: one Lua script per check
// (go-redis/redis_rate's GCRA), one key per user and limit, each with a TTL
// of its own reset time so idle users leave nothing behind. It works with a
// single server, Sentinel and Cluster through redis.UniversalClient.
type Redis struct {
	c redis.UniversalClient
	l *redis_rate.Limiter
}

func NewRedis(c redis.UniversalClient) *Redis {
	return &Redis{c: c, l: redis_rate.NewLimiter(c)}
}

// Ping checks that Redis answers, for readiness checks.
func (r *Redis) Ping(ctx context.Context) error {
	return r.c.Ping(ctx).Err()
}

func (r *Redis) AllowN(ctx context.Context, key string, l Limit, n int64) (Result, error) {
	res, err := r.l.AllowN(ctx, key, redis_rate.Limit{Rate: int(l.Rate), Burst: int(l.Burst), Period: l.Period}, int(n))
	if err != nil {
		return Result{}, err
	}
	out := Result{Allowed: res.Allowed > 0 || n == 0 && res.RetryAfter < 0, Remaining: int64(res.Remaining), ResetAfter: max(res.ResetAfter, 0)}
	if !out.Allowed {
		out.RetryAfter = res.RetryAfter
	}
	return out, nil
}
