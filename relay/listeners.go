package relay

import (
	"net"

	"github.com/prometheus/client_golang/prometheus"
)

// countingListener counts the connections accepted.
type countingListener struct {
	net.Listener
	c prometheus.Counter
}

func (l *countingListener) Accept() (net.Conn, error) {
	c, err := l.Listener.Accept()
	if err == nil {
		l.c.Inc()
	}
	return c, err
}
