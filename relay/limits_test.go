package relay

import (
	"context"
	"errors"
	"io"
	"log/slog"
	"strings"
	"testing"
	"time"

	"github.com/emersion/go-sasl"
	"github.com/emersion/go-smtp"

	"github.com/smarthost/smarthost/ratelimit"
)

func quotas(l ratelimit.Limiter, allow bool) *ratelimit.Quotas {
	return ratelimit.NewQuotas(ratelimit.Config{
		Classes: map[string]ratelimit.Class{"default": {
			Messages:   &ratelimit.Rate{N: 2, Per: time.Hour},
			Recipients: &ratelimit.Rate{N: 3, Per: time.Hour},
			Bytes:      &ratelimit.Rate{N: 2000, Per: time.Hour},
		}},
		AuthFailures:   &ratelimit.Rate{N: 2, Per: 10 * time.Minute},
		AllowOnError:   allow,
		MaxMessageSize: 1500,
	}, l, slog.New(slog.NewTextHandler(io.Discard, nil)))
}

func wantPrefix(t *testing.T, err error, code int, enh smtp.EnhancedCode, text string) {
	t.Helper()
	var se *smtp.SMTPError
	if !errors.As(err, &se) || se.Code != code || se.EnhancedCode != enh || !strings.HasPrefix(se.Message, text) {
		t.Fatalf("got %v, want %d %v %q...", err, code, enh, text)
	}
}

func TestMessageAndRecipientLimits(t *testing.T) {
	e := newEnv(t, testOpts{quotas: quotas(ratelimit.NewMemory(nil), false)})
	c := e.client(t, "alice", "alice-pw")
	if err := send(c, "alice@example.com", []string{"a@x.org", "b@x.org"}, goodMsg); err != nil {
		t.Fatal(err)
	}
	if err := c.Mail("alice@example.com", nil); err != nil {
		t.Fatal(err)
	}
	if err := c.Rcpt("c@x.org", nil); err != nil {
		t.Fatal(err)
	}
	wantPrefix(t, c.Rcpt("d@x.org", nil), 450, smtp.EnhancedCode{4, 7, 1}, "Rate limit reached for recipients; try again in 20m")
	c.Reset()
	wantPrefix(t, c.Mail("alice@example.com", nil), 450, smtp.EnhancedCode{4, 7, 1}, "Rate limit reached for messages; try again in ")
}

func TestByteLimits(t *testing.T) {
	e := newEnv(t, testOpts{quotas: quotas(ratelimit.NewMemory(nil), false)})
	c := e.client(t, "alice", "alice-pw")
	wantPrefix(t, c.Mail("alice@example.com", &smtp.MailOptions{Size: 2500}), 450, smtp.EnhancedCode{4, 7, 1}, "Rate limit reached for bytes")
	c = e.client(t, "alice", "alice-pw")
	big := "From: alice@example.com\r\n\r\n" + strings.Repeat("x", 1400) + "\r\n"
	if err := send(c, "alice@example.com", []string{"a@x.org"}, big); err != nil {
		t.Fatalf("first big message: %v", err)
	}
	c = e.client(t, "alice", "alice-pw")
	wantPrefix(t, send(c, "alice@example.com", []string{"a@x.org"}, big), 450, smtp.EnhancedCode{4, 7, 1}, "Rate limit reached for bytes")
	if n := len(e.queued(t)); n != 1 {
		t.Fatalf("%d messages queued, want the first only", n)
	}
}

func TestAuthFailureLockout(t *testing.T) {
	e := newEnv(t, testOpts{quotas: quotas(ratelimit.NewMemory(nil), false)})
	for i := 0; i < 2; i++ {
		c := e.client(t, "", "")
		wantReply(t, c.Auth(sasl.NewPlainClient("", "alice", "guess")), 535, "5.7.8", "")
	}
	c := e.client(t, "", "")
	wantPrefix(t, c.Auth(sasl.NewPlainClient("", "alice", "alice-pw")), 454, smtp.EnhancedCode{4, 7, 0}, "Too many failed authentications from your address; try again in ")
}

type downLimiter struct{}

func (downLimiter) AllowN(context.Context, string, ratelimit.Limit, int64) (ratelimit.Result, error) {
	return ratelimit.Result{}, errors.New("redis: connection refused")
}

func TestLimiterDown(t *testing.T) {
	e := newEnv(t, testOpts{quotas: quotas(downLimiter{}, false)})
	c := e.client(t, "", "")
	wantReply(t, c.Auth(sasl.NewPlainClient("", "alice", "alice-pw")), 454, "4.7.0", "Temporary authentication failure")

	e = newEnv(t, testOpts{quotas: quotas(downLimiter{}, true)})
	c = e.client(t, "alice", "alice-pw")
	if err := send(c, "alice@example.com", []string{"a@x.org"}, goodMsg); err != nil {
		t.Fatalf("on_backend_error allow: %v", err)
	}
}

func TestLimiterDownTempfailsMail(t *testing.T) {
	q := ratelimit.NewQuotas(ratelimit.Config{Classes: map[string]ratelimit.Class{"default": {Messages: &ratelimit.Rate{N: 5, Per: time.Hour}}}},
		downLimiter{}, slog.New(slog.NewTextHandler(io.Discard, nil)))
	e := newEnv(t, testOpts{quotas: q})
	c := e.client(t, "alice", "alice-pw")
	wantReply(t, c.Mail("alice@example.com", nil), 451, "4.4.3", "Rate limit service unavailable, try again later")
}
