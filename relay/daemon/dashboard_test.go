package daemon

import (
	"context"
	"encoding/json"
	"fmt"
	"os"
	"regexp"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus"

	"github.com/smarthost/smarthost/configs"
	"github.com/smarthost/smarthost/ratelimit"
	"github.com/smarthost/smarthost/relay"
	"github.com/smarthost/smarthost/relay/relaytest"
	"github.com/smarthost/smarthost/relay/upstream"
)

// Every series the Grafana dashboard queries is one the relay exports.
func TestDashboardUsesExportedSeries(t *testing.T) {
	reg := prometheus.NewRegistry()
	relay.NewMetrics(reg)
	upstream.NewMetrics(reg)
	newBackendMetrics(reg)
	reg.MustRegister(prometheus.NewGauge(prometheus.GaugeOpts{Name: "smarthost_queue_messages"}),
		prometheus.NewGauge(prometheus.GaugeOpts{Name: "smarthost_queue_oldest_seconds"}))
	exported := map[string]bool{}
	// Vectors without observations gather nothing; ask the descriptions.
	ch := make(chan *prometheus.Desc, 100)
	go func() { reg.Describe(ch); close(ch) }()
	nameRe := regexp.MustCompile(`fqName: "([a-z_]+)"`)
	for d := range ch {
		if m := nameRe.FindStringSubmatch(d.String()); m != nil {
			exported[m[1]] = true
		}
	}
	b, err := os.ReadFile("../../configs/grafana/smarthost.json")
	if err != nil {
		t.Fatal(err)
	}
	var dash struct {
		Panels []struct {
			Title   string
			Targets []struct{ Expr string }
		}
	}
	if err := json.Unmarshal(b, &dash); err != nil {
		t.Fatal(err)
	}
	if len(dash.Panels) < 8 {
		t.Fatalf("%d panels", len(dash.Panels))
	}
	seriesRe := regexp.MustCompile(`smarthost_[a-z_]+`)
	for _, p := range dash.Panels {
		for _, tg := range p.Targets {
			for _, s := range seriesRe.FindAllString(tg.Expr, -1) {
				base := regexp.MustCompile(`_(bucket|count|sum)$`).ReplaceAllString(s, "")
				if !exported[s] && !exported[base] {
					t.Errorf("panel %q queries %s, which is not exported", p.Title, s)
				}
			}
		}
	}
}

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
