package daemon

import (
	"bytes"
	"context"
	"crypto/tls"
	"encoding/json"
	"fmt"
	"io"
	"log/slog"
	"net/http"
	"net/http/httptest"
	"net/url"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/emersion/go-sasl"
	"github.com/emersion/go-smtp"

	"github.com/smarthost/smarthost/configs"
	"github.com/smarthost/smarthost/relay/history"
	"github.com/smarthost/smarthost/relay/queue"
	"github.com/smarthost/smarthost/relay/relaytest"
	"github.com/smarthost/smarthost/relay/webhook"
)

const hookSecret = "the-app's-webhook-secret"

// hookReceiver is a real HTTP server that verifies each event's signature
// and keeps the payloads; while down it answers 503.
type hookReceiver struct {
	srv  *httptest.Server
	down atomic.Bool
	mu   sync.Mutex
	got  []webhook.Payload
	bad  []string
	last time.Time
}

func newHookReceiver(t *testing.T) *hookReceiver {
	r := &hookReceiver{}
	r.srv = httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, req *http.Request) {
		if r.down.Load() {
			http.Error(w, "down", http.StatusServiceUnavailable)
			return
		}
		body, _ := io.ReadAll(req.Body)
		r.mu.Lock()
		defer r.mu.Unlock()
		var p webhook.Payload
		if err := webhook.Verify([]byte(hookSecret), body, req.Header.Get(webhook.HeaderSignature), time.Now(), time.Minute); err != nil {
			r.bad = append(r.bad, err.Error())
		} else if err := json.Unmarshal(body, &p); err != nil {
			r.bad = append(r.bad, err.Error())
		} else {
			r.got = append(r.got, p)
		}
		r.last = time.Now()
	}))
	t.Cleanup(r.srv.Close)
	return r
}

// running is a daemon in-process, with what it logged.
type running struct {
	d      *Daemon
	stop   context.CancelFunc
	ran    chan error
	logged *syncWriter
}

func runDaemon(t *testing.T, text []byte) *running {
	t.Helper()
	f, err := configs.Parse(text)
	if err != nil {
		t.Fatal(err)
	}
	r := &running{logged: &syncWriter{w: &bytes.Buffer{}}, ran: make(chan error, 1)}
	d, err := New(Config{File: f, Version: "test"}, slog.New(slog.NewTextHandler(r.logged, nil)))
	if err != nil {
		t.Fatal(err)
	}
	ctx, stop := context.WithCancel(context.Background())
	r.d, r.stop = d, stop
	go func() { r.ran <- d.Run(ctx) }()
	t.Cleanup(func() {
		r.halt(t)
		if t.Failed() {
			r.logged.mu.Lock()
			t.Logf("the daemon's log:\n%s", r.logged.w)
			r.logged.mu.Unlock()
		}
	})
	return r
}

// halt stops the daemon and waits for Run to return (once).
func (r *running) halt(t *testing.T) {
	if r.ran == nil {
		return
	}
	r.stop()
	select {
	case err := <-r.ran:
		if err != nil {
			t.Errorf("Run: %v", err)
		}
	case <-time.After(shutdownGrace + 10*time.Second):
		t.Fatal("Run did not return after its context ended")
	}
	r.ran = nil
}

// get answers GET path on the admin listener.
func (r *running) get(t *testing.T, path string) []byte {
	t.Helper()
	resp, err := http.Get("http://" + r.d.Addrs().Admin.String() + path)
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	b, _ := io.ReadAll(resp.Body)
	if resp.StatusCode != http.StatusOK {
		t.Fatalf("GET %s: %s %s", path, resp.Status, b)
	}
	return b
}

func (r *running) stories(t *testing.T, q string) []history.Story {
	t.Helper()
	var out []history.Story
	if err := json.Unmarshal(r.get(t, "/v1/messages?q="+url.QueryEscape(q)), &out); err != nil {
		t.Fatal(err)
	}
	return out
}

