package daemon

import (
	"encoding/json"
	"log/slog"
	"os"
	"regexp"
	"testing"

	"github.com/prometheus/client_golang/prometheus"

	"github.com/smarthost/smarthost/configs"
)

// Every series the Grafana dashboard queries is one the relay exports:
// the registry is the one New assembles, with nothing registered by the
// test.
func TestDashboardUsesExportedSeries(t *testing.T) {
	f, err := configs.Parse(relayConfig(t, t.TempDir(), "127.0.0.1:1", nil))
	if err != nil {
		t.Fatal(err)
	}
	d, err := New(Config{File: f}, slog.New(slog.DiscardHandler))
	if err != nil {
		t.Fatal(err)
	}
	defer d.Close()
	reg := d.registry
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
