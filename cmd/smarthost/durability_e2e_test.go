package main

import (
	"fmt"
	"os"
	"path/filepath"
	"regexp"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/emersion/go-smtp"
)

// The relay answers 250 2.0.0 ... queued as ID only once the message is on
// disk, seen from outside: the real binary runs under strace, and its
// system calls are read in the order they happened (strace_test.go). 16
// sessions at once, over a plain listener on loopback, send messages for
// the journal and messages too large for it (a file each), 23 MiB into the
// journal so that it moves on to a second file. For every acknowledgement
// written to a client:
//   - a journal message: the write of its record (pwritev), then an
//     fdatasync of that journal file entered after the write returned;
//     and the journal file's creation, then an fsync of journal/;
//   - a message with a file of its own: every write of tmp/ID.data, then
//     its fsync, then its rename to msg/ID.data, then an fsync of msg/;
//
// each step returned before the next began, and all before the
// acknowledgement was written. docs/reliability.md says what this means.
//
// Checked against each of the three mutants (the journal's fdatasync in
// journal.go, the draft's fsync in draft.go, the folder's sync in
// folder.go's commit, each deleted in turn): each fails this test, which
// names the sync that is missing. scripts/mutants.sh repeats the check.
func TestAcknowledgedOnlyAfterFsync(t *testing.T) {
	const strace = "/usr/bin/strace"
	need(t, strace, "-V")
	e := newRelayEnv(t, envOpts{plain: true, maxSize: "1MiB", workers: 4,
		policy: "  trusted_networks: [127.0.0.0/8]\n  trusted_senders: [alice@example.com]\n"})
	e.bin = plainBinary(t)
	trace := filepath.Join(e.dir, "strace.log")
	e.wrap = []string{strace, "-f", "--seccomp-bpf", "-qq", "-y", "-s", "1024", "-o", trace,
		"-e", "trace=openat,write,pwritev,fsync,fdatasync,rename,renameat,renameat2"}
	p := e.start(t)

	const sessions, each = 16, 21
	var mu sync.Mutex
	var acked []string
	var wg sync.WaitGroup
	for s := range sessions {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for i := range each {
				size := 124 << 10 // the journal holds up to 128 KiB, envelope included
				switch i % 7 {
				case 3, 6:
					size = 200 << 10 // a file of its own
				case 0:
					size = 1 << 10
				}
				id, err := submitPlain(e.plain, fmt.Sprintf("durable %d/%d", s, i), size)
				if err != nil {
					t.Errorf("session %d, message %d: %v", s, i, err)
					return
				}
				mu.Lock()
				acked = append(acked, id)
				mu.Unlock()
			}
		}()
	}
	wg.Wait()
	if t.Failed() {
		return
	}
	stopTraced(t, p)
	f, err := os.Open(trace)
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	calls, err := parseStrace(f)
	if err != nil {
		t.Fatal(err)
	}
	tr := indexTrace(calls)
	kinds := map[string]int{}
	for _, id := range acked {
		kind, miss := tr.onDisk(id)
		kinds[kind]++
		if miss != "" {
			t.Errorf("message %s acknowledged before %s", id, miss)
		}
	}
	if kinds["journal"] == 0 || kinds["file"] == 0 || len(tr.created) < 2 {
		t.Errorf("journal %d, files %d, journal files %d: the test did not cover both kinds and a new journal file",
			kinds["journal"], kinds["file"], len(tr.created))
	}
	t.Logf("%d acknowledgements traced (%d system calls): %d journal messages in %d journal files, %d with a file of their own",
		len(acked), len(calls), kinds["journal"], len(tr.created), kinds["file"])
}

// submitPlain sends one message as alice over the plain listener (a
// trusted network: no TLS, no AUTH, so that strace sees the reply in the
// clear) and returns its queue ID.
func submitPlain(addr, subject string, size int) (string, error) {
	c, err := smtp.Dial(addr)
	if err != nil {
		return "", err
	}
	defer c.Close()
	c.CommandTimeout, c.SubmissionTimeout = 60*time.Second, 60*time.Second
	if err := c.Mail("alice@example.com", nil); err != nil {
		return "", err
	}
	if err := c.Rcpt("bob@example.org", nil); err != nil {
		return "", err
	}
	w, err := c.Data()
	if err != nil {
		return "", err
	}
	line := strings.Repeat("d", 98) + "\r\n"
	fmt.Fprintf(w, "From: alice@example.com\r\nSubject: %s\r\n\r\n%s", subject, strings.Repeat(line, size/len(line)))
	resp, err := w.CloseWithResponse()
	if err != nil {
		return "", err
	}
	m := regexp.MustCompile(`queued as ([0-9A-F]{20})`).FindStringSubmatch(resp.StatusText)
	if m == nil {
		return "", fmt.Errorf("no queue ID in %q", resp.StatusText)
	}
	c.Quit()
	return m[1], nil
}

// stopTraced stops the relay that strace runs (SIGTERM to strace's child)
// and waits for strace to write the rest of its log and exit.
func stopTraced(t *testing.T, p *proc) {
	t.Helper()
	spid := p.cmd.Process.Pid
	b, err := os.ReadFile(fmt.Sprintf("/proc/%d/task/%d/children", spid, spid))
	if err != nil {
		t.Fatal(err)
	}
	f := strings.Fields(string(b))
	if len(f) != 1 {
		t.Fatalf("strace runs %q, want the relay alone", f)
	}
	pid, _ := strconv.Atoi(f[0])
	if err := syscall.Kill(pid, syscall.SIGTERM); err != nil {
		t.Fatal(err)
	}
	p.wait(t, 60*time.Second)
}

