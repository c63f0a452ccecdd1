package queue

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/smarthost/smarthost/relay/relaytest"
)

func files(t *testing.T, dir string) []string {
	t.Helper()
	ents, err := os.ReadDir(dir)
	if err != nil {
		t.Fatal(err)
	}
	var names []string
	for _, e := range ents {
		names = append(names, e.Name())
	}
	return names
}

// A small message costs no file of its own: it is in the journal, found
// there after a restart, delivered once, and not again after the next one;
// the journal's emptied files are removed.
func TestJournalHoldsSmallMessages(t *testing.T) {
	dir := t.TempDir()
	q := openQ(t, dir, newScripted(), time.Hour)
	id := enqueue(t, q, "a@x.org", []string{"b@y.org"}, "X-Added: 1\r\n", "Subject: s\r\n\r\nbody\r\n")
	if n := files(t, filepath.Join(dir, "msg")); len(n) != 0 {
		t.Fatalf("msg/ holds %v", n)
	}
	if n := files(t, filepath.Join(dir, "tmp")); len(n) != 0 {
		t.Fatalf("tmp/ holds %v", n)
	}
	q.Close()

	d := newScripted()
	q2 := openQ(t, dir, d, time.Hour)
	stop := runUntil(q2)
	relaytest.Eventually(t, "delivery", inBackground, func() bool { return len(d.delivered()) == 1 })
	if want := id + " a@x.org b@y.org X-Added: 1\r\nSubject: s\r\n\r\nbody\r\n"; d.delivered()[0] != want {
		t.Fatalf("delivered %q, want %q", d.delivered()[0], want)
	}
	relaytest.Eventually(t, "removal", inBackground, func() bool { return q2.Len() == 0 })
	stop()
	q2.Close()

	d3 := newScripted()
	q3 := openQ(t, dir, d3, time.Hour)
	run(t, q3)
	if q3.Len() != 0 {
		t.Fatalf("a delivered message came back: %d queued", q3.Len())
	}
	// The file the first process wrote, and the second's, are gone: every
	// message in them was done with.
	if n := files(t, filepath.Join(dir, "journal")); len(n) != 1 {
		t.Fatalf("journal holds %v, want only the file now in use", n)
	}
}

// runUntil runs q and returns a stop function that waits for Run to end.
func runUntil(q *Queue) (stop func()) {
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan struct{})
	go func() { q.Run(ctx); close(done) }()
	return func() { cancel(); <-done }
}

// Messages beyond InlineMax go to a file of their own.
func TestLargeMessageToFile(t *testing.T) {
	dir := t.TempDir()
	q, err := Open(Config{Dir: dir, InlineMax: 100}, nil, quiet())
	if err != nil {
		t.Fatal(err)
	}
	defer q.Close()
	small := enqueue(t, q, "a@x.org", []string{"b@y.org"}, "", "Subject: s\r\n\r\nbody\r\n")
	big := enqueue(t, q, "a@x.org", []string{"b@y.org"}, "", "Subject: s\r\n\r\n"+strings.Repeat("x", 200)+"\r\n")
	if newMsgFiles(dir, osDisk{}).has(small) || !newMsgFiles(dir, osDisk{}).has(big) {
		t.Fatalf("in msg/: %v; want only %s", files(t, filepath.Join(dir, "msg")), big)
	}
	for _, id := range []string{small, big} {
		_, b, err := (&Spool{dir: dir, f: newMsgFiles(dir, osDisk{})}).Show(id)
		if err != nil || !strings.HasPrefix(string(b), "Subject: s\r\n\r\n") {
			t.Fatalf("Show %s: %v %q", id, err, b)
		}
	}
}

