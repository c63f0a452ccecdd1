package relay

import (
	"bufio"
	"crypto/tls"
	"io"
	"log/slog"
	"net"
	"strings"
	"testing"
	"time"

	"github.com/pires/go-proxyproto"

	"github.com/smarthost/smarthost/policy"
	"github.com/smarthost/smarthost/relay/queue"
	"github.com/smarthost/smarthost/relay/relaytest"
	"github.com/smarthost/smarthost/relay/smtpd"
)

// proxyEnv is a relay with one plain listener that reads PROXY headers from
// the given networks, and AUTH allowed without TLS to keep the dialog short.
func proxyEnv(t *testing.T, networks []string) (addr string, dir string) {
	cert, _, _ := relaytest.Cert()
	dir = t.TempDir()
	log := slog.New(slog.NewTextHandler(io.Discard, nil))
	q, err := queue.Open(queue.Config{Dir: dir}, nil, log)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { q.Close() })
	srv := serve(t, smtpd.Config{
		Domain:        "relay.test",
		Listeners:     []smtpd.Listener{{Address: "127.0.0.1:0", Mode: smtpd.ModePlain, ProxyProtocol: true}},
		TLS:           &tls.Config{Certificates: []tls.Certificate{*cert}},
		ProxyNetworks: networks,
		Limits:        smtpd.Limits{MaxRecipients: 5, MaxMessageBytes: 1 << 20},
	}, BackendConfig{AllowInsecureAuth: true, Log: log},
		Deps{Policy: policy.New(policy.Config{EnforceHeaderFrom: true}, usersFile(t)), Queue: q})
	return srv.Addrs()[0].String(), dir
}

// sendVia submits one message after writing header (a PROXY header or
// nothing) and returns the server's last reply line.
func sendVia(t *testing.T, addr string, header []byte) string {
	c, err := net.Dial("tcp", addr)
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	c.SetDeadline(time.Now().Add(2 * time.Second))
	c.Write(header)
	r := bufio.NewReader(c)
	var last string
	read := func() {
		for {
			line, err := r.ReadString('\n')
			last = strings.TrimSpace(line)
			if err != nil || len(line) < 4 || line[3] != '-' {
				return
			}
		}
	}
	read()
	for _, cmd := range []string{"EHLO c.test", "AUTH PLAIN AGFsaWNlAGFsaWNlLXB3", "MAIL FROM:<alice@example.com>", "RCPT TO:<b@x.org>", "DATA"} {
		if !strings.HasPrefix(last, "2") && !strings.HasPrefix(last, "3") {
			return last
		}
		c.Write([]byte(cmd + "\r\n"))
		read()
	}
	c.Write([]byte(goodMsg + ".\r\n"))
	read()
	return last
}

func receivedFrom(t *testing.T, dir string) string {
	sp, _ := queue.OpenSpool(dir)
	ms, _ := sp.List()
	if len(ms) == 0 {
		return ""
	}
	p := ms[len(ms)-1].Prepend
	i := strings.Index(p, "([")
	return p[i+2 : strings.Index(p[i:], "])")+i]
}

func TestProxyProtocolFromAllowedNetwork(t *testing.T) {
	addr, dir := proxyEnv(t, []string{"127.0.0.0/8"})
	v1 := []byte("PROXY TCP4 192.0.2.7 127.0.0.1 40000 25\r\n")
	if last := sendVia(t, addr, v1); !strings.HasPrefix(last, "250 2.0.0 OK: queued") {
		t.Fatalf("v1: %q", last)
	}
	if got := receivedFrom(t, dir); got != "192.0.2.7" {
		t.Fatalf("v1: Received names %q, want the client behind the proxy", got)
	}
	h := &proxyproto.Header{Version: 2, Command: proxyproto.PROXY, TransportProtocol: proxyproto.TCPv6,
		SourceAddr: &net.TCPAddr{IP: net.ParseIP("2001:db8::9"), Port: 40001}, DestinationAddr: &net.TCPAddr{IP: net.ParseIP("2001:db8::1"), Port: 25}}
	v2, err := h.Format()
	if err != nil {
		t.Fatal(err)
	}
	if last := sendVia(t, addr, v2); !strings.HasPrefix(last, "250 2.0.0 OK: queued") {
		t.Fatalf("v2: %q", last)
	}
	if got := receivedFrom(t, dir); got != "2001:db8::9" {
		t.Fatalf("v2: Received names %q", got)
	}
	// From a trusted proxy the header is required: a bare connection is
	// refused.
	if last := sendVia(t, addr, nil); strings.HasPrefix(last, "250") || strings.HasPrefix(last, "220") {
		t.Fatalf("no header from the proxy network: %q", last)
	}
}

func TestProxyProtocolFromOtherNetwork(t *testing.T) {
	addr, dir := proxyEnv(t, []string{"10.0.0.0/8"})
	if last := sendVia(t, addr, []byte("PROXY TCP4 192.0.2.7 127.0.0.1 40000 25\r\n")); strings.HasPrefix(last, "250") {
		t.Fatalf("a PROXY header from an untrusted address was honoured: %q", last)
	}
	if last := sendVia(t, addr, nil); !strings.HasPrefix(last, "250 2.0.0 OK: queued") {
		t.Fatalf("a direct client without a header: %q", last)
	}
	if got := receivedFrom(t, dir); got != "127.0.0.1" {
		t.Fatalf("Received names %q, want the real peer", got)
	}
}
