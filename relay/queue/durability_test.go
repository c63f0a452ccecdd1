package queue

import (
	"encoding/binary"
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/smarthost/smarthost/relay/relaytest"
)

// event is one file operation of the spool, recorded once it returned.
type event struct {
	op   string // create, rename, fsync, fdatasync, syncdir
	path string // the file or folder (a rename's new name)
	from string // a rename's old name
	size int64  // a synced file's size when its sync returned
}

// watched is the real disk, with every operation recorded in order.
// hold, when set, runs before each operation (a test blocks one there).
type watched struct {
	osDisk
	hold   func(op string)
	mu     sync.Mutex
	events []event
}

func (w *watched) record(e event) {
	w.mu.Lock()
	w.events = append(w.events, e)
	w.mu.Unlock()
}

// upTo returns the events recorded so far.
func (w *watched) upTo() []event {
	w.mu.Lock()
	defer w.mu.Unlock()
	return append([]event(nil), w.events...)
}

func (w *watched) before(op string) {
	if w.hold != nil {
		w.hold(op)
	}
}

func (w *watched) create(path string, flag int) (*os.File, error) {
	w.before("create")
	f, err := w.osDisk.create(path, flag)
	if err == nil {
		w.record(event{op: "create", path: path})
	}
	return f, err
}

func (w *watched) rename(from, to string) error {
	w.before("rename")
	err := w.osDisk.rename(from, to)
	if err == nil {
		w.record(event{op: "rename", path: to, from: from})
	}
	return err
}

func (w *watched) synced(op string, f *os.File, err error) error {
	if err == nil {
		st, serr := f.Stat()
		if serr != nil {
			return serr
		}
		w.record(event{op: op, path: f.Name(), size: st.Size()})
	}
	return err
}

func (w *watched) fsync(f *os.File) error {
	w.before("fsync")
	return w.synced("fsync", f, w.osDisk.fsync(f))
}

func (w *watched) fdatasync(f *os.File) error {
	w.before("fdatasync")
	return w.synced("fdatasync", f, w.osDisk.fdatasync(f))
}

func (w *watched) syncDir(dir string) error {
	w.before("syncdir")
	err := w.osDisk.syncDir(dir)
	if err == nil {
		w.record(event{op: "syncdir", path: dir})
	}
	return err
}

// find returns the index of the first event at or after from that
// matches, or -1.
func find(evs []event, from int, match func(event) bool) int {
	for i := max(from, 0); i < len(evs); i++ {
		if match(evs[i]) {
			return i
		}
	}
	return -1
}

// missingSync names the sync that had not returned, among evs (what
// happened before the acknowledgement), for message m to be on disk;
// "" if none is missing.
func missingSync(evs []event, m *Message) string {
	if m.jseg != nil {
		seg := m.jseg.path
		var n [4]byte // the record's payload length, just before the payload
		if _, err := m.jseg.f.ReadAt(n[:], m.joff-4); err != nil {
			return "its journal record: " + err.Error()
		}
		end := m.joff + int64(binary.BigEndian.Uint32(n[:]))
		c := find(evs, 0, func(e event) bool { return e.op == "create" && e.path == seg })
		if c < 0 || find(evs, c+1, func(e event) bool { return e.op == "syncdir" && e.path == filepath.Dir(seg) }) < 0 {
			return "the sync of journal/ after creating " + filepath.Base(seg) + " (journal.go, rotateLocked)"
		}
		if find(evs, c+1, func(e event) bool { return e.op == "fdatasync" && e.path == seg && e.size >= end }) < 0 {
			return "the journal's fdatasync after writing the record (journal.go, writeLocked)"
		}
		return ""
	}
	data := filepath.Join(m.dir, "msg", m.ID+".data")
	tmp := filepath.Join(m.dir, "tmp", m.ID+".data")
	st, err := os.Stat(data)
	if err != nil {
		return "its file in msg/: " + err.Error()
	}
	s := find(evs, 0, func(e event) bool { return e.op == "fsync" && e.path == tmp && e.size == st.Size() })
	if s < 0 {
		return "the draft's fsync before its rename into msg/ (draft.go, commitFile)"
	}
	r := find(evs, s+1, func(e event) bool { return e.op == "rename" && e.from == tmp && e.path == data })
	if r < 0 {
		return "the rename into msg/ after the draft's fsync (msgfiles.go, commit)"
	}
	if find(evs, r+1, func(e event) bool { return e.op == "syncdir" && e.path == filepath.Dir(data) }) < 0 {
		return "the sync of msg/ after the rename (msgfiles.go, commit)"
	}
	return ""
}

