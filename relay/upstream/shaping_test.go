package upstream

import (
	"context"
	"errors"
	"testing"
	"time"

	"github.com/emersion/go-smtp"

	"github.com/smarthost/smarthost/ratelimit"
	"github.com/smarthost/smarthost/relay/queue"
	"github.com/smarthost/smarthost/relay/relaytest"
	"github.com/smarthost/smarthost/relay/upstream/smtpclient"
)

func TestDefaultThrottleRules(t *testing.T) {
	for _, c := range []struct {
		reply smtpclient.Error
		hold  bool
	}{
		// Microsoft 365's published replies.
		{smtpclient.Error{Code: 432, Enhanced: smtpclient.EnhancedCode{4, 3, 2}, Text: "Concurrent connections limit exceeded."}, true},
		{smtpclient.Error{Code: 451, Enhanced: smtpclient.EnhancedCode{4, 3, 2}, Text: "STOREDRV.ClientSubmit; sender thread limit exceeded."}, true},
		{smtpclient.Error{Code: 554, Enhanced: smtpclient.EnhancedCode{5, 2, 0}, Text: "STOREDRV.Submission.Exception:SubmissionQuotaExceededException; Failed to process message due to a permanent exception"}, true},
		{smtpclient.Error{Code: 550, Enhanced: smtpclient.EnhancedCode{5, 2, 251}, Text: "Sender throttled due to continuous mailbox full errors."}, true},
		{smtpclient.Error{Code: 550, Enhanced: smtpclient.EnhancedCode{5, 2, 255}, Text: "Sender throttled due to continuous invalid recipients errors."}, true},
		// Google's.
		{smtpclient.Error{Code: 550, Enhanced: smtpclient.EnhancedCode{5, 4, 5}, Text: "Daily user sending limit exceeded. For more information on Gmail sending limits go to https://support.google.com/a/answer/166852 - gsmtp"}, true},
		{smtpclient.Error{Code: 550, Enhanced: smtpclient.EnhancedCode{5, 4, 5}, Text: "Daily SMTP relay limit exceeded for user. - gsmtp"}, true},
		{smtpclient.Error{Code: 550, Enhanced: smtpclient.EnhancedCode{5, 7, 1}, Text: "Daily SMTP relay limit exceeded for customer. - gsmtp"}, true},
		{smtpclient.Error{Code: 450, Enhanced: smtpclient.EnhancedCode{4, 2, 1}, Text: "Peak SMTP relay limit exceeded for this customer. This is a temporary error."}, true},
		{smtpclient.Error{Code: 421, Enhanced: smtpclient.EnhancedCode{4, 7, 0}, Text: "Try again later, closing connection. (EHLO) - gsmtp"}, true},
		// The generic ones.
		{smtpclient.Error{Code: 421, Enhanced: smtpclient.EnhancedCode{4, 7, 0}, Text: "Too many messages"}, true},
		{smtpclient.Error{Code: 421, Text: "Too many concurrent SMTP connections from this IP address; please try again later."}, true},
		{smtpclient.Error{Code: 454, Enhanced: smtpclient.EnhancedCode{4, 7, 0}, Text: "Too many login attempts, please try again later."}, true},
		// Not throttles: about one recipient or message, or for good.
		{smtpclient.Error{Code: 554, Enhanced: smtpclient.EnhancedCode{5, 2, 0}, Text: "STOREDRV.Deliver.Exception:QuotaExceededException.MapiExceptionShutoffQuotaExceeded; Failed to process message"}, false},
		{smtpclient.Error{Code: 450, Enhanced: smtpclient.EnhancedCode{4, 2, 1}, Text: "The user you are trying to contact is receiving mail too quickly."}, false},
		{smtpclient.Error{Code: 452, Enhanced: smtpclient.EnhancedCode{4, 5, 3}, Text: "Too many recipients"}, false},
		{smtpclient.Error{Code: 550, Enhanced: smtpclient.EnhancedCode{5, 2, 250}, Text: "Sender throttled"}, false},
		{smtpclient.Error{Code: 550, Enhanced: smtpclient.EnhancedCode{5, 1, 1}, Text: "no such user"}, false},
		{smtpclient.Error{Code: 451, Enhanced: smtpclient.EnhancedCode{4, 3, 0}, Text: "try later"}, false},
	} {
		reply := c.reply
		_, hold := throttleRule(DefaultThrottleRules, errors.Join(errConnect, &reply))
		if hold != c.hold {
			t.Errorf("%s: hold %v, want %v", reply.Error(), hold, c.hold)
		}
	}
}

// shapedRouter is a router whose upstreams share the shaper's store.
func shapedRouter(t *testing.T, st ratelimit.UpstreamStore, routes []Route, ups ...Upstream) *Router {
	t.Helper()
	for i := range ups {
		ups[i].Timeout, ups[i].TLS = 5*time.Second, "none"
	}
	r, err := NewRouter(Config{Hostname: "relay.test", Upstreams: ups, Routes: routes,
		Shaping: &Shaping{Shaper: ratelimit.NewShaper(ratelimit.ShaperConfig{}, st, quiet()), Classes: map[string]queue.Priority{"news": queue.PriorityBulk}}}, quiet())
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(r.Close)
	return r
}

func waitOf(t *testing.T, errs []error) *queue.WaitError {
	t.Helper()
	var w *queue.WaitError
	if len(errs) != 1 || !errors.As(errs[0], &w) {
		t.Fatalf("outcome %v, want a wait", errs)
	}
	return w
}

