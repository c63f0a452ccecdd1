package queue

import (
	"errors"
	"io"
	"strings"
	"testing"
	"time"

	"github.com/smarthost/smarthost/relay/relaytest"
)

// An archive copy the archive refuses for good is retried, not bounced,
// and the message stays queued for it; once the archive takes it, the
// message is done. Its recipients' failures still bounce as usual.
func TestArchiveCopyNeverBounces(t *testing.T) {
	d := newScripted()
	refused := Permanent(errors.New("550 5.1.1 archive mailbox unavailable"))
	d.set("archive@vault.test", refused)
	d.set("gone@y.org", Permanent(errors.New("550 5.1.1 no such user")))
	dir := t.TempDir()
	q := openQ(t, dir, d, time.Hour)
	run(t, q)
	show := func(id string) (*Message, error) {
		s, err := OpenSpool(dir)
		if err != nil {
			return nil, err
		}
		m, _, err := s.Show(id)
		return m, err
	}
	dr, _ := q.Create()
	io.WriteString(dr, "Subject: s\r\n\r\nx\r\n")
	id, err := dr.Commit(Envelope{From: "a@x.org", To: []string{"ok@y.org", "gone@y.org"},
		Archive: []ArchiveCopy{{Addr: "archive@vault.test", Upstreams: []string{"vault"}}}}, nil)
	if err != nil {
		t.Fatal(err)
	}
	relaytest.Eventually(t, "three attempts at the archive", inBackground, func() bool {
		d.mu.Lock()
		defer d.mu.Unlock()
		return d.attempts["archive@vault.test"] >= 3
	})
	bounces := 0
	for _, g := range d.delivered() {
		if strings.Contains(g, "  a@x.org ") {
			bounces++
			if strings.Contains(g, "archive@vault.test") {
				t.Errorf("the bounce names the archive copy:\n%s", g)
			}
		}
	}
	if bounces != 1 {
		t.Fatalf("%d bounces, want 1 (for gone@y.org only)", bounces)
	}
	m, err := show(id)
	if err != nil {
		t.Fatalf("the message left the queue with its archive copy pending: %v", err)
	}
	var arch *Recipient
	for i := range m.Recipients {
		if m.Recipients[i].Archive {
			arch = &m.Recipients[i]
		}
	}
	if arch == nil || arch.Status != StatusPending || !strings.Contains(arch.Error, "archive mailbox unavailable") ||
		arch.Upstreams[0] != "vault" || arch.Notify[0] != "NEVER" {
		t.Fatalf("archive recipient: %+v", arch)
	}
	d.set("archive@vault.test", nil)
	relaytest.Eventually(t, "the archive copy delivered and the message done", inBackground, func() bool {
		return q.Len() == 0
	})
}

// At max_age an archive copy fails, in the log only: no bounce.
func TestArchiveCopyExpiresSilently(t *testing.T) {
	d := newScripted()
	d.set("archive@vault.test", errors.New("451 4.3.0 later"))
	q := openQ(t, t.TempDir(), d, 0)
	run(t, q)
	dr, _ := q.Create()
	io.WriteString(dr, "Subject: s\r\n\r\nx\r\n")
	if _, err := dr.Commit(Envelope{From: "a@x.org", To: []string{"ok@y.org"}, Archive: []ArchiveCopy{{Addr: "archive@vault.test"}}}, nil); err != nil {
		t.Fatal(err)
	}
	relaytest.Eventually(t, "an empty queue", inBackground, func() bool { return q.Len() == 0 })
	for _, g := range d.delivered() {
		if strings.Contains(g, "  a@x.org ") {
			t.Fatalf("a bounce for the archive copy:\n%s", g)
		}
	}
}

// Drafts hold at most MemoryMax bytes in memory between them; the rest
// goes to files, and aborted drafts give their share back.
func TestDraftMemoryBudget(t *testing.T) {
	q, err := Open(Config{Dir: t.TempDir(), InlineMax: 128 << 10, MemoryMax: 300 << 10}, newScripted(), quiet())
	if err != nil {
		t.Fatal(err)
	}
	defer q.Close()
	chunk := strings.Repeat("x", 100<<10)
	var drafts []*Draft
	for i := 0; i < 5; i++ {
		d, err := q.Create()
		if err != nil {
			t.Fatal(err)
		}
		if _, err := io.WriteString(d, chunk); err != nil {
			t.Fatal(err)
		}
		drafts = append(drafts, d)
	}
	inFiles := 0
	for _, d := range drafts {
		if d.f != nil {
			inFiles++
		}
	}
	if inFiles != 2 || q.drafts.inMemory.Load() != 300<<10 {
		t.Fatalf("%d drafts in files, %d bytes in memory; want 2 and %d", inFiles, q.drafts.inMemory.Load(), 300<<10)
	}
	// A draft in memory that outgrows InlineMax moves to a file and gives
	// its share back.
	io.WriteString(drafts[0], chunk)
	if drafts[0].f == nil || q.drafts.inMemory.Load() != 200<<10 {
		t.Fatalf("after growing: file %v, %d bytes in memory", drafts[0].f != nil, q.drafts.inMemory.Load())
	}
	for _, d := range drafts {
		d.Abort()
	}
	if n := q.drafts.inMemory.Load(); n != 0 {
		t.Fatalf("%d bytes still counted after every draft was aborted", n)
	}
}