// send submits msg as alice to rcpts over implicit TLS.
func send(t *testing.T, addr string, rcpts []string, msg string) {
	t.Helper()
	c, err := smtp.DialTLS(addr, &tls.Config{InsecureSkipVerify: true})
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	if err := c.Auth(sasl.NewPlainClient("", "alice", "alice-pw")); err != nil {
		t.Fatal(err)
	}
	if err := c.SendMail("alice@example.com", rcpts, strings.NewReader(msg)); err != nil {
		t.Fatal(err)
	}
}

// A message is traced by its Message-ID, through the admin API and the
// status page, from acceptance to the upstream's reply, after it has
// left the queue and after a restart; the webhook receiver gets one
// signed event per recipient and outcome (delivered, and bounced with
// the DSN status for the refused recipient), though it was down until
// the restart.
func TestTraceAndWebhooksAcrossRestart(t *testing.T) {
	sink, err := relaytest.NewSink(relaytest.SinkOptions{})
	if err != nil {
		t.Fatal(err)
	}
	defer sink.Close()
	sink.FailRcpt("refused@dest.test", relaytest.ErrPerm)
	hooks := newHookReceiver(t)
	hooks.down.Store(true)
	dir := t.TempDir()
	text := append(relayConfig(t, dir, sink.Addr, map[string]string{"alice": "alice-pw"}),
		fmt.Sprintf("webhooks:\n  - {url: %q, secret: %q}\n", hooks.srv.URL, hookSecret)...)

	first := runDaemon(t, text)
	msg := "From: alice@example.com\r\nTo: ok@dest.test\r\nMessage-ID: <trace-1@example.com>\r\nSubject: traced\r\n\r\nbody\r\n"
	send(t, first.d.Addrs().SMTP[0].String(), []string{"ok@dest.test", "refused@dest.test"}, msg)
	relaytest.Eventually(t, "the message delivered and bounced, and gone from the queue", 20*time.Second, func() bool {
		kinds := map[string]bool{}
		for _, s := range first.stories(t, "<trace-1@example.com>") {
			for _, e := range s.Events {
				kinds[e.Kind] = true
			}
		}
		return kinds[queue.EventDelivered] && kinds[queue.EventBounced] && kinds[queue.EventDSN] && first.d.queue.Len() == 0
	})
	if n := first.metric(t, `smarthost_bounces_total{reason="refused"}`); n != 1 {
		t.Errorf("smarthost_bounces_total{reason=refused} = %v, want 1", n)
	}
	relaytest.Eventually(t, "a failed post counted", 20*time.Second, func() bool {
		return first.metric(t, `smarthost_webhook_events_total{result="failed"}`) >= 1
	})
	first.halt(t)

	hooks.down.Store(false)
	second := runDaemon(t, text)
	checkStory(t, second.stories(t, "trace-1@example.com"))
	page := string(second.get(t, "/status?q="+url.QueryEscape("<trace-1@example.com>")))
	for _, want := range []string{"trace-1@example.com", "ok@dest.test", "250 2.0.0 OK: queued", "550 5.1.1 no such user", "5.1.1"} {
		if !strings.Contains(page, want) {
			t.Errorf("the status page's trace lacks %q", want)
		}
	}
	msg2 := strings.ReplaceAll(msg, "trace-1", "trace-2")
	send(t, second.d.Addrs().SMTP[0].String(), []string{"ok@dest.test"}, msg2)
	checkHooks(t, hooks, second, dir)
	if n := second.metric(t, `smarthost_webhook_events_total{result="sent"}`); n != 4 {
		t.Errorf("smarthost_webhook_events_total{result=sent} = %v, want 4", n)
	}
	if s := second.metric(t, `smarthost_tls_certificate_expiry_seconds{cert="listeners"}`); s < 86400 {
		t.Errorf("the self-signed certificate expires in %v s", s)
	}
}

