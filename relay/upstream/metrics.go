package upstream

import (
	"errors"
	"fmt"
	"time"

	"github.com/prometheus/client_golang/prometheus"

	"github.com/smarthost/smarthost/ratelimit"
	"github.com/smarthost/smarthost/relay/upstream/smtpclient"
)

// Metrics are the delivery side's Prometheus series, by upstream name (from
// the configuration, so bounded).
type Metrics struct {
	deliveries *prometheus.CounterVec
	latency    *prometheus.HistogramVec
	archive    *prometheus.CounterVec
	// shaping
	delay     *prometheus.HistogramVec
	waits     *prometheus.CounterVec
	hold      *prometheus.GaugeVec
	cooldown  *prometheus.GaugeVec
	throttles *prometheus.CounterVec
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
		delay: prometheus.NewHistogramVec(prometheus.HistogramOpts{Name: "smarthost_upstream_shaping_delay_seconds",
			Help:    "Time a message waited for an upstream's limits (rate, connections, a hold after it throttled) before it was tried.",
			Buckets: prometheus.ExponentialBuckets(0.1, 3, 12)}, []string{"upstream"}),
		waits: prometheus.NewCounterVec(prometheus.CounterOpts{Name: "smarthost_upstream_shaping_waits_total",
			Help: "Deliveries that waited for an upstream's limits instead of being tried, by reason (rate, connections, hold, backend)."}, []string{"upstream", "reason"}),
		hold: prometheus.NewGaugeVec(prometheus.GaugeOpts{Name: "smarthost_upstream_hold",
			Help: "1 while the upstream is on hold after a throttle reply, as this node last heard."}, []string{"upstream"}),
		cooldown: prometheus.NewGaugeVec(prometheus.GaugeOpts{Name: "smarthost_upstream_hold_cooldown_seconds",
			Help: "The cool-down of the upstream's current hold; 0 when not held."}, []string{"upstream"}),
		throttles: prometheus.NewCounterVec(prometheus.CounterOpts{Name: "smarthost_upstream_throttle_replies_total",
			Help: "Throttle replies from the upstream, by reply code; a 5xx one (a daily quota) means mail waits for hours: alert on it."}, []string{"upstream", "code"}),
	}
	reg.MustRegister(m.deliveries, m.latency, m.archive, m.delay, m.waits, m.hold, m.cooldown, m.throttles)
	return m
}

// Shaped counts a message that waited for an upstream's limits and was
// then tried (the queue's Config.Shaped).
func (m *Metrics) Shaped(upstream string, waited time.Duration) {
	if m == nil {
		return
	}
	m.delay.WithLabelValues(upstream).Observe(waited.Seconds())
}

func (m *Metrics) waited(upstream, reason string) {
	if m == nil {
		return
	}
	m.waits.WithLabelValues(upstream, reason).Inc()
}

// held shows the hold state an admission found.
func (m *Metrics) held(upstream string, a ratelimit.Admission) {
	if m == nil {
		return
	}
	switch {
	case a.Held:
		m.hold.WithLabelValues(upstream).Set(1)
	case a.Go:
		m.hold.WithLabelValues(upstream).Set(0)
		m.cooldown.WithLabelValues(upstream).Set(0)
	}
}

// throttled counts a throttle reply and shows the hold it started.
func (m *Metrics) throttled(upstream string, reply error, h ratelimit.Admission) {
	if m == nil {
		return
	}
	m.hold.WithLabelValues(upstream).Set(1)
	m.cooldown.WithLabelValues(upstream).Set(h.Wait.Seconds())
	code := "other"
	var e *smtpclient.Error
	if errors.As(reply, &e) {
		code = fmt.Sprintf("%d %s", e.Code, e.Enhanced)
	}
	m.throttles.WithLabelValues(upstream, code).Inc()
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