// TestRouterWaitsForItsBudget: over the limit, the delivery is not tried:
// it waits in the lane of the upstream's identity, and upstreams that log
// in as the same mailbox share that budget.
func TestRouterWaitsForItsBudget(t *testing.T) {
	s := sink(t, relaytest.SinkOptions{Users: map[string]string{"relay@example.com": "pw"}})
	limit := &ratelimit.Budget{Limits: ratelimit.UpstreamLimits{Messages: &ratelimit.Rate{N: 1, Per: time.Hour}}}
	r := shapedRouter(t, ratelimit.NewMemory(nil), []Route{{Classes: []string{"news"}, Upstreams: []string{"second"}}},
		Upstream{Name: "first", URL: "smtp://" + s.Addr, Username: "relay@example.com", Password: "pw", Budget: limit},
		Upstream{Name: "second", URL: "smtp://" + s.Addr, Username: "Relay@Example.com", Password: "pw", Budget: limit})
	m := message(t, "a@x.org", "b@y.org")
	if errs := deliver(r, context.Background(), m); errs[0] != nil {
		t.Fatalf("first message: %v", errs)
	}
	w := waitOf(t, deliver(r, context.Background(), m))
	if w.Reason != ratelimit.ReasonRate || w.Upstream != "first" || w.Lane != "relay@example.com@127.0.0.1" || w.After < 59*time.Minute {
		t.Errorf("second message: %+v, want a wait of about an hour for first's rate", w)
	}
	m.Class = "news" // the route through second, the same mailbox
	w = waitOf(t, deliver(r, context.Background(), m))
	if w.Upstream != "second" || w.Lane != "relay@example.com@127.0.0.1" || w.Priority != queue.PriorityBulk {
		t.Errorf("through the other upstream: %+v, want the same budget, at bulk priority", w)
	}
	if n := len(s.Messages()); n != 1 {
		t.Errorf("the sink got %d messages, want 1: waiting is no attempt", n)
	}
	if lane, p := r.Lane(m); lane != w.Lane || p != queue.PriorityBulk {
		t.Errorf("Lane: %q %v", lane, p)
	}
}

// TestRouterHoldsOnThrottle: a throttle reply puts the upstream on hold;
// its messages fail over to the route's next upstream, or wait for the
// hold (no attempt), and a probe after the cool-down ends it.
func TestRouterHoldsOnThrottle(t *testing.T) {
	ctx := context.Background()
	a, b := sink(t, relaytest.SinkOptions{}), sink(t, relaytest.SinkOptions{})
	throttle := &smtp.SMTPError{Code: 554, EnhancedCode: smtp.EnhancedCode{5, 2, 0}, Message: "STOREDRV.Submission.Exception:SubmissionQuotaExceededException; Failed to process message"}
	a.FailData(throttle)
	cool := &ratelimit.Budget{Cooldown: 300 * time.Millisecond}
	r := shapedRouter(t, ratelimit.NewMemory(nil), []Route{{Classes: []string{"only-a"}, Upstreams: []string{"a"}}},
		Upstream{Name: "a", URL: "smtp://" + a.Addr, Budget: cool}, Upstream{Name: "b", URL: "smtp://" + b.Addr})
	m := message(t, "a@x.org", "b@y.org")
	if errs := deliver(r, ctx, m); errs[0] != nil {
		t.Fatalf("a throttles, b takes it: %v", errs)
	}
	if len(b.Messages()) != 1 || a.Refused() != 0 {
		t.Fatalf("b got %d", len(b.Messages()))
	}
	m.Class = "only-a"
	w := waitOf(t, deliver(r, ctx, m))
	if w.Reason != ratelimit.ReasonHold || w.Upstream != "a" || w.After > 300*time.Millisecond {
		t.Fatalf("a route through a alone, during the hold: %+v, want a wait for the hold", w)
	}
	if queue.IsPermanent(w) {
		t.Fatal("a 5xx that means later bounced")
	}
	a.FailData(nil)
	relaytest.Eventually(t, "the probe after the cool-down", 5*time.Second, func() bool {
		return deliver(r, ctx, m)[0] == nil
	})
	if errs := deliver(r, ctx, m); errs[0] != nil {
		t.Fatalf("after the probe: %v", errs)
	}
	if n := len(a.Messages()); n != 2 {
		t.Errorf("a got %d messages after the hold, want 2 (the probe and the next)", n)
	}
}

// TestRouterConnectionsAcrossNodes: two nodes (routers over one store)
// open no more sessions to an identity than its limit together; one
// waits until the other's session closes.
func TestRouterConnectionsAcrossNodes(t *testing.T) {
	ctx := context.Background()
	s := sink(t, relaytest.SinkOptions{})
	st := ratelimit.NewMemory(nil)
	one := &ratelimit.Budget{Key: "mailbox", Limits: ratelimit.UpstreamLimits{Connections: 1}}
	n1 := shapedRouter(t, st, nil, Upstream{Name: "up", URL: "smtp://" + s.Addr, Budget: one, MaxConnections: 8})
	n2 := shapedRouter(t, st, nil, Upstream{Name: "up", URL: "smtp://" + s.Addr, Budget: one, MaxConnections: 8})
	m := message(t, "a@x.org", "b@y.org")
	if errs := deliver(n1, ctx, m); errs[0] != nil {
		t.Fatal(errs)
	}
	w := waitOf(t, deliver(n2, ctx, m))
	if w.Reason != ratelimit.ReasonConnections {
		t.Fatalf("second node while the first's session is open: %+v", w)
	}
	n1.Close() // its idle session goes, and its place with it
	if errs := deliver(n2, ctx, m); errs[0] != nil {
		t.Fatalf("after the first node closed its session: %v", errs)
	}
	if got := s.Connections(); got != 2 {
		t.Errorf("%d connections, want 2", got)
	}
}
