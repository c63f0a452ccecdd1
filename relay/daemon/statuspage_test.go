package daemon

import (
	"bytes"
	"context"
	"net/url"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"strings"
	"testing"
	"time"

	"github.com/smarthost/smarthost/relay/queue"
	"github.com/smarthost/smarthost/relay/relaytest"
)

const chromiumPath = "/usr/bin/chromium"

// chromium runs headless Debian Chromium with args and url, and returns
// what it wrote on standard output.
func chromium(t *testing.T, args []string, url string) []byte {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 90*time.Second)
	defer cancel()
	all := append([]string{"--headless", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage", "--no-first-run",
		"--user-data-dir=" + t.TempDir(), "--lang=en-US"}, args...)
	cmd := exec.CommandContext(ctx, chromiumPath, append(all, url)...)
	var stdout, stderr bytes.Buffer
	cmd.Stdout, cmd.Stderr = &stdout, &stderr
	if err := cmd.Run(); err != nil {
		t.Fatalf("chromium %v: %v\n%s", args, err, stderr.Bytes())
	}
	return stdout.Bytes()
}

// The status page in a real browser: it loads with the queue, the
// upstream's health and the recent deliveries and failures with the
// upstream's reply; its trace search (a plain GET form, no script) finds
// a message by its Message-ID; and a screenshot of it is taken
// (SMARTHOST_SCREENSHOT=FILE keeps it: docs/status-page.png is one).
func TestStatusPageInChromium(t *testing.T) {
	relaytest.Need(t, chromiumPath)
	sink, err := relaytest.NewSink(relaytest.SinkOptions{})
	if err != nil {
		t.Fatal(err)
	}
	defer sink.Close()
	sink.FailRcpt("refused@dest.test", relaytest.ErrPerm)
	r := runDaemon(t, relayConfig(t, t.TempDir(), sink.Addr, map[string]string{"alice": "alice-pw"}))
	msg := "From: alice@example.com\r\nTo: ok@dest.test\r\nMessage-ID: <page-1@example.com>\r\nSubject: status page\r\n\r\nbody\r\n"
	send(t, r.d.Addrs().SMTP[0].String(), []string{"ok@dest.test", "refused@dest.test"}, msg)
	relaytest.Eventually(t, "the message delivered and bounced", 20*time.Second, func() bool {
		k := map[string]bool{}
		for _, s := range r.stories(t, "<page-1@example.com>") {
			for _, e := range s.Events {
				k[e.Kind] = true
			}
		}
		return k[queue.EventDelivered] && k[queue.EventBounced] && r.d.queue.Len() == 0
	})
	base := "http://" + r.d.Addrs().Admin.String()

	page := string(chromium(t, []string{"--dump-dom"}, base+"/"))
	upstreamRow := regexp.MustCompile(`<td>sink</td><td class="ok">ok</td><td>[^<]+ ago</td><td>[^<]+ ago</td><td class="reply">550 5.1.1 no such user</td><td>2 / 1</td>`)
	form := regexp.MustCompile(`<form method="get" action="/status">\s*<input type="search" name="q"`)
	for what, ok := range map[string]bool{
		"the trace form": form.MatchString(page),
		"the upstream sink, its last refusal and counts": upstreamRow.MatchString(page),
		"the delivery with the sink's reply":             strings.Contains(page, "250 2.0.0 OK: queued"),
		"the failure with the sink's reply":              strings.Contains(page, "550 5.1.1 no such user"),
	} {
		if !ok {
			t.Errorf("the page as Chromium shows it lacks %s:\n%s", what, page)
		}
	}
	// What the form asks for, once "<page-1@example.com>" is typed in.
	search := base + "/status?q=" + url.QueryEscape("<page-1@example.com>")
	found := string(chromium(t, []string{"--dump-dom"}, search))
	trace := found[strings.Index(found, `<div id="trace">`):]
	for _, want := range []string{"&lt;page-1@example.com&gt;", "accepted", "ok@dest.test", "refused@dest.test", "bounced", "5.1.1", "notification"} {
		if !strings.Contains(trace, want) {
			t.Errorf("the trace Chromium shows lacks %q:\n%s", want, trace)
		}
	}
	screenshot(t, search)
}

// screenshot takes one of url and checks it is a PNG of some size; with
// SMARTHOST_SCREENSHOT set, it is kept there.
func screenshot(t *testing.T, url string) {
	out := filepath.Join(t.TempDir(), "status.png")
	chromium(t, []string{"--screenshot=" + out, "--window-size=1280,1200", "--hide-scrollbars"}, url)
	b, err := os.ReadFile(out)
	if err != nil || !bytes.HasPrefix(b, []byte("\x89PNG\r\n\x1a\n")) || len(b) < 20<<10 {
		t.Fatalf("the screenshot: %v, %d bytes", err, len(b))
	}
	if keep := os.Getenv("SMARTHOST_SCREENSHOT"); keep != "" {
		if err := os.WriteFile(keep, b, 0o644); err != nil {
			t.Fatal(err)
		}
	}
}
