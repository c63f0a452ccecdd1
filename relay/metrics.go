package relay

import (
	"github.com/prometheus/client_golang/prometheus"
)

// Metrics are the front door's Prometheus series. Labels carry only
// bounded values: listener addresses, reply codes, configured classes and
// domains, never user names or addresses.
type Metrics struct {
	connections    *prometheus.CounterVec
	connectionsNow *prometheus.GaugeVec
	tls            *prometheus.CounterVec
	auth           *prometheus.CounterVec
	replies        *prometheus.CounterVec
	accepted       prometheus.Counter
	recipients     prometheus.Counter
	bytes          prometheus.Counter
	limitHits      *prometheus.CounterVec
	rcptRules      *prometheus.CounterVec
	signatures     *prometheus.CounterVec
	signFailures   prometheus.Counter
	unsigned       *prometheus.CounterVec
}

// NewMetrics registers the series on reg. A Backend made without Metrics
// makes its own on a private registry, so the counting code needs no nil
// checks.
func NewMetrics(reg prometheus.Registerer) *Metrics {
	m := &Metrics{
		connections: prometheus.NewCounterVec(prometheus.CounterOpts{Name: "smarthost_connections_total",
			Help: "Connections accepted, by listener."}, []string{"listener"}),
		connectionsNow: prometheus.NewGaugeVec(prometheus.GaugeOpts{Name: "smarthost_connections",
			Help: "Connections open now, by listener."}, []string{"listener"}),
		tls: prometheus.NewCounterVec(prometheus.CounterOpts{Name: "smarthost_tls_handshakes_total",
			Help: "TLS handshakes begun (result=started) and completed (result=ok); the difference failed."}, []string{"result"}),
		auth: prometheus.NewCounterVec(prometheus.CounterOpts{Name: "smarthost_auth_total",
			Help: "AUTH attempts by result: success, failure (wrong name or password), tempfail, throttled, or why the directory refused a right password: disabled, expired, locked, password_expired, password_must_change, restricted."}, []string{"result"}),
		replies: prometheus.NewCounterVec(prometheus.CounterOpts{Name: "smarthost_smtp_refusals_total",
			Help: "Refusals sent to clients, by command, reply code and enhanced code."}, []string{"cmd", "code", "enhanced"}),
		accepted: prometheus.NewCounter(prometheus.CounterOpts{Name: "smarthost_messages_accepted_total",
			Help: "Messages queued (acknowledged with 250)."}),
		recipients: prometheus.NewCounter(prometheus.CounterOpts{Name: "smarthost_recipients_accepted_total",
			Help: "Recipients of queued messages."}),
		bytes: prometheus.NewCounter(prometheus.CounterOpts{Name: "smarthost_bytes_accepted_total",
			Help: "Bytes of queued messages, as received."}),
		limitHits: prometheus.NewCounterVec(prometheus.CounterOpts{Name: "smarthost_ratelimit_hits_total",
			Help: "Transactions refused by a rate limit, by limit and class."}, []string{"limit", "class"}),
		rcptRules: prometheus.NewCounterVec(prometheus.CounterOpts{Name: "smarthost_recipient_rule_refusals_total",
			Help: "Recipients refused by recipient rules, by where the rules come from (a class, or \"user\" for a user's own)."}, []string{"class"}),
		signatures: prometheus.NewCounterVec(prometheus.CounterOpts{Name: "smarthost_dkim_signatures_total",
			Help: "Messages DKIM-signed, by signing domain."}, []string{"domain"}),
		signFailures: prometheus.NewCounter(prometheus.CounterOpts{Name: "smarthost_dkim_failures_total",
			Help: "Messages refused because signing failed."}),
		unsigned: prometheus.NewCounterVec(prometheus.CounterOpts{Name: "smarthost_dkim_unsigned_total",
			Help: "Messages sent unsigned under on_missing_key: send_unsigned, by reason: no_key (none for the From: domain), no_from (no From: address)."}, []string{"reason"}),
	}
	reg.MustRegister(m.connections, m.connectionsNow, m.tls, m.auth, m.replies, m.accepted, m.recipients,
		m.bytes, m.limitHits, m.rcptRules, m.signatures, m.signFailures, m.unsigned)
	return m
}
