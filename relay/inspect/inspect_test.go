package inspect

import (
	"context"
	"encoding/json"
	"io"
	"log/slog"
	"net/http"
	"net/http/httptest"
	"net/url"
	"strings"
	"testing"
	"time"

	"github.com/smarthost/smarthost/relay/history"
	"github.com/smarthost/smarthost/relay/queue"
	"github.com/smarthost/smarthost/relay/relaytest"
)

// taker takes every recipient but gone@, as an upstream named mx would.
type taker struct{}

func (taker) Deliver(_ context.Context, m *queue.Message) []queue.Outcome {
	var out []queue.Outcome
	for _, r := range m.Pending() {
		o := queue.Outcome{Upstream: "mx", Addr: "192.0.2.7:25", TLS: "TLSv1.3", Reply: "250 2.0.0 Ok: queued as 4ZxYw1"}
		if strings.HasPrefix(r, "gone@") {
			o.Err, o.Reply = queue.Permanent(io.ErrUnexpectedEOF), "550 5.1.1 <gone@y.org>: Recipient address rejected"
		}
		out = append(out, o)
	}
	return out
}

// server is a queue delivering through taker, its history, and the
// endpoints, unguarded.
func server(t *testing.T) (*httptest.Server, *queue.Queue, *history.History) {
	t.Helper()
	dir := t.TempDir()
	h, err := history.Open(history.Config{Dir: dir + "/history"})
	if err != nil {
		t.Fatal(err)
	}
	health := NewHealth()
	q, err := queue.Open(queue.Config{Dir: dir + "/queue", Hostname: "relay.test", Retry: []time.Duration{time.Hour},
		Observer: queue.Observers{h, health}}, taker{}, slog.New(slog.DiscardHandler))
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan struct{})
	go func() { q.Run(ctx); close(done) }()
	t.Cleanup(func() { cancel(); <-done; q.Close(); h.Close() })
	mux := http.NewServeMux()
	open := func(h http.Handler) http.Handler { return h }
	Routes(mux, open, open, Config{Queue: q, HistoryDir: dir + "/history",
		Upstreams: []string{"mx", "backup"}, Health: health, Hostname: "relay.test", Version: "test"})
	srv := httptest.NewServer(mux)
	t.Cleanup(srv.Close)
	return srv, q, h
}

func get(t *testing.T, u string) (int, string) {
	t.Helper()
	resp, err := http.Get(u)
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	b, _ := io.ReadAll(resp.Body)
	return resp.StatusCode, string(b)
}

func TestMessagesAndPage(t *testing.T) {
	srv, q, _ := server(t)
	d, _ := q.Create()
	io.WriteString(d, "Subject: reset\r\n\r\nbody\r\n")
	id, err := d.Commit(queue.Envelope{From: "app@x.org", To: []string{"bob@y.org", "gone@y.org"}, MessageID: "<reset-1@x.org>", User: "app1"}, nil)
	if err != nil {
		t.Fatal(err)
	}
	var stories []history.Story
	relaytest.Eventually(t, "the story in the history", 10*time.Second, func() bool {
		code, body := get(t, srv.URL+"/v1/messages?q="+url.QueryEscape("<reset-1@x.org>"))
		stories = nil
		return code == 200 && json.Unmarshal([]byte(body), &stories) == nil && len(stories) == 2 && len(stories[1].Events) >= 4
	})
	if stories[1].ID != id {
		t.Fatalf("stories %+v", stories)
	}
	if code, _ := get(t, srv.URL+"/v1/messages"); code != http.StatusBadRequest {
		t.Errorf("no q: %d", code)
	}
	code, page := get(t, srv.URL+"/status?q="+id)
	for _, want := range []string{"250 2.0.0 Ok: queued as 4ZxYw1", "550 5.1.1 &lt;gone@y.org&gt;: Recipient address rejected", "&lt;reset-1@x.org&gt;",
		`<td>mx</td><td class="ok">ok</td>`, `<td>backup</td><td class="idle">idle</td>`} {
		if !strings.Contains(page, want) {
			t.Errorf("the page (%d) lacks %q", code, want)
		}
	}
	if strings.Contains(page, "<script") || strings.Contains(page, "http://") || strings.Contains(page, "https://") {
		t.Error("the page has a script or loads something from elsewhere")
	}
}

func TestQueueEndpoints(t *testing.T) {
	srv, q, _ := server(t)
	// Three messages the upstream refuses: they bounce, and their
	// notifications go out; then the queue is empty.
	for range 3 {
		d, _ := q.Create()
		io.WriteString(d, "Subject: x\r\n\r\nbody\r\n")
		if _, err := d.Commit(queue.Envelope{From: "news@x.org", To: []string{"gone@y.org"}}, nil); err != nil {
			t.Fatal(err)
		}
	}
	relaytest.Eventually(t, "the bounces delivered", 10*time.Second, func() bool { return len(q.List(queue.Filter{})) == 0 })
	if code, body := get(t, srv.URL+"/v1/queue?state=bogus"); code != http.StatusBadRequest {
		t.Errorf("bad state: %d %s", code, body)
	}
	resp, err := http.Post(srv.URL+"/v1/queue/hold?"+FilterValues(queue.Filter{From: "nobody@x.org"}).Encode(), "", nil)
	if err != nil {
		t.Fatal(err)
	}
	var out struct{ IDs []string }
	json.NewDecoder(resp.Body).Decode(&out)
	resp.Body.Close()
	if resp.StatusCode != 200 || len(out.IDs) != 0 {
		t.Errorf("hold of nothing: %d %v", resp.StatusCode, out.IDs)
	}
	resp, _ = http.Post(srv.URL+"/v1/queue/hold", "", nil)
	if resp.StatusCode != http.StatusBadRequest {
		t.Errorf("hold without a filter: %d", resp.StatusCode)
	}
	resp.Body.Close()
}
