// Package inspect is what an administrator asks of a running relay on its
// admin listener: the history of messages (GET /v1/messages?q=), the queue
// (GET /v1/queue and POST /v1/queue/{hold,release,delete,bounce}, with the
// filters of `smarthost queue`), and a read-only status page (GET /status)
// with the queue, the upstreams' health, recent deliveries and failures
// and a trace search. It serves them; the daemon puts them behind its
// guards (the token, and for what changes the queue, its refusal of
// requests a browser sends cross-site).
//
// Where things are: api.go (this file) the JSON endpoints; page.go and
// page.html the status page; health.go each upstream's health, from the
// events.
package inspect

import (
	"encoding/json"
	"fmt"
	"net/http"
	"net/url"
	"strings"
	"time"

	"github.com/smarthost/smarthost/relay/history"
	"github.com/smarthost/smarthost/relay/queue"
)

// Queue is what the endpoints use of *queue.Queue.
type Queue interface {
	List(f queue.Filter) []queue.Queued
	Manage(op string, f queue.Filter, by string) ([]string, error)
	Summarize() queue.Summary
}

// Config is what the endpoints serve from.
type Config struct {
	Queue       Queue
	HistoryDir  string   // "": no history kept
	Upstreams   []string // the configured ones, for the page
	Health      *Health
	Hostname    string
	Version     string
	Now         func() time.Time // nil: time.Now
	TraceWindow time.Duration    // how far back the page searches; default 72h
}

// Routes adds the endpoints to mux: those that read through read, those
// that change the queue through write.
func Routes(mux *http.ServeMux, read, write func(http.Handler) http.Handler, cfg Config) {
	if cfg.Now == nil {
		cfg.Now = time.Now
	}
	if cfg.TraceWindow == 0 {
		cfg.TraceWindow = 72 * time.Hour
	}
	if cfg.Health == nil {
		cfg.Health = NewHealth()
	}
	mux.Handle("GET /v1/messages", read(http.HandlerFunc(cfg.messages)))
	mux.Handle("GET /v1/queue", read(http.HandlerFunc(cfg.list)))
	mux.Handle("POST /v1/queue/{op}", write(http.HandlerFunc(cfg.manage)))
	mux.Handle("GET /status", read(http.HandlerFunc(cfg.page)))
	mux.Handle("GET /{$}", http.RedirectHandler("/status", http.StatusFound))
}

// messages answers GET /v1/messages?q=QUERY[&since=24h][&limit=N] with the
// stories of the messages QUERY names (history.Search), newest first.
func (c Config) messages(w http.ResponseWriter, r *http.Request) {
	q, err := c.query(r.URL.Query())
	if err != nil {
		http.Error(w, err.Error(), http.StatusBadRequest)
		return
	}
	stories, err := c.search(q)
	if err != nil {
		http.Error(w, err.Error(), http.StatusServiceUnavailable)
		return
	}
	writeJSON(w, stories)
}

func (c Config) query(v url.Values) (history.Query, error) {
	q := history.Query{Text: v.Get("q")}
	if q.Text == "" {
		return q, fmt.Errorf("q is needed: a queue ID, a Message-ID or an address")
	}
	if s := v.Get("since"); s != "" {
		d, err := time.ParseDuration(s)
		if err != nil || d <= 0 {
			return q, fmt.Errorf("since: %q is not a duration such as 24h", s)
		}
		q.Since = c.Now().Add(-d)
	}
	if l := v.Get("limit"); l != "" {
		if _, err := fmt.Sscan(l, &q.Limit); err != nil {
			return q, fmt.Errorf("limit: %q is not a number", l)
		}
	}
	return q, nil
}

func (c Config) search(q history.Query) ([]history.Story, error) {
	if c.HistoryDir == "" {
		return nil, fmt.Errorf("this relay keeps no history (history.enabled: false)")
	}
	return history.Search(c.HistoryDir, q)
}

// list answers GET /v1/queue with the messages the filter picks.
func (c Config) list(w http.ResponseWriter, r *http.Request) {
	f, err := ParseFilter(r.URL.Query())
	if err != nil {
		http.Error(w, err.Error(), http.StatusBadRequest)
		return
	}
	writeJSON(w, c.Queue.List(f))
}

// manage answers POST /v1/queue/{op} (hold, release, delete, bounce) with
// the IDs of the messages it acted on: {"ids": [...]}.
func (c Config) manage(w http.ResponseWriter, r *http.Request) {
	f, err := ParseFilter(r.URL.Query())
	if err != nil {
		http.Error(w, err.Error(), http.StatusBadRequest)
		return
	}
	by := r.URL.Query().Get("by")
	if by == "" {
		by = "admin API from " + r.RemoteAddr
	}
	ids, err := c.Queue.Manage(r.PathValue("op"), f, by)
	if err != nil && len(ids) == 0 {
		http.Error(w, err.Error(), http.StatusBadRequest)
		return
	}
	out := struct {
		IDs   []string `json:"ids"`
		Error string   `json:"error,omitempty"`
	}{IDs: ids}
	if err != nil {
		out.Error = err.Error()
	}
	writeJSON(w, out)
}

// ParseFilter reads a queue filter from id (repeated), from, to,
// older_than, upstream and state: the flags of `smarthost queue`.
func ParseFilter(v url.Values) (queue.Filter, error) {
	f := queue.Filter{IDs: v["id"], From: v.Get("from"), To: v.Get("to"), Upstream: v.Get("upstream"), State: v.Get("state")}
	if s := v.Get("older_than"); s != "" {
		d, err := time.ParseDuration(s)
		if err != nil || d <= 0 {
			return f, fmt.Errorf("older-than: %q is not a duration such as 1h", s)
		}
		f.OlderThan = d
	}
	switch f.State {
	case "", queue.StateActive, queue.StateDeferred, queue.StateHeld:
	default:
		return f, fmt.Errorf("state: %q is not deferred, held or active", f.State)
	}
	for _, id := range f.IDs {
		if len(id) != 20 || strings.Trim(strings.ToUpper(id), "0123456789ABCDEF") != "" {
			return f, fmt.Errorf("%q is not a queue ID", id)
		}
	}
	return f, nil
}

// FilterValues is ParseFilter's inverse, for a client.
func FilterValues(f queue.Filter) url.Values {
	v := url.Values{}
	for _, id := range f.IDs {
		v.Add("id", id)
	}
	for k, s := range map[string]string{"from": f.From, "to": f.To, "upstream": f.Upstream, "state": f.State} {
		if s != "" {
			v.Set(k, s)
		}
	}
	if f.OlderThan > 0 {
		v.Set("older_than", f.OlderThan.String())
	}
	return v
}

func writeJSON(w http.ResponseWriter, v any) {
	w.Header().Set("Content-Type", "application/json")
	enc := json.NewEncoder(w)
	enc.SetEscapeHTML(false)
	enc.SetIndent("", "  ")
	enc.Encode(v)
}