// Draft.Commit returns (and the relay acknowledges) only once the message
// is on disk: for a journal message, its file's creation made durable by
// a sync of journal/, and an fdatasync of the file that returned after the
// record was written; for a file message, an fsync of the complete draft,
// then its rename into msg/, then a sync of msg/. Many sessions commit at
// once, small messages and large, through journal rotations.
//
// Checked against each of the three mutants (the journal's fdatasync in
// writeLocked, the draft's fsync in commitFile, the folder's sync in
// msgFiles.commit, each deleted in turn): each fails this test and names the
// sync it removed. scripts/mutants.sh repeats the check.
func TestCommitOnlyAfterSync(t *testing.T) {
	w := &watched{}
	dir := t.TempDir()
	q, err := open(Config{Dir: dir, InlineMax: 4 << 10, Hostname: "relay.test"}, nil, quiet(), ondisk{w, 32 << 10})
	if err != nil {
		t.Fatal(err)
	}
	defer q.Close()
	const sessions, each = 8, 30
	var wg sync.WaitGroup
	var mu sync.Mutex
	kinds := map[bool]int{}
	for s := range sessions {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for i := range each {
				size := 300 + (s*each+i)*97%3000 // the journal
				if i%3 == 0 {
					size = 5000 + i*311 // a file of its own
				}
				d, err := q.Create()
				if err != nil {
					t.Error(err)
					return
				}
				fmt.Fprintf(d, "Subject: %d/%d\r\n\r\n%s", s, i, strings.Repeat("x", size))
				id, err := d.Commit(Envelope{From: "a@x.org", To: []string{"b@y.org"}}, nil)
				if err != nil {
					t.Error(err)
					return
				}
				evs := w.upTo() // what had happened when the commit returned
				m, _, _ := q.sched.lookup(id)
				if m == nil {
					t.Errorf("%s committed but not queued", id)
					return
				}
				if miss := missingSync(evs, m); miss != "" {
					t.Errorf("message %s acknowledged before %s", id, miss)
				}
				mu.Lock()
				kinds[m.jseg != nil]++
				mu.Unlock()
			}
		}()
	}
	wg.Wait()
	segs, _ := listSegments(filepath.Join(dir, "journal"))
	if kinds[true] == 0 || kinds[false] == 0 || len(segs) < 3 {
		t.Fatalf("journal %d, files %d, journal files %d: the test did not cover both kinds and rotations", kinds[true], kinds[false], len(segs))
	}
	t.Logf("%d journal messages in %d journal files, %d file messages: each acknowledged after its syncs", kinds[true], len(segs), kinds[false])
}

// Group commit in the journal: commits that arrive while a write is under
// way share the next write and its one fdatasync.
func TestJournalGroupCommit(t *testing.T) {
	entered, release := make(chan struct{}), make(chan struct{})
	var once sync.Once
	w := &watched{}
	w.hold = func(op string) {
		if op == "fdatasync" {
			once.Do(func() { close(entered); <-release })
		}
	}
	q, err := open(Config{Dir: t.TempDir(), Hostname: "relay.test"}, nil, quiet(), ondisk{w, journalFileMax})
	if err != nil {
		t.Fatal(err)
	}
	defer q.Close()
	const n = 20
	var wg sync.WaitGroup
	commit := func() {
		defer wg.Done()
		d, err := q.Create()
		if err != nil {
			t.Error(err)
			return
		}
		d.Write([]byte("Subject: s\r\n\r\nbody\r\n"))
		if _, err := d.Commit(Envelope{From: "a@x.org", To: []string{"b@y.org"}}, nil); err != nil {
			t.Error(err)
		}
	}
	wg.Add(1)
	go commit()
	select {
	case <-entered: // the first commit's fdatasync is under way, and held
	case <-time.After(10 * time.Second):
		t.Fatal("the first commit never reached its fdatasync")
	}
	for range n {
		wg.Add(1)
		go commit()
	}
	relaytest.Eventually(t, "every commit waiting for the journal", 10*time.Second, func() bool {
		q.journal.mu.Lock()
		defer q.journal.mu.Unlock()
		return len(q.journal.pending) == n
	})
	close(release)
	wg.Wait()
	syncs := 0
	for _, e := range w.upTo() {
		if e.op == "fdatasync" {
			syncs++
		}
	}
	if syncs != 2 {
		t.Fatalf("%d fdatasyncs for %d commits, want 2 (the first, then one shared by the %d that waited)", syncs, n+1, n)
	}
}

// Group commit in msg/: callers that arrive while a folder sync is under
// way share the next one, and each returns only after a sync that began
// after it called.
func TestGroupSyncShares(t *testing.T) {
	entered, release := make(chan struct{}), make(chan struct{})
	var once sync.Once
	w := &watched{}
	w.hold = func(string) { once.Do(func() { close(entered); <-release }) }
	g := newGroupSync(t.TempDir(), w)
	const n = 64
	var wg sync.WaitGroup
	call := func() {
		defer wg.Done()
		g.mu.Lock()
		need := g.started + 1
		g.mu.Unlock()
		if err := g.sync(); err != nil {
			t.Error(err)
		}
		g.mu.Lock()
		if g.completed < need {
			t.Errorf("returned before a covering sync: completed %d, needed %d", g.completed, need)
		}
		g.mu.Unlock()
	}
	wg.Add(1)
	go call()
	<-entered
	for range n - 1 {
		wg.Add(1)
		go call()
	}
	relaytest.Eventually(t, "every caller waiting for the sync under way", 10*time.Second, func() bool {
		g.mu.Lock()
		defer g.mu.Unlock()
		return g.waiting == n-1
	})
	close(release)
	wg.Wait()
	if syncs := len(w.upTo()); g.started != 2 || syncs != 2 {
		t.Fatalf("%d syncs begun, %d done, for %d callers; want 2 (the first, then one shared by the %d that waited)", g.started, syncs, n, n-1)
	}
}