// A message still pending after its first attempt leaves the journal for
// msg/, with its state: a restart knows what was sent and tries only the
// rest.
func TestDeferredMessageLeavesJournal(t *testing.T) {
	dir := t.TempDir()
	d := newScripted()
	d.set("b@y.org", errors.New("451 later"))
	q, err := Open(Config{Dir: dir, Workers: 1, Retry: []time.Duration{time.Hour}, MaxAge: 48 * time.Hour}, d, quiet())
	if err != nil {
		t.Fatal(err)
	}
	stop := runUntil(q)
	id := enqueue(t, q, "a@x.org", []string{"b@y.org", "c@y.org"}, "", "Subject: s\r\n\r\nbody\r\n")
	relaytest.Eventually(t, "the move to msg/", inBackground, func() bool { return newMsgFiles(dir, osDisk{}).has(id) })
	stop()
	q.Close()

	q2 := openQ(t, dir, newScripted(), time.Hour)
	defer q2.Close()
	m := q2.sched.items[id]
	if q2.Len() != 1 || m == nil || m.jseg != nil || m.Attempts != 1 || len(m.Pending()) != 1 || m.Pending()[0] != "b@y.org" {
		t.Fatalf("after restart: %d queued, %+v", q2.Len(), m)
	}
}

// A crash between the move to msg/ and the journal's record of it leaves
// the message in both: the copy in msg/ is the one, and it is sent once.
func TestMovedMessageFoundOnce(t *testing.T) {
	dir := t.TempDir()
	q := openQ(t, dir, nil, time.Hour)
	id := enqueue(t, q, "a@x.org", []string{"b@y.org"}, "", "Subject: s\r\n\r\nbody\r\n")
	q.sched.mu.Lock()
	m := q.sched.items[id]
	q.sched.mu.Unlock()
	seg := m.jseg
	// The move without its 'D' record.
	dr, err := q.drafts.inFile(m.ID)
	if err != nil {
		t.Fatal(err)
	}
	b, _ := os.ReadFile(seg.path)
	dr.w.Write(b[m.joff : m.joff+m.Size])
	m.Attempts = 7
	if err := q.commitFile(dr, m); err != nil {
		t.Fatal(err)
	}
	q.Close()

	d := newScripted()
	q2 := openQ(t, dir, d, time.Hour)
	if q2.Len() != 1 || q2.sched.items[id].jseg != nil || q2.sched.items[id].Attempts != 7 {
		t.Fatalf("after restart: %d queued, %+v", q2.Len(), q2.sched.items[id])
	}
	run(t, q2)
	// Once the queue is empty nothing more can be sent: count then.
	relaytest.Eventually(t, "an empty queue", inBackground, func() bool { return q2.Len() == 0 })
	if n := len(d.delivered()); n != 1 {
		t.Fatalf("delivered %d times", n)
	}
}

// A crash in the middle of a write leaves a record cut short at the end of
// the journal: never acknowledged, so it is dropped and the file cut back,
// and every whole record before it stands.
func TestJournalTornTail(t *testing.T) {
	for _, cut := range []int{1, recTail, 30, 200} {
		t.Run(fmt.Sprint(cut), func(t *testing.T) {
			dir := t.TempDir()
			q := openQ(t, dir, nil, time.Hour)
			a := enqueue(t, q, "a@x.org", []string{"b@y.org"}, "", "Subject: a\r\n\r\nbody\r\n")
			enqueue(t, q, "a@x.org", []string{"b@y.org"}, "", "Subject: b\r\n\r\n"+strings.Repeat("y", 300)+"\r\n")
			path := q.journal.segs[len(q.journal.segs)-1].path
			q.Close()
			st, _ := os.Stat(path)
			if err := os.Truncate(path, st.Size()-int64(cut)); err != nil {
				t.Fatal(err)
			}
			q2 := openQ(t, dir, nil, time.Hour)
			defer q2.Close()
			if q2.Len() != 1 || q2.sched.items[a] == nil {
				t.Fatalf("after restart %d queued, want only %s", q2.Len(), a)
			}
			good := q2.sched.items[a].jseg.size
			if st, _ := os.Stat(path); st.Size() != good {
				t.Fatalf("journal file is %d bytes, want it cut to %d", st.Size(), good)
			}
		})
	}
}

// A damaged byte fails its record's CRC: that record and what follows it
// in the file are not taken for messages.
func TestJournalCRC(t *testing.T) {
	dir := t.TempDir()
	q := openQ(t, dir, nil, time.Hour)
	a := enqueue(t, q, "a@x.org", []string{"b@y.org"}, "", "Subject: a\r\n\r\nbody\r\n")
	b := enqueue(t, q, "a@x.org", []string{"b@y.org"}, "", "Subject: b\r\n\r\nbody\r\n")
	mb := q.sched.items[b]
	path := mb.jseg.path
	q.Close()
	f, _ := os.OpenFile(path, os.O_RDWR, 0)
	f.WriteAt([]byte("X"), mb.joff+3)
	f.Close()
	q2 := openQ(t, dir, nil, time.Hour)
	defer q2.Close()
	if q2.Len() != 1 || q2.sched.items[a] == nil {
		t.Fatalf("after restart %d queued, want only %s", q2.Len(), a)
	}
}

