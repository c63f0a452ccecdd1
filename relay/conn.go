package relay

import (
	"errors"
	"fmt"
	"net"
	"net/netip"
	"sync"
	"sync/atomic"
	"time"

	"github.com/emersion/go-smtp"
)

// limitListener wraps each connection with an idle timeout and the per-IP
// connection cap. The cap is applied on the connection's first read or
// write, in its own goroutine, because learning the client's address may
// mean reading a PROXY header, which must not hold up Accept.
type limitListener struct {
	net.Listener
	s    *Server
	name string
}

func (l *limitListener) Accept() (net.Conn, error) {
	c, err := l.Listener.Accept()
	if err != nil {
		return nil, err
	}
	l.s.cfg.Metrics.connections.WithLabelValues(l.name).Inc()
	ic := &idleConn{Conn: c, l: l}
	ic.idle.Store(int64(l.s.cfg.IdleTimeout))
	l.s.mu.Lock()
	l.s.conns[ic] = struct{}{}
	draining := l.s.closing.Load()
	l.s.mu.Unlock()
	if draining {
		ic.drain()
	}
	return ic, nil
}

// idleConn sets the read deadline before every read, so a client has
// IdleTimeout between bytes, however long its message is.
type idleConn struct {
	net.Conn
	idle  atomic.Int64 // time.Duration: the allowed silence before a read fails
	l     *limitListener
	admit sync.Once
	err   error // non-nil: refused at admission
	ip    netip.Addr
	once  sync.Once
}

// admitted counts the connection against its address, once.
func (c *idleConn) admitted() error {
	c.admit.Do(func() {
		s := c.l.s
		c.ip = remoteAddr(c.Conn)
		s.mu.Lock()
		over := s.cfg.ConnectionsPerIP > 0 && s.perIP[c.ip] >= s.cfg.ConnectionsPerIP || s.total >= s.cfg.MaxConnections
		if !over {
			s.perIP[c.ip]++
			s.total++
		}
		s.mu.Unlock()
		if over {
			s.log.Warn("connection refused: too many connections", "remote", c.ip.String())
			c.Conn.SetWriteDeadline(time.Now().Add(time.Second))
			r := replyTooManyConns
			c.Conn.Write([]byte(fmtReply(r.Code, r.EnhancedCode, r.Message)))
			c.err = errTooManyConns
			c.Conn.Close()
			return
		}
		s.cfg.Metrics.connectionsNow.WithLabelValues(c.l.name).Inc()
		s.log.Debug("connection", "remote", c.ip.String(), "listener", c.l.name)
	})
	return c.err
}

func (c *idleConn) Read(b []byte) (int, error) {
	if err := c.admitted(); err != nil {
		return 0, err
	}
	c.Conn.SetReadDeadline(time.Now().Add(time.Duration(c.idle.Load())))
	return c.Conn.Read(b)
}

func (c *idleConn) Write(b []byte) (int, error) {
	if err := c.admitted(); err != nil {
		return 0, err
	}
	return c.Conn.Write(b)
}

// drainIdle is the silence allowed once the server is shutting down: a
// client in the middle of sending keeps going, an idle one is told 421 by
// smtpd's idle timeout and let go.
const drainIdle = 2 * time.Second

func (c *idleConn) drain() {
	c.idle.Store(int64(drainIdle))
	c.Conn.SetReadDeadline(time.Now().Add(drainIdle))
}

// Close releases the connection's per-IP slot, once.
func (c *idleConn) Close() error {
	c.l.s.mu.Lock()
	delete(c.l.s.conns, c)
	c.l.s.mu.Unlock()
	c.once.Do(func() {
		if c.admitted() != nil {
			return
		}
		s := c.l.s
		s.mu.Lock()
		if s.perIP[c.ip]--; s.perIP[c.ip] <= 0 {
			delete(s.perIP, c.ip)
		}
		s.total--
		s.mu.Unlock()
		s.cfg.Metrics.connectionsNow.WithLabelValues(c.l.name).Dec()
	})
	return c.Conn.Close()
}

// fmtReply formats a reply line for the few places that write to the socket
// before smtpd has it.
func fmtReply(code int, e smtp.EnhancedCode, msg string) string {
	return fmt.Sprintf("%d %d.%d.%d %s\r\n", code, e[0], e[1], e[2], msg)
}

var errTooManyConns = errors.New("relay: too many connections from this address")
