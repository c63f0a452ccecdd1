package upstream

import (
	"time"

	"github.com/prometheus/client_golang/prometheus"
)

// Metrics are the delivery side's Prometheus series, by upstream name (from
// the configuration, so bounded).
type Metrics struct {
	deliveries *prometheus.CounterVec
	latency    *prometheus.HistogramVec
	archive    *prometheus.CounterVec
}

// NewMetrics registers the series on reg.
func NewMetrics(reg prometheus.Registerer) *Metrics {
	m := &Metrics{
		deliveries: prometheus.NewCounterVec(prometheus.CounterOpts{Name: "smarthost_deliveries_total",
			Help: "Recipient outcomes per delivery attempt: sent, deferred (temporary) or failed (permanent)."}, []string{"upstream", "result"}),
		latency: prometheus.NewHistogramVec(prometheus.HistogramOpts{Name: "smarthost_upstream_duration_seconds",
			Help:    "Time to hand one message to an upstream, connection included when one was opened.",
			Buckets: prometheus.ExponentialBuckets(0.005, 2, 14)}, []string{"upstream"}),
		archive: prometheus.NewCounterVec(prometheus.CounterOpts{Name: "smarthost_archive_copies_total",
			Help: "Archive copy delivery attempts: sent, or deferred (retried until queue.max_age, never bounced)."}, []string{"result"}),
	}
	reg.MustRegister(m.deliveries, m.latency, m.archive)
	return m
}

func (m *Metrics) observe(upstream string, took time.Duration, sent, deferred, failed int) {
	if m == nil {
		return
	}
	m.latency.WithLabelValues(upstream).Observe(took.Seconds())
	m.deliveries.WithLabelValues(upstream, "sent").Add(float64(sent))
	m.deliveries.WithLabelValues(upstream, "deferred").Add(float64(deferred))
	m.deliveries.WithLabelValues(upstream, "failed").Add(float64(failed))
}

func (m *Metrics) archived(sent bool) {
	if m == nil {
		return
	}
	result := "deferred"
	if sent {
		result = "sent"
	}
	m.archive.WithLabelValues(result).Inc()
}
