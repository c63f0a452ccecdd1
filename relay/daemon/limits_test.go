package daemon

import (
	"context"
	"fmt"
	"testing"
	"time"

	"github.com/smarthost/smarthost/configs"
	"github.com/smarthost/smarthost/ratelimit"
	"github.com/smarthost/smarthost/relay/relaytest"
)

// The configuration's redis section reaches Redis through a Sentinel.
func TestLimiterFromConfigViaSentinel(t *testing.T) {
	sentinel := relaytest.Service(t, "SMARTHOST_TEST_REDIS_SENTINEL")
	f, err := configs.Parse([]byte(`listeners: [{address: "127.0.0.1:1"}]
tls: {self_signed: true}
auth: {backend: static, static: {users_file: u}}
upstreams: [{name: a, url: "file:///o"}]
ratelimit:
  backend: redis
  redis: {addrs: ["` + sentinel + `"], master_name: smarthost}
`))
	if err != nil {
		t.Fatal(err)
	}
	l, closeFn := newLimiter(f)
	defer closeFn()
	key := fmt.Sprintf("sentinel-%d", time.Now().UnixNano())
	lim := ratelimit.Limit{Rate: 1, Burst: 1, Period: time.Hour}
	if r, err := l.AllowN(context.Background(), key, lim, 1); err != nil || !r.Allowed {
		t.Fatalf("first: %+v %v", r, err)
	}
	if r, err := l.AllowN(context.Background(), key, lim, 1); err != nil || r.Allowed {
		t.Fatalf("second: %+v %v", r, err)
	}
}