// payload is a journal record's payload for message id: data, trailer.
func payload(id string) []byte {
	var b bytes.Buffer
	b.WriteString(strings.Repeat("m", 100))
	writeTrailer(&b, &Message{ID: id, Size: 100})
	return b.Bytes()
}

// Files are removed oldest first, once all their messages are done with:
// a message waiting in an old file keeps the files after it too, since
// their 'D' records may be all that says its neighbours were delivered.
func TestJournalFilesRemovedInOrder(t *testing.T) {
	dir := t.TempDir()
	open := func() (*journal, []*Message) {
		j, ms, err := openJournal(dir, 1000, osDisk{}, func(string) bool { return false }, func(string, ...any) {})
		if err != nil {
			t.Fatal(err)
		}
		return j, ms
	}
	j, _ := open()
	type rec struct {
		seg *segment
		id  string
	}
	var recs []rec
	for i := 0; i < 30; i++ {
		id := fmt.Sprintf("%020X", i)
		seg, _, err := j.add(id, payload(id))
		if err != nil {
			t.Fatal(err)
		}
		recs = append(recs, rec{seg, id})
	}
	if len(j.segs) < 4 {
		t.Fatalf("%d files for 30 records of about 300 bytes, at most 1000 bytes each", len(j.segs))
	}
	keep := recs[len(recs)/2] // in a middle file
	for _, r := range recs {
		if r != keep {
			j.done(r.seg, r.id)
		}
	}
	if j.segs[0] != keep.seg {
		t.Fatalf("oldest file kept is %s, want %s, which holds the waiting message", j.segs[0].path, keep.seg.path)
	}
	if _, err := os.Stat(recs[0].seg.path); !errors.Is(err, os.ErrNotExist) {
		t.Fatalf("the first file, all done with, is still there: %v", err)
	}
	after := len(files(t, dir))
	j.close()

	j2, ms := open()
	if len(ms) != 1 || ms[0].ID != keep.id {
		t.Fatalf("after restart: %d messages, want only %s", len(ms), keep.id)
	}
	if n := len(files(t, dir)); n != after+1 {
		t.Fatalf("%d files after restart, want the %d before plus a new one", n, after)
	}
	j2.done(ms[0].jseg, keep.id)
	if n := files(t, dir); len(n) != 1 {
		t.Fatalf("journal holds %v once all is done, want only the file in use", n)
	}
	j2.close()
}

// Many sessions commit at once; each is durable when it returns, and all
// are there after a restart.
func TestJournalConcurrentCommits(t *testing.T) {
	dir := t.TempDir()
	q := openQ(t, dir, nil, time.Hour)
	var wg sync.WaitGroup
	ids := make(chan string, 200)
	for g := 0; g < 20; g++ {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for i := 0; i < 10; i++ {
				ids <- enqueue(t, q, "a@x.org", []string{"b@y.org"}, "", fmt.Sprintf("Subject: %d\r\n\r\n%s\r\n", i, strings.Repeat("z", i*100)))
			}
		}()
	}
	wg.Wait()
	close(ids)
	q.Close()
	q2 := openQ(t, dir, nil, time.Hour)
	defer q2.Close()
	for id := range ids {
		if q2.sched.items[id] == nil {
			t.Fatalf("%s lost", id)
		}
	}
	if q2.Len() != 200 {
		t.Fatalf("%d queued, want 200", q2.Len())
	}
}

