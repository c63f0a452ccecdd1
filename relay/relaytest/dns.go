package relaytest

import (
	"net"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/miekg/dns"
)

// DNS is an authoritative DNS server on loopback (UDP and TCP on one
// port) that answers TXT questions from a table a test fills: a name set
// with records answers them, one set with none answers NOERROR and no
// records (NODATA), one marked failing answers SERVFAIL, and any other
// name NXDOMAIN.
type DNS struct {
	Addr string // host:port

	mu      sync.Mutex
	txt     map[string][][]string // fully qualified lower-case name → records, each its strings
	failing map[string]bool
}

// StartDNS starts a DNS server; it stops at the end of the test.
func StartDNS(t testing.TB) *DNS {
	t.Helper()
	// The same port for UDP and TCP: the kernel picks a free UDP port,
	// which a TCP connection of the busy machine may hold; then another.
	var pc net.PacketConn
	var ln net.Listener
	var err error
	for range 20 {
		if pc, err = net.ListenPacket("udp", "127.0.0.1:0"); err != nil {
			t.Fatal(err)
		}
		if ln, err = net.Listen("tcp", pc.LocalAddr().String()); err == nil {
			break
		}
		pc.Close()
	}
	if err != nil {
		t.Fatal(err)
	}
	d := &DNS{Addr: pc.LocalAddr().String(), txt: map[string][][]string{}, failing: map[string]bool{}}
	started := make(chan struct{}, 2)
	notify := func() { started <- struct{}{} }
	for _, srv := range []*dns.Server{
		{PacketConn: pc, Handler: d, NotifyStartedFunc: notify},
		{Listener: ln, Handler: d, NotifyStartedFunc: notify},
	} {
		go srv.ActivateAndServe()
		// Shutdown before the server started would leave it running.
		select {
		case <-started:
		case <-time.After(10 * time.Second):
			t.Fatal("the DNS server did not start")
		}
		t.Cleanup(func() { srv.Shutdown() })
	}
	return d
}

// SetTXT publishes records at name, replacing what was there; each record
// is given as its strings (DNS holds at most 255 bytes in one string, so
// long records are split into several). No records: the name exists but
// has no TXT record.
func (d *DNS) SetTXT(name string, records ...[]string) {
	d.mu.Lock()
	defer d.mu.Unlock()
	n := dns.Fqdn(strings.ToLower(name))
	d.txt[n] = records
	delete(d.failing, n)
}

// Fail makes questions about name answered with SERVFAIL.
func (d *DNS) Fail(name string) {
	d.mu.Lock()
	defer d.mu.Unlock()
	d.failing[dns.Fqdn(strings.ToLower(name))] = true
}

// Remove takes name out of the zone: it answers NXDOMAIN again.
func (d *DNS) Remove(name string) {
	d.mu.Lock()
	defer d.mu.Unlock()
	n := dns.Fqdn(strings.ToLower(name))
	delete(d.txt, n)
	delete(d.failing, n)
}

// ServeDNS answers one query.
func (d *DNS) ServeDNS(w dns.ResponseWriter, req *dns.Msg) {
	m := new(dns.Msg)
	m.SetReply(req)
	m.Authoritative = true
	if len(req.Question) != 1 {
		m.Rcode = dns.RcodeFormatError
		w.WriteMsg(m)
		return
	}
	q := req.Question[0]
	name := strings.ToLower(q.Name)
	d.mu.Lock()
	records, found := d.txt[name]
	failing := d.failing[name]
	d.mu.Unlock()
	switch {
	case failing:
		m.Rcode = dns.RcodeServerFailure
	case !found:
		m.Rcode = dns.RcodeNameError
	case q.Qtype == dns.TypeTXT:
		for _, r := range records {
			m.Answer = append(m.Answer, &dns.TXT{Hdr: dns.RR_Header{Name: q.Name, Rrtype: dns.TypeTXT, Class: dns.ClassINET, Ttl: 60}, Txt: r})
		}
	}
	if o := req.IsEdns0(); o != nil {
		m.SetEdns0(o.UDPSize(), false)
	}
	if _, udp := w.RemoteAddr().(*net.UDPAddr); udp {
		m.Truncate(udpSize(req))
	}
	w.WriteMsg(m)
}

// udpSize is the largest UDP answer the client takes.
func udpSize(req *dns.Msg) int {
	if o := req.IsEdns0(); o != nil {
		return int(o.UDPSize())
	}
	return dns.MinMsgSize
}
