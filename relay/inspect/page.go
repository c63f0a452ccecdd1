package inspect

import (
	_ "embed"
	"html/template"
	"net/http"
	"sort"
	"strings"
	"time"

	"github.com/smarthost/smarthost/relay/history"
	"github.com/smarthost/smarthost/relay/queue"
)

// The page is one server-rendered HTML document with its style inline: no
// script, no asset from elsewhere, so it works on an air-gapped host and
// behind a strict proxy. The search is a plain GET form.
//
//go:embed page.html
var pageHTML string

var pageTmpl = template.Must(template.New("page").Funcs(template.FuncMap{
	"ago":   func(now, t time.Time) string { return ago(now, t) },
	"when":  func(t time.Time) string { return t.Local().Format("2006-01-02 15:04:05") },
	"lines": func(s string) []string { return strings.Split(s, "\n") },
	"rows":  func(evs []queue.Event) struct{ Events []queue.Event } { return struct{ Events []queue.Event }{evs} },
}).Parse(pageHTML))

// pageData is what the template shows.
type pageData struct {
	Hostname, Version string
	Now               time.Time
	Queue             queue.Summary
	States            []count
	ByUpstream        []count
	Upstreams         []UpstreamHealth
	Delivered, Failed []queue.Event
	History           bool
	Query             string
	Stories           []history.Story
	SearchErr         string
}

type count struct {
	Name string
	N    int
}

// page answers GET /status[?q=QUERY].
func (c Config) page(w http.ResponseWriter, r *http.Request) {
	now := c.Now()
	d := pageData{Hostname: c.Hostname, Version: c.Version, Now: now, Queue: c.Queue.Summarize(),
		Upstreams: c.Health.Snapshot(c.Upstreams), History: c.HistoryDir != "", Query: strings.TrimSpace(r.URL.Query().Get("q"))}
	for _, s := range []string{queue.StateActive, queue.StateDeferred, queue.StateHeld} {
		d.States = append(d.States, count{s, d.Queue.ByState[s]})
	}
	d.ByUpstream = sorted(d.Queue.ByUpstream)
	if d.History {
		d.Delivered, _ = history.Recent(c.HistoryDir, 15, queue.EventDelivered, queue.EventHandedOff)
		d.Failed, _ = history.Recent(c.HistoryDir, 15, queue.EventDeferred, queue.EventBounced)
		if d.Query != "" {
			stories, err := history.Search(c.HistoryDir, history.Query{Text: d.Query, Since: now.Add(-c.TraceWindow), Limit: 20})
			d.Stories = stories
			if err != nil {
				d.SearchErr = err.Error()
			}
		}
	}
	w.Header().Set("Content-Type", "text/html; charset=utf-8")
	// Nothing from elsewhere, and nothing of it in another site's frame.
	w.Header().Set("Content-Security-Policy", "default-src 'none'; style-src 'unsafe-inline'; form-action 'self'; frame-ancestors 'none'")
	w.Header().Set("Cache-Control", "no-store")
	pageTmpl.Execute(w, d)
}

func sorted(m map[string]int) []count {
	var out []count
	for k, n := range m {
		if k == "" {
			k = "(not tried yet)"
		}
		out = append(out, count{k, n})
	}
	sort.Slice(out, func(i, j int) bool { return out[i].N > out[j].N || out[i].N == out[j].N && out[i].Name < out[j].Name })
	return out
}

// ago says how long before now t was, to the unit that matters.
func ago(now, t time.Time) string {
	if t.IsZero() {
		return "never"
	}
	d := now.Sub(t)
	switch {
	case d < time.Minute:
		return d.Round(time.Second).String() + " ago"
	case d < time.Hour:
		return d.Round(time.Minute).String() + " ago"
	}
	return d.Round(time.Hour).String() + " ago"
}