// traceIndex is the calls of a trace that put messages on disk and
// acknowledge them, by message and by file.
type traceIndex struct {
	acks    map[string]sysCall   // by queue ID: the write of its 250 to a client
	records map[string]sysCall   // by queue ID: the pwritev of its journal record
	drafts  map[string][]sysCall // by queue ID: the writes of tmp/ID.data
	renames map[string]sysCall   // by queue ID: tmp/ID.data to msg/ID.data
	created map[string]sysCall   // by path: the creation of a journal file
	syncs   map[string][]sysCall // by path: fsync and fdatasync of a file or folder
}

var (
	queuedAs  = regexp.MustCompile(`queued as ([0-9A-F]{20})`)
	recordOf  = regexp.MustCompile(`^SHJ1M([0-9A-F]{20})`)
	draftFile = regexp.MustCompile(`/tmp/([0-9A-F]{20})\.data$`)
	journalF  = regexp.MustCompile(`/journal/[0-9A-F]{16}\.log$`)
)

func indexTrace(calls []sysCall) *traceIndex {
	tr := &traceIndex{acks: map[string]sysCall{}, records: map[string]sysCall{}, drafts: map[string][]sysCall{},
		renames: map[string]sysCall{}, created: map[string]sysCall{}, syncs: map[string][]sysCall{}}
	first := func(m map[string]sysCall, k string, c sysCall) {
		if _, ok := m[k]; !ok {
			m[k] = c
		}
	}
	for _, c := range calls {
		path, strs := c.fdPath(), c.strings()
		switch c.name {
		case "write":
			if strings.HasPrefix(path, "socket:") && len(strs) > 0 {
				for _, m := range queuedAs.FindAllStringSubmatch(strs[0], -1) {
					first(tr.acks, m[1], c)
				}
			} else if m := draftFile.FindStringSubmatch(path); m != nil {
				tr.drafts[m[1]] = append(tr.drafts[m[1]], c)
			}
		case "pwritev":
			for _, s := range strs {
				if m := recordOf.FindStringSubmatch(s); m != nil {
					first(tr.records, m[1], c)
				}
			}
		case "openat":
			if len(strs) > 0 && journalF.MatchString(strs[0]) && strings.Contains(c.args, "O_CREAT") {
				first(tr.created, strs[0], c)
			}
		case "rename", "renameat", "renameat2":
			if len(strs) == 2 {
				if m := draftFile.FindStringSubmatch(strs[0]); m != nil && strings.HasSuffix(strs[1], "/msg/"+m[1]+".data") {
					first(tr.renames, m[1], c)
				}
			}
		case "fsync", "fdatasync":
			tr.syncs[path] = append(tr.syncs[path], c)
		}
	}
	return tr
}

// synced reports whether a sync of path was entered after line after and
// had returned before line before.
func (tr *traceIndex) synced(path string, after, before int) bool {
	for _, s := range tr.syncs[path] {
		if s.enter > after && s.exit < before {
			return true
		}
	}
	return false
}

// onDisk says how message id was stored (journal or file) and which step
// had not returned when its acknowledgement was written ("" if none).
func (tr *traceIndex) onDisk(id string) (kind, missing string) {
	ack, ok := tr.acks[id]
	if !ok {
		return "", "no acknowledgement of it in the trace"
	}
	if w, ok := tr.records[id]; ok && w.exit < ack.enter {
		path := w.fdPath()
		c, ok := tr.created[path]
		if !ok || !tr.synced(filepath.Dir(path), c.exit, ack.enter) {
			return "journal", "the fsync of journal/ after creating " + filepath.Base(path) + " (journal.go, rotateLocked)"
		}
		if !tr.synced(path, w.exit, ack.enter) {
			return "journal", "the journal's fdatasync of " + filepath.Base(path) + " after its record was written (journal.go, writeLocked)"
		}
		return "journal", ""
	}
	r, ok := tr.renames[id]
	if !ok || r.exit > ack.enter {
		return "file", "its rename into msg/, or any write of its bytes"
	}
	last := 0
	for _, w := range tr.drafts[id] {
		if w.exit < r.enter {
			last = max(last, w.exit)
		}
	}
	strs := r.strings()
	if last == 0 || !tr.synced(draftPath(tr, id, r), last, r.enter) {
		return "file", "the draft's fsync of tmp/" + id + ".data before its rename (draft.go, commitFile)"
	}
	if !tr.synced(filepath.Dir(strs[1]), r.exit, ack.enter) {
		return "file", "the fsync of msg/ after the rename (folder.go, commit)"
	}
	return "file", ""
}

// draftPath is tmp/ID.data as strace printed it for the draft's writes
// (the rename's old name, unless the writes name it otherwise).
func draftPath(tr *traceIndex, id string, r sysCall) string {
	if ws := tr.drafts[id]; len(ws) > 0 {
		return ws[0].fdPath()
	}
	return r.strings()[0]
}
