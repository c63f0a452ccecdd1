package upstream

import (
	"context"
	"errors"
	"net"
	"strings"
	"testing"

	"github.com/emersion/go-smtp"

	"github.com/smarthost/smarthost/relay/relaytest"
)

// Each recipient's outcome says where it went (the upstream's name and
// address, the TLS version) and what the upstream said, as it said it:
// its reply to the message for one taken, its refusal for one refused.
func TestOutcomeSaysWhatTheUpstreamSaid(t *testing.T) {
	cert, pool, _ := relaytest.Cert()
	s := sink(t, relaytest.SinkOptions{TLS: cert})
	s.FailRcpt("gone@y.org", &smtp.SMTPError{Code: 550, EnhancedCode: smtp.EnhancedCode{5, 1, 1}, Message: "no such user here"})
	r := router(t, Upstream{Name: "mx", URL: "smtp://" + s.Addr, RootCAs: pool, TLS: "required", TLSVerify: false})
	defer r.Close()
	out := r.Deliver(context.Background(), message(t, "a@x.org", "bob@y.org", "gone@y.org"))
	ok, gone := out[0], out[1]
	if ok.Err != nil || ok.Upstream != "mx" || ok.Addr != s.Addr || ok.TLS != "TLSv1.3" || !strings.HasPrefix(ok.Reply, "250 2.0.0 ") || ok.Took <= 0 {
		t.Errorf("taken: %+v, want upstream mx at %s, TLSv1.3, its 250 reply", ok, s.Addr)
	}
	if gone.Err == nil || gone.Reply != "550 5.1.1 no such user here" || gone.Addr != s.Addr {
		t.Errorf("refused: %+v, want the 550 as sent", gone)
	}
	// No answer at all: no reply, the error says why.
	r2 := router(t, Upstream{Name: "down", URL: "smtp://" + closedPort(t), TLS: "none"})
	defer r2.Close()
	down := r2.Deliver(context.Background(), message(t, "a@x.org", "bob@y.org"))[0]
	if down.Err == nil || down.Reply != "" || down.Upstream != "down" || !errors.Is(down.Err, errConnect) {
		t.Errorf("down: %+v", down)
	}
}

// closedPort is a loopback address where nothing listens: connections are
// refused.
func closedPort(t *testing.T) string {
	t.Helper()
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	addr := l.Addr().String()
	l.Close()
	return addr
}
