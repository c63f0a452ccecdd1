package smtpd

import (
	"crypto/tls"
	"io"
	"net/netip"
	"time"
)

// refusalHandshake bounds the TLS handshake of a connection refused on an
// implicit-TLS listener.
const refusalHandshake = 5 * time.Second

// handle serves one accepted connection, if the caps admit it.
func (s *Server) handle(c *Conn) {
	defer func() {
		c.Close()
		s.mu.Lock()
		delete(s.conns, c)
		s.mu.Unlock()
	}()
	// The client's address may come from a PROXY header, which this reads:
	// here in the connection's goroutine, so that it never holds up Accept.
	c.addr = remoteAddr(c.raw)
	if r := s.admit(c.addr); r != nil {
		s.refuse(c, r)
		return
	}
	h := s.cfg.Hooks.ConnState
	if h != nil {
		h(c.ep.l.Address, true)
	}
	defer func() {
		s.release(c.addr)
		if h != nil {
			h(c.ep.l.Address, false)
		}
	}()
	if err := c.serve(); err != nil {
		s.cfg.Log.Info("connection ended", "remote", c.addr.String(), "err", err)
	}
}

// refuse tells a client over the caps to come back later.
func (s *Server) refuse(c *Conn, r *Reply) {
	s.cfg.Log.Warn("connection refused: too many connections", "remote", c.addr.String(), "listener", c.ep.l.Address)
	var w io.Writer = c.raw
	if c.ep.implicit() {
		// Nothing but TLS on an implicit-TLS port (RFC 8314): the refusal
		// goes inside a handshake, or a client reads it as a broken TLS
		// record and does not know to come back later.
		c.raw.SetDeadline(time.Now().Add(refusalHandshake))
		tc := tls.Server(c.conn, c.ep.tls)
		if tc.Handshake() != nil {
			return
		}
		w = tc
	}
	// The hook hears of it before the client does, as in Conn.send: whoever
	// has read the reply can count on the refusal being counted.
	if h := s.cfg.Hooks.Refused; h != nil {
		h(c, "CONNECT", r, nil)
	}
	c.raw.SetWriteDeadline(time.Now().Add(time.Second))
	w.Write([]byte(formatReply(r)))
}

// admit counts a connection against its address and the total, or says
// which reply refuses it.
func (s *Server) admit(ip netip.Addr) *Reply {
	s.mu.Lock()
	defer s.mu.Unlock()
	switch {
	case s.cfg.ConnectionsPerIP > 0 && s.perIP[ip] >= s.cfg.ConnectionsPerIP:
		return ReplyTooManyConnsIP
	case s.total >= s.cfg.MaxConnections:
		return ReplyTooManyConns
	}
	s.perIP[ip]++
	s.total++
	return nil
}

func (s *Server) release(ip netip.Addr) {
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.perIP[ip]--; s.perIP[ip] <= 0 {
		delete(s.perIP, ip)
	}
	s.total--
}
