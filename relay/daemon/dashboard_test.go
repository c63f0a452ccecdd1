package daemon

import (
	"encoding/json"
	"os"
	"regexp"
	"testing"

	"github.com/prometheus/client_golang/prometheus"

	"github.com/smarthost/smarthost/relay"
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
