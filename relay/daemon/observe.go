package daemon

import (
	"crypto/x509"
	"path/filepath"
	"time"

	"github.com/prometheus/client_golang/prometheus"

	"github.com/smarthost/smarthost/configs"
	"github.com/smarthost/smarthost/relay/history"
	"github.com/smarthost/smarthost/relay/inspect"
	"github.com/smarthost/smarthost/relay/queue"
	"github.com/smarthost/smarthost/relay/webhook"
)

// assembleHistory translates history and webhooks: what hears of every
// event of every message. The webhooks' outboxes live in the spool's
// folder, whose volume every deployment keeps.
func assembleHistory(f *configs.File, a *Assembly) {
	if f.History.On() {
		a.history = &history.Config{Dir: f.History.Dir, MaxAge: time.Duration(f.History.MaxAge), MaxSize: int64(f.History.MaxSize)}
	}
	if len(f.Webhooks) == 0 {
		return
	}
	a.webhooks = &webhook.Config{Dir: filepath.Join(f.Queue.Dir, "webhooks")}
	for _, w := range f.Webhooks {
		a.webhooks.Hooks = append(a.webhooks.Hooks, webhook.Hook{URL: w.URL, Events: w.Events, Secret: []byte(w.Secret),
			Users: w.Match.Users, Classes: w.Match.Classes, MaxQueued: w.MaxQueued})
	}
}

// openObservers opens the history and the webhooks' outboxes, and makes
// the queue tell them, the upstreams' health and the event metrics of
// every event. They are closed after the queue (closers run in reverse),
// so that the last events of a stop are kept.
func (d *Daemon) openObservers(a *Assembly) error {
	m := newEventMetrics(d.registry)
	d.health = inspect.NewHealth()
	var obs queue.Observers
	if a.history != nil {
		a.history.Log = d.log
		h, err := history.Open(*a.history)
		if err != nil {
			return err
		}
		d.history = h
		d.closers = append(d.closers, func() { h.Close() })
		obs = append(obs, h)
	}
	if a.webhooks != nil {
		a.webhooks.Log, a.webhooks.Count = d.log, m.webhookCount
		s, err := webhook.Open(*a.webhooks)
		if err != nil {
			return err
		}
		d.closers = append(d.closers, s.Close)
		obs = append(obs, s)
	}
	a.queue.Observer = append(obs, d.health, m)
	return nil
}

// inspectConfig is what the admin API's messages and queue endpoints and
// the status page serve from.
func (d *Daemon) inspectConfig(f *configs.File) inspect.Config {
	c := inspect.Config{Queue: d.queue, Health: d.health, Hostname: f.Hostname, Version: d.cfg.Version}
	if d.history != nil {
		c.HistoryDir = f.History.Dir
	}
	for _, u := range f.Upstreams {
		c.Upstreams = append(c.Upstreams, u.Name)
	}
	return c
}

// eventMetrics counts bounces (smarthost_bounces_total) from the queue's
// events, and the webhooks' events by fate.
type eventMetrics struct {
	bounces  *prometheus.CounterVec
	webhooks *prometheus.CounterVec
}

func newEventMetrics(reg prometheus.Registerer) *eventMetrics {
	m := &eventMetrics{
		bounces: prometheus.NewCounterVec(prometheus.CounterOpts{Name: "smarthost_bounces_total",
			Help: "Recipients that failed for good, by reason: refused (an upstream's 5xx), unsupported (no upstream of the route can take it), expired (queue.max_age), admin (smarthost queue bounce)."},
			[]string{"reason"}),
		webhooks: prometheus.NewCounterVec(prometheus.CounterOpts{Name: "smarthost_webhook_events_total",
			Help: "Webhook events by result: sent, failed (to be retried), refused (the receiver's 4xx: given up), dropped (a full outbox)."},
			[]string{"result"}),
	}
	// Every series from the start, so that rate() sees the first one.
	for _, r := range []string{queue.BounceRefused, queue.BounceUnsupported, queue.BounceExpired, queue.BounceAdmin} {
		m.bounces.WithLabelValues(r)
	}
	for _, r := range []string{webhook.ResultSent, webhook.ResultFailed, webhook.ResultRefused, webhook.ResultDropped} {
		m.webhooks.WithLabelValues(r)
	}
	reg.MustRegister(m.bounces, m.webhooks)
	return m
}

// Observe counts a bounce. An archive copy that failed is no bounce: the
// sender is not told of it.
func (m *eventMetrics) Observe(e queue.Event) {
	if e.Kind == queue.EventBounced && !e.Archive {
		m.bounces.WithLabelValues(e.Reason).Inc()
	}
}

func (m *eventMetrics) webhookCount(result string) { m.webhooks.WithLabelValues(result).Inc() }

// certExpiry reports how long the listeners' certificate (the one a
// reload last loaded) has left: smarthost_tls_certificate_expiry_seconds.
// Without a certificate (plain listeners only) there is no series, rather
// than a 0 that would read as expired.
type certExpiry struct {
	t    *tlsMaterial
	desc *prometheus.Desc
}

func newCertExpiry(t *tlsMaterial) certExpiry {
	return certExpiry{t, prometheus.NewDesc("smarthost_tls_certificate_expiry_seconds",
		"Seconds until the listeners' certificate expires (negative: expired).", nil, prometheus.Labels{"cert": "listeners"})}
}

func (c certExpiry) Describe(ch chan<- *prometheus.Desc) { ch <- c.desc }

func (c certExpiry) Collect(ch chan<- prometheus.Metric) {
	cert := c.t.cert.Load()
	if cert == nil || len(cert.Certificate) == 0 {
		return
	}
	leaf := cert.Leaf
	if leaf == nil {
		var err error
		if leaf, err = x509.ParseCertificate(cert.Certificate[0]); err != nil {
			return
		}
	}
	ch <- prometheus.MustNewConstMetric(c.desc, prometheus.GaugeValue, time.Until(leaf.NotAfter).Seconds())
}