// A journal write that fails (here: the disk is full) fails the commit,
// which the client sees as a temporary error; the journal moves to a new
// file, and the next commit succeeds.
func TestJournalWriteFailure(t *testing.T) {
	dir := t.TempDir()
	q := openQ(t, dir, nil, time.Hour)
	defer q.Close()
	full, err := os.OpenFile("/dev/full", os.O_WRONLY, 0)
	if err != nil {
		if os.Getenv("CI") == "true" {
			t.Fatalf("no /dev/full under CI: %v", err)
		}
		t.Skip("no /dev/full")
	}
	seg := q.journal.segs[len(q.journal.segs)-1]
	real := seg.f
	seg.f = full
	d, _ := q.Create()
	d.Write([]byte("Subject: s\r\n\r\nbody\r\n"))
	if _, err := d.Commit(Envelope{From: "a@x.org", To: []string{"b@y.org"}}, nil); err == nil {
		t.Fatal("commit to a full disk succeeded")
	}
	seg.f = real
	if q.Len() != 0 {
		t.Fatalf("%d queued after a failed commit", q.Len())
	}
	id := enqueue(t, q, "a@x.org", []string{"b@y.org"}, "", "Subject: s\r\n\r\nbody\r\n")
	if q.sched.items[id].jseg == seg {
		t.Fatal("the journal went on writing to the file whose write failed")
	}
}

// `smarthost queue` sees journal messages: list, show; delete marks one
// for the server, which drops it at its next scan, for good.
func TestSpoolAdminJournal(t *testing.T) {
	dir := t.TempDir()
	q := openQ(t, dir, nil, time.Hour)
	id := enqueue(t, q, "a@x.org", []string{"b@y.org"}, "X-P: 1\r\n", "Subject: s\r\n\r\nx\r\n")
	sp, err := OpenSpool(dir)
	if err != nil {
		t.Fatal(err)
	}
	ms, err := sp.List()
	if err != nil || len(ms) != 1 || ms[0].ID != id {
		t.Fatalf("List: %v %+v", err, ms)
	}
	if _, body, err := sp.Show(id); err != nil || string(body) != "X-P: 1\r\nSubject: s\r\n\r\nx\r\n" {
		t.Fatalf("Show: %v %q", err, body)
	}
	if err := sp.Retry(id); err != nil {
		t.Fatalf("Retry of a message awaiting its first attempt: %v", err)
	}
	if err := sp.Delete(id); err != nil {
		t.Fatal(err)
	}
	if ms, _ := sp.List(); len(ms) != 0 {
		t.Fatalf("a deleted message is still listed: %+v", ms)
	}
	if err := sp.Delete(id); err == nil {
		t.Fatal("deleted twice")
	}
	if err := q.rescan(false); err != nil {
		t.Fatal(err)
	}
	if q.Len() != 0 || len(files(t, filepath.Join(dir, "msg"))) != 0 {
		t.Fatalf("after the scan: %d queued, msg/ holds %v", q.Len(), files(t, filepath.Join(dir, "msg")))
	}
	q.Close()
	q2 := openQ(t, dir, nil, time.Hour)
	defer q2.Close()
	if q2.Len() != 0 {
		t.Fatal("the deleted message came back after a restart")
	}
}

// pwriteAll writes every buffer in order, also beyond the 1024 a single
// pwritev takes.
func TestPwriteAll(t *testing.T) {
	f, err := os.Create(filepath.Join(t.TempDir(), "f"))
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	var bufs [][]byte
	var want bytes.Buffer
	for i := 0; i < 2500; i++ {
		b := []byte(fmt.Sprintf("<%d>", i))
		bufs = append(bufs, b)
		want.Write(b)
	}
	f.WriteAt([]byte("head"), 0)
	if err := pwriteAll(f, bufs, 4); err != nil {
		t.Fatal(err)
	}
	got, _ := os.ReadFile(f.Name())
	if string(got) != "head"+want.String() {
		t.Fatalf("wrote %d bytes, want %d", len(got), 4+want.Len())
	}
}

// A session that outlives the shutdown cannot commit any more: it gets an
// error (the client a temporary failure), and nothing panics or is written.
func TestCommitAfterClose(t *testing.T) {
	dir := t.TempDir()
	q := openQ(t, dir, nil, time.Hour)
	d, err := q.Create()
	if err != nil {
		t.Fatal(err)
	}
	d.Write([]byte("Subject: s\r\n\r\nbody\r\n"))
	q.Close()
	if _, err := d.Commit(Envelope{From: "a@x.org", To: []string{"b@y.org"}}, nil); err == nil {
		t.Fatal("commit after close succeeded")
	}
	q2 := openQ(t, dir, nil, time.Hour)
	defer q2.Close()
	if q2.Len() != 0 {
		t.Fatalf("%d queued after a refused commit", q2.Len())
	}
}
