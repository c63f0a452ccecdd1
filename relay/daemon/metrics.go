package daemon

import (
	"context"
	"errors"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/collectors"

	"github.com/smarthost/smarthost/policy"
	"github.com/smarthost/smarthost/ratelimit"
	"github.com/smarthost/smarthost/relay/queue"
)

// backendMetrics times the calls to LDAP and Redis. They wrap the backends
// here, in the composition root, so that policy/ldap and ratelimit need not
// know about Prometheus.
type backendMetrics struct {
	latency *prometheus.HistogramVec
	errors  *prometheus.CounterVec
}

func newBackendMetrics(reg prometheus.Registerer) *backendMetrics {
	b := &backendMetrics{
		latency: prometheus.NewHistogramVec(prometheus.HistogramOpts{Name: "smarthost_backend_duration_seconds",
			Help:    "Time of calls to the user directory and the rate limiter, by backend (ldap, static, redis, memory).",
			Buckets: prometheus.ExponentialBuckets(0.0001, 2.5, 14)}, []string{"backend"}),
		errors: prometheus.NewCounterVec(prometheus.CounterOpts{Name: "smarthost_backend_errors_total",
			Help: "Backend calls that failed (not counting wrong passwords or reached limits), by backend."}, []string{"backend"}),
	}
	reg.MustRegister(b.latency, b.errors)
	return b
}

func (b *backendMetrics) observe(backend string, start time.Time, failed bool) {
	b.latency.WithLabelValues(backend).Observe(time.Since(start).Seconds())
	if failed {
		b.errors.WithLabelValues(backend).Inc()
	}
}

type timedDirectory struct {
	policy.Directory
	name string
	m    *backendMetrics
}

func (d timedDirectory) Authenticate(ctx context.Context, user, pass string) (*policy.User, error) {
	start := time.Now()
	u, err := d.Directory.Authenticate(ctx, user, pass)
	d.m.observe(d.name, start, err != nil && !errors.Is(err, policy.ErrBadCredentials))
	return u, err
}

type timedLimiter struct {
	ratelimit.Limiter
	name string
	m    *backendMetrics
}

func (l timedLimiter) AllowN(ctx context.Context, key string, lim ratelimit.Limit, n int64) (ratelimit.Result, error) {
	start := time.Now()
	r, err := l.Limiter.AllowN(ctx, key, lim, n)
	l.m.observe(l.name, start, err != nil)
	return r, err
}

// queueCollector reports the spool's size and age when scraped.
func queueCollector(reg prometheus.Registerer, q *queue.Queue) {
	reg.MustRegister(
		prometheus.NewGaugeFunc(prometheus.GaugeOpts{Name: "smarthost_queue_messages", Help: "Messages in the spool."},
			func() float64 { return float64(q.Len()) }),
		prometheus.NewGaugeFunc(prometheus.GaugeOpts{Name: "smarthost_queue_oldest_seconds", Help: "Age of the oldest message in the spool."},
			func() float64 {
				if t := q.Oldest(); !t.IsZero() {
					return time.Since(t).Seconds()
				}
				return 0
			}),
		waitingCollector{q},
	)
}

// waitingCollector reports the messages waiting for an upstream's limits
// (the queue's lanes) when scraped.
type waitingCollector struct{ q *queue.Queue }

var waitingDesc = prometheus.NewDesc("smarthost_upstream_shaping_waiting",
	"Messages waiting for an upstream's limits, by upstream and reason (rate, connections, hold, backend).", []string{"upstream", "reason"}, nil)

func (c waitingCollector) Describe(ch chan<- *prometheus.Desc) { ch <- waitingDesc }

func (c waitingCollector) Collect(ch chan<- prometheus.Metric) {
	type key struct{ upstream, reason string }
	n := map[key]int{}
	for _, l := range c.q.Lanes() {
		n[key{l.Upstream, l.Reason}] += len(l.IDs)
	}
	for k, v := range n {
		ch <- prometheus.MustNewConstMetric(waitingDesc, prometheus.GaugeValue, float64(v), k.upstream, k.reason)
	}
}

func newRegistry() *prometheus.Registry {
	reg := prometheus.NewRegistry()
	reg.MustRegister(collectors.NewGoCollector(), collectors.NewProcessCollector(collectors.ProcessCollectorOpts{}))
	return reg
}
