package daemon

import (
	"context"
	"log/slog"
	"path/filepath"
	"strings"
	"testing"

	"github.com/smarthost/smarthost/configs"
	"github.com/smarthost/smarthost/relay/history"
	"github.com/smarthost/smarthost/relay/queue"
)

// With no relay running, queue bounce works on the spool itself: the
// message leaves, a DSN to its sender waits in the spool for the next
// start, and the history has the bounce (who asked) and the DSN.
func TestQueueControlOffline(t *testing.T) {
	dir := t.TempDir()
	f, err := configs.Parse(relayConfig(t, dir, "127.0.0.1:1", nil))
	if err != nil {
		t.Fatal(err)
	}
	q, err := queue.Open(queue.Config{Dir: f.Queue.Dir}, nil, slog.New(slog.DiscardHandler))
	if err != nil {
		t.Fatal(err)
	}
	d, err := q.Create()
	if err != nil {
		t.Fatal(err)
	}
	d.Write([]byte("Subject: offline\r\n\r\nx\r\n"))
	id, err := d.Commit(queue.Envelope{From: "alice@example.com", To: []string{"bob@dest.test"}, MessageID: "<offline@example.com>"}, nil)
	if err != nil {
		t.Fatal(err)
	}
	q.Close()

	ctl, err := OpenQueueControl(f, slog.New(slog.DiscardHandler))
	if err != nil {
		t.Fatal(err)
	}
	if ctl.client != nil {
		t.Fatal("no relay runs, yet the control asks one")
	}
	picked, n, err := ctl.Pick(context.Background(), queue.Filter{From: "ALICE@example.com"})
	if err != nil || n != 1 || len(picked.IDs) != 1 || picked.IDs[0] != id || picked.From != "ALICE@example.com" {
		t.Fatalf("Pick: %+v %d %v, want the filter narrowed to %s", picked, n, err, id)
	}
	if by := AskedBy("smarthost queue hold"); !strings.HasPrefix(by, "smarthost queue hold (") {
		t.Errorf("AskedBy: %q, want the command and the user", by)
	}
	ids, err := ctl.Manage(context.Background(), queue.OpBounce, picked, "the test")
	if err != nil || len(ids) != 1 || ids[0] != id {
		t.Fatalf("bounce: %v %v", ids, err)
	}
	left, _ := ctl.List(context.Background(), queue.Filter{})
	ctl.Close()
	if len(left) != 1 || left[0].From != "" || left[0].Recipients[0].Addr != "alice@example.com" {
		t.Fatalf("the spool after the bounce: %+v, want the DSN to alice alone", left)
	}
	stories, err := history.Search(filepath.Join(f.Queue.Dir, "history"), history.Query{Text: "<offline@example.com>"})
	if err != nil {
		t.Fatal(err)
	}
	k := map[string]string{}
	for _, s := range stories {
		for _, e := range s.Events {
			k[e.Kind] = e.By
		}
	}
	if by, ok := k[queue.EventBounced]; !ok || by != "the test" {
		t.Errorf("the history's bounce: %q (%v), want by the test", by, ok)
	}
	if _, ok := k[queue.EventDSN]; !ok {
		t.Errorf("the history has no DSN event: %v", k)
	}
}
