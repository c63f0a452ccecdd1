package smtpd

import (
	"bufio"
	"crypto/tls"
	"fmt"
	"net"
	"net/netip"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/smarthost/smarthost/relay/relaytest"
)

// A listener SetListeners removes stops accepting; its open sessions keep
// working until the grace period ends, and are closed then.
func TestSetListenersRetires(t *testing.T) {
	s, addr := serveWith(t, &recorder{}, Config{})
	d := dial(t, addr)
	other := Listener{Address: "127.0.0.1:0", Mode: ModeStartTLS}
	if err := s.SetListeners([]Listener{other}, time.Hour); err == nil {
		t.Fatal("a STARTTLS listener without a TLS config was bound")
	}
	other.Mode = ModePlain
	other.Address = "127.0.0.2:0"
	if err := s.SetListeners([]Listener{other}, time.Hour); err != nil {
		t.Fatal(err)
	}
	if _, err := net.Dial("tcp", addr); err == nil {
		t.Fatal("a retired listener still accepts")
	}
	d.send("EHLO c.test\r\n")
	d.want("250 ")
	d.send("NOOP\r\n")
	d.want("250 2.0.0")

	// With no grace left, the session is closed.
	d2 := dial(t, s.Addrs()[0].String())
	if err := s.SetListeners(nil, 0); err != nil {
		t.Fatal(err)
	}
	d2.c.SetReadDeadline(time.Now().Add(5 * time.Second))
	if _, err := d2.r.ReadString('\n'); err == nil {
		t.Fatal("session still open after the grace period")
	}
	// The first session's grace has not ended.
	d.send("NOOP\r\n")
	d.want("250 2.0.0")
}

// addrBackend records the client address of each session.
type addrBackend struct {
	recorder
	addrs chan netip.Addr
}

func (b *addrBackend) NewSession(c *Conn) (Session, error) {
	b.addrs <- c.RemoteAddr()
	return &b.recorder, nil
}

// A PROXY header (v1 here; the library reads v2 too) names the client only
// when it comes from ProxyNetworks; from anyone else it is a bad command.
func TestProxyProtocol(t *testing.T) {
	for _, tc := range []struct {
		networks []string
		want     string // the client address, or "" for a refused header
	}{
		{[]string{"127.0.0.0/8"}, "192.0.2.7"},
		{[]string{"10.0.0.0/8"}, ""},
	} {
		be := &addrBackend{addrs: make(chan netip.Addr, 1)}
		s := New(Config{Domain: "mx.test", ProxyNetworks: tc.networks,
			Listeners: []Listener{{Address: "127.0.0.1:0", Mode: ModePlain, ProxyProtocol: true}}}, be)
		if err := s.Listen(); err != nil {
			t.Fatal(err)
		}
		go s.Serve()
		t.Cleanup(func() { s.Close() })
		c, err := net.Dial("tcp", s.Addrs()[0].String())
		if err != nil {
			t.Fatal(err)
		}
		defer c.Close()
		c.Write([]byte("PROXY TCP4 192.0.2.7 127.0.0.1 40000 25\r\n"))
		d := &dialog{t, c, bufio.NewReader(c)}
		d.want("220 mx.test ESMTP")
		if tc.want == "" {
			d.want("500 5.5.2")
			continue
		}
		d.send("EHLO c.test\r\n")
		d.want("250 ")
		if got := (<-be.addrs).String(); got != tc.want {
			t.Errorf("from %v: client %s, want %s", tc.networks, got, tc.want)
		}
	}
}

// hookLog records what the hooks were told.
type hookLog struct {
	mu       sync.Mutex
	accepted []string
	open     int
	closed   chan string
	refused  []string
	tls      []bool
}

func (h *hookLog) hooks() Hooks {
	return Hooks{
		Accepted: func(l string) { h.mu.Lock(); h.accepted = append(h.accepted, l); h.mu.Unlock() },
		ConnState: func(l string, open bool) {
			if !open {
				h.closed <- l
				return
			}
			h.mu.Lock()
			h.open++
			h.mu.Unlock()
		},
		Refused: func(_ *Conn, cmd string, r *Reply, _ error) {
			h.mu.Lock()
			h.refused = append(h.refused, cmd+" "+r.Error())
			h.mu.Unlock()
		},
		TLSHandshake: func(done bool) { h.mu.Lock(); h.tls = append(h.tls, done); h.mu.Unlock() },
	}
}

// The hooks hear of every connection accepted, admitted and closed, of a
// refusal by the caps, and of each TLS handshake begun and completed.
func TestHooks(t *testing.T) {
	cert, pool, err := relaytest.Cert()
	if err != nil {
		t.Fatal(err)
	}
	h := &hookLog{closed: make(chan string, 2)}
	s := listen(t, &recorder{}, Config{ConnectionsPerIP: 1, Hooks: h.hooks(),
		TLS:       &tls.Config{Certificates: []tls.Certificate{*cert}},
		Listeners: []Listener{{Address: "127.0.0.1:0", Mode: ModeImplicit}}})
	go s.Serve()
	addr := s.Addrs()[0].String()
	c, err := tls.Dial("tcp", addr, &tls.Config{RootCAs: pool, ServerName: "127.0.0.1"})
	if err != nil {
		t.Fatal(err)
	}
	first := &dialog{t, c, bufio.NewReader(c)}
	first.want("220 ")
	// Over the cap: the refusal comes inside TLS.
	c2, err := tls.Dial("tcp", addr, &tls.Config{RootCAs: pool, ServerName: "127.0.0.1"})
	if err != nil {
		t.Fatal(err)
	}
	defer c2.Close()
	(&dialog{t, c2, bufio.NewReader(c2)}).want("421 4.7.0")
	first.send("QUIT\r\n")
	first.want("221 ")
	c.Close()
	select {
	case l := <-h.closed:
		if l != "127.0.0.1:0" {
			t.Errorf("closed on listener %q, want the configured address", l)
		}
	case <-time.After(5 * time.Second):
		t.Fatal("ConnState never heard the connection close")
	}
	h.mu.Lock()
	defer h.mu.Unlock()
	if len(h.accepted) != 2 || h.accepted[0] != "127.0.0.1:0" || h.open != 1 {
		t.Errorf("accepted %v, opened %d; want 2 accepted on 127.0.0.1:0, 1 admitted", h.accepted, h.open)
	}
	if len(h.refused) != 1 || !strings.HasPrefix(h.refused[0], "CONNECT 421 4.7.0") {
		t.Errorf("refused %q, want the CONNECT over the cap", h.refused)
	}
	if fmt.Sprint(h.tls) != "[false true false true]" {
		t.Errorf("TLS hook told %v, want begun and done for each of 2 handshakes", h.tls)
	}
}
