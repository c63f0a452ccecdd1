package relay

import (
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	dto "github.com/prometheus/client_model/go"

	"github.com/smarthost/smarthost/relay/relaytest"
)

// value is a counter's or a gauge's value.
func value(t *testing.T, c prometheus.Metric) float64 {
	t.Helper()
	var m dto.Metric
	if err := c.Write(&m); err != nil {
		t.Fatal(err)
	}
	if m.Counter != nil {
		return m.Counter.GetValue()
	}
	return m.Gauge.GetValue()
}

// smtpd's hooks feed the relay's series: connections accepted and open by
// listener, TLS handshakes begun and completed, refusals by reply.
func TestServerHooksFeedMetrics(t *testing.T) {
	m := NewMetrics(prometheus.NewRegistry())
	e := newEnv(t, testOpts{metrics: m})
	d := e.raw(t)
	d.send("EHLO c.test\r\n")
	d.expect("250 ")
	d.send(mailAlice + "\r\n")
	d.expect("530 5.7.0 ")
	const l = "127.0.0.1:0" // as configured
	for name, got := range map[string]float64{
		"accepted":     value(t, m.connections.WithLabelValues(l)),
		"open":         value(t, m.connectionsNow.WithLabelValues(l)),
		"TLS started":  value(t, m.tls.WithLabelValues("started")),
		"TLS ok":       value(t, m.tls.WithLabelValues("ok")),
		"MAIL refused": value(t, m.replies.WithLabelValues("MAIL", "530", "5.7.0")),
	} {
		if got != 1 {
			t.Errorf("%s: %v, want 1", name, got)
		}
	}
	d.send("QUIT\r\n")
	d.expect("221 ")
	d.c.Close()
	relaytest.Eventually(t, "the closed connection no longer counted as open", 5*time.Second, func() bool {
		return value(t, m.connectionsNow.WithLabelValues(l)) == 0
	})
}