// metric is the value of one series on /metrics (-1: absent).
func (r *running) metric(t *testing.T, series string) float64 {
	t.Helper()
	for _, line := range strings.Split(string(r.get(t, "/metrics")), "\n") {
		if v, ok := strings.CutPrefix(line, series+" "); ok {
			var f float64
			fmt.Sscan(v, &f)
			return f
		}
	}
	return -1
}

// checkStory checks the story of the message traced: accepted with its
// user, client and Message-ID, delivered to ok@ with the sink's reply as
// sent, bounced for refused@ with its reply and DSN status, and the DSN's
// own story beside it.
func checkStory(t *testing.T, stories []history.Story) {
	t.Helper()
	if len(stories) != 2 {
		t.Fatalf("%d stories, want the message's and its DSN's: %+v", len(stories), stories)
	}
	var got []string
	for _, s := range stories {
		for _, e := range s.Events {
			line := e.Kind + " " + e.Rcpt + " " + e.Reply + " " + e.Status
			if e.Kind == queue.EventAccepted {
				line = fmt.Sprintf("accepted %s %s %v %v", e.User, e.MessageID, e.Rcpts, e.Client != "")
			}
			got = append(got, strings.TrimSpace(line))
		}
	}
	all := strings.Join(got, "\n")
	for _, want := range []string{
		"accepted alice <trace-1@example.com> [ok@dest.test refused@dest.test] true",
		"delivered ok@dest.test 250 2.0.0 OK: queued 2.0.0",
		"bounced refused@dest.test 550 5.1.1 no such user 5.1.1",
		"delivered alice@example.com 250 2.0.0 OK: queued 2.0.0", // the DSN, to the sender
	} {
		if !strings.Contains(all, want) {
			t.Errorf("the trace lacks %q; it has:\n%s", want, all)
		}
	}
}

// checkHooks waits until the outboxes are empty and the receiver quiet,
// then checks it got each event once, signed: both messages' deliveries,
// the bounce with its DSN status, and the DSN's delivery.
func checkHooks(t *testing.T, hooks *hookReceiver, r *running, dir string) {
	t.Helper()
	relaytest.Eventually(t, "the webhook events posted and the receiver quiet", 30*time.Second, func() bool {
		waiting, _ := filepath.Glob(filepath.Join(dir, "queue", "webhooks", "*", "*.json"))
		hooks.mu.Lock()
		n, last := len(hooks.got), hooks.last
		hooks.mu.Unlock()
		return n >= 4 && len(waiting) == 0 && r.d.queue.Len() == 0 && time.Since(last) >= relaytest.Quiet
	})
	hooks.mu.Lock()
	defer hooks.mu.Unlock()
	if len(hooks.bad) > 0 {
		t.Errorf("events the receiver refused: %v", hooks.bad)
	}
	count := map[string]int{}
	for _, p := range hooks.got {
		key := p.Event + " " + p.Rcpt + " " + p.Status + " " + p.MessageID
		if p.Rcpt == "alice@example.com" {
			key = p.Event + " " + p.Rcpt + " " + p.Status // the DSN's Message-ID is ours
		}
		count[key]++
		if p.QueueID == "" || p.From == "" && p.Rcpt != "alice@example.com" || p.Upstream != "sink" || p.Reply == "" {
			t.Errorf("payload lacks a field: %+v", p)
		}
	}
	want := []string{
		"delivered ok@dest.test 2.0.0 <trace-1@example.com>",
		"bounced refused@dest.test 5.1.1 <trace-1@example.com>",
		"delivered alice@example.com 2.0.0",
		"delivered ok@dest.test 2.0.0 <trace-2@example.com>",
	}
	for _, k := range want {
		if count[k] != 1 {
			t.Errorf("%q posted %d times, want once", k, count[k])
		}
	}
	if len(hooks.got) != len(want) {
		t.Errorf("the receiver got %d events, want %d: %v", len(hooks.got), len(want), count)
	}
	if _, err := os.Stat(filepath.Join(dir, "queue", "history")); err != nil {
		t.Errorf("no history beside the spool: %v", err)
	}
}
