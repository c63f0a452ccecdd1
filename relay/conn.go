package relay

import (
	"fmt"
	"net"

	"github.com/emersion/go-smtp"
	"sync"
	"time"
)

// limitListener enforces the per-IP connection cap and wraps each connection
// with an idle timeout.
type limitListener struct {
	net.Listener
	s *Server
}

func (l *limitListener) Accept() (net.Conn, error) {
	for {
		c, err := l.Listener.Accept()
		if err != nil {
			return nil, err
		}
		ip := remoteAddr(c)
		s := l.s
		s.mu.Lock()
		over := s.cfg.ConnectionsPerIP > 0 && s.perIP[ip] >= s.cfg.ConnectionsPerIP
		if !over {
			s.perIP[ip]++
		}
		s.mu.Unlock()
		if over {
			s.log.Warn("connection refused: too many from this address", "remote", ip.String())
			c.SetWriteDeadline(time.Now().Add(time.Second))
			r := replyTooManyConns
			c.Write([]byte(fmtReply(r.Code, r.EnhancedCode, r.Message)))
			c.Close()
			continue
		}
		return &idleConn{Conn: c, idle: s.cfg.IdleTimeout, release: func() {
			s.mu.Lock()
			if s.perIP[ip]--; s.perIP[ip] <= 0 {
				delete(s.perIP, ip)
			}
			s.mu.Unlock()
		}}, nil
	}
}

// idleConn sets the read deadline before every read, so a client has
// IdleTimeout between bytes, however long its message is. It releases its
// per-IP slot once, on the first Close.
type idleConn struct {
	net.Conn
	idle    time.Duration
	once    sync.Once
	release func()
}

func (c *idleConn) Read(b []byte) (int, error) {
	c.Conn.SetReadDeadline(time.Now().Add(c.idle))
	return c.Conn.Read(b)
}

func (c *idleConn) Close() error {
	c.once.Do(c.release)
	return c.Conn.Close()
}

// fmtReply formats a reply line for the few places that write to the socket
// before go-smtp has it.
func fmtReply(code int, e smtp.EnhancedCode, msg string) string {
	return fmt.Sprintf("%d %d.%d.%d %s\r\n", code, e[0], e[1], e[2], msg)
}
