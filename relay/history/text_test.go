package history

import (
	"bytes"
	"encoding/json"
	"strings"
	"testing"
	"time"

	"github.com/smarthost/smarthost/relay/queue"
)

// What `smarthost trace` prints of stories: a line about each message and
// one per event with what it says, a blank line between two messages; or
// one JSON object per message per line.
func TestWriteStories(t *testing.T) {
	at := time.Date(2026, 1, 2, 3, 4, 5, 0, time.Local)
	evs := story("0123456789ABCDEF0123", "<m@x.org>", at, "")
	evs[2].Addr, evs[2].TLS, evs[2].Attempt, evs[2].Delay = "192.0.2.1:25", "TLSv1.3", 1, 1.25
	evs[3].Reply = "550 5.1.1 no such user\n550 5.1.1 try another"
	stories := []Story{{ID: "0123456789ABCDEF0123", Events: evs}, {ID: "B", Events: []queue.Event{{Kind: queue.EventHeld, ID: "B", Time: at, By: "smarthost queue hold (root)"}}}}

	var text bytes.Buffer
	if err := WriteStories(&text, stories, false); err != nil {
		t.Fatal(err)
	}
	want := []string{
		"0123456789ABCDEF0123  <m@x.org>  from <app@x.org>  user app1",
		"  2026-01-02 03:04:05.000  accepted   to=<Bob@y.org>,<gone@y.org> client=10.0.0.9 size=300",
		"  2026-01-02 03:04:05.000  signed     dkim=x.org/s1",
		"  2026-01-02 03:04:06.000  delivered  to=<Bob@y.org> upstream=mx[192.0.2.1:25] tls=TLSv1.3 attempt=1 delay=1.25 dsn=2.0.0 (250 2.0.0 Ok: queued as 4ZxYw1)",
		"  2026-01-02 03:04:06.000  bounced    to=<gone@y.org> upstream=mx[] dsn=5.1.1 (550 5.1.1 no such user / 550 5.1.1 try another)",
		"",
		"B    from <>",
		`  2026-01-02 03:04:05.000  held       by="smarthost queue hold (root)"`,
	}
	if got := strings.Split(strings.TrimSuffix(text.String(), "\n"), "\n"); strings.Join(got, "\n") != strings.Join(want, "\n") {
		t.Errorf("text:\n%s\nwant:\n%s", text.String(), strings.Join(want, "\n"))
	}

	var js bytes.Buffer
	if err := WriteStories(&js, stories, true); err != nil {
		t.Fatal(err)
	}
	lines := strings.Split(strings.TrimSuffix(js.String(), "\n"), "\n")
	var first Story
	if len(lines) != 2 || json.Unmarshal([]byte(lines[0]), &first) != nil || first.ID != stories[0].ID || len(first.Events) != len(evs) {
		t.Errorf("JSON: %q", js.String())
	}
}
