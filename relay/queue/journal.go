package queue

import (
	"bufio"
	"encoding/binary"
	"errors"
	"fmt"
	"hash/crc32"
	"io"
	"os"
	"path/filepath"
	"sort"
	"strconv"
	"strings"
	"sync"
	"syscall"

	"golang.org/x/sys/unix"
)

// The journal holds messages that have not had a delivery attempt yet,
// many to a file: journal/SEQ.log, appended by one writer at a time, each
// write shared by every commit waiting for it and made durable by one
// fdatasync (group commit). A message that is delivered at the first
// attempt then costs no file of its own: no create, rename or unlink, and
// a share of one sync, where a file per message costs a file creation, an
// fsync and an unlink on the file system's journal each (docs/benchmarks.md).
// A message that is still pending after its first attempt moves to msg/ as
// a file of its own (see Queue.attempt), so a journal file lives only as
// long as its messages wait for a first attempt.
//
// A record is
//
//	"SHJ1" kind(1) ID(20) length(4, big-endian) payload CRC-32C(4)
//
// with the CRC over kind, ID, length and payload. Kind 'M' is a message:
// its payload is what ID.data would hold (the data, then its envelope as a
// trailer). Kind 'D' (no payload) says message ID is done with: delivered,
// moved to msg/, or deleted. 'D' records are written but not synced: after
// a power loss a delivered message may come back and be sent again, the
// one duplicate the spool allows (as with removals in msg/).
//
// Files are removed oldest first, once every message in them is done: a
// 'D' record is always in the same file as its message or a later one, so
// removing a file never revives a message of an older one.
const (
	recMagic = "SHJ1"
	recMsg   = 'M'
	recDone  = 'D'
	recHead  = 4 + 1 + 20 + 4
	recTail  = 4
)

var crcTable = crc32.MakeTable(crc32.Castagnoli)

// segment is one journal file.
type segment struct {
	seq  uint64
	path string
	f    *os.File // deliveries read it (ReadAt); the writer appends
	size int64    // of the whole records in it
	live int      // its messages not yet done with
	torn bool     // something follows its whole records
}

// jrec is a record waiting to be written.
type jrec struct {
	kind    byte
	id      string
	payload []byte
	durable bool // its writer waits for an fdatasync

	// Set once written.
	written bool
	seg     *segment
	off     int64 // of the payload
	err     error
}

type journal struct {
	dir     string
	maxSize int64 // a file is not appended to beyond this

	mu       sync.Mutex
	cond     *sync.Cond
	segs     []*segment // oldest first; new records go to the last
	pending  []*jrec
	writing  bool
	nextSeq  uint64
	retiring []*segment // emptied, to be closed and removed outside mu
	frames   []byte     // the writer's headers and CRCs, kept between writes
	iov      [][]byte
}

func segName(seq uint64) string { return fmt.Sprintf("%016X.log", seq) }

// openJournal reads the journal at dir, cuts records left incomplete by a
// crash, and starts a new file for what comes. It returns the messages
// still waiting in it, but for those skip says are in msg/ already.
func openJournal(dir string, maxSize int64, skip func(id string) bool, warn func(string, ...any)) (*journal, []*Message, error) {
	if err := os.MkdirAll(dir, 0o700); err != nil {
		return nil, nil, fmt.Errorf("queue: %w", err)
	}
	j := &journal{dir: dir, maxSize: maxSize, nextSeq: 1}
	j.cond = sync.NewCond(&j.mu)
	segs, ms, err := loadSegments(dir, os.O_RDWR, skip)
	if err != nil {
		return nil, nil, err
	}
	for _, s := range segs {
		if s.torn {
			// Written but never acknowledged: a write cut short by a crash,
			// or one that failed (the file was then left for a new one).
			warn("queue: journal file ends in an incomplete record, cut", "file", s.path, "at", s.size)
			if err := s.f.Truncate(s.size); err != nil {
				return nil, nil, fmt.Errorf("queue: cut journal %s: %w", s.path, err)
			}
			if err := s.f.Sync(); err != nil {
				return nil, nil, fmt.Errorf("queue: sync journal %s: %w", s.path, err)
			}
		}
		j.nextSeq = s.seq + 1
	}
	j.segs = segs
	if err := j.rotate(); err != nil {
		return nil, nil, err
	}
	j.closeRetired()
	return j, ms, nil
}

// loadSegments opens every journal file in dir (oldest first) and returns
// them with the messages in them not yet done with, but for those skip
// names. A file's size is that of its whole records: reading stops at the
// first record that is incomplete or fails its CRC (torn).
func loadSegments(dir string, flag int, skip func(id string) bool) ([]*segment, []*Message, error) {
	seqs, err := listSegments(dir)
	if err != nil {
		return nil, nil, err
	}
	type place struct {
		seg    *segment
		off, n int64
	}
	live := map[string]place{}
	var order []string
	var segs []*segment
	for _, seq := range seqs {
		s := &segment{seq: seq, path: filepath.Join(dir, segName(seq))}
		if s.f, err = os.OpenFile(s.path, flag, 0o600); err != nil {
			for _, o := range segs {
				o.f.Close()
			}
			return nil, nil, fmt.Errorf("queue: open journal: %w", err)
		}
		good, err := readRecords(s.f, func(kind byte, id string, off, n int64) {
			switch kind {
			case recMsg:
				if _, ok := live[id]; !ok {
					order = append(order, id)
				}
				live[id] = place{s, off, n}
			case recDone:
				delete(live, id)
			}
		})
		s.size, s.torn = good, err != nil
		segs = append(segs, s)
	}
	var ms []*Message
	for _, id := range order {
		p, ok := live[id]
		if !ok || skip(id) {
			continue // done with, or moved to msg/ before its 'D' record
		}
		delete(live, id)
		m, err := readTrailer(io.NewSectionReader(p.seg.f, p.off, p.n), p.n, id)
		if err != nil {
			// Its CRC held, so this is not damage but a bug: say so.
			return nil, nil, fmt.Errorf("queue: journal %s: %w", p.seg.path, err)
		}
		m.jseg, m.joff = p.seg, p.off
		p.seg.live++
		ms = append(ms, m)
	}
	return segs, ms, nil
}

func listSegments(dir string) ([]uint64, error) {
	ents, err := os.ReadDir(dir)
	if err != nil {
		return nil, fmt.Errorf("queue: read journal: %w", err)
	}
	var seqs []uint64
	for _, e := range ents {
		name, ok := strings.CutSuffix(e.Name(), ".log")
		if !ok || len(name) != 16 {
			continue
		}
		if seq, err := strconv.ParseUint(name, 16, 64); err == nil {
			seqs = append(seqs, seq)
		}
	}
	sort.Slice(seqs, func(a, b int) bool { return seqs[a] < seqs[b] })
	return seqs, nil
}

var errTorn = errors.New("record cut short or corrupt")

// readRecords calls fn for each whole record of f in order and returns the
// length of the whole records; err is set when something else follows.
func readRecords(f *os.File, fn func(kind byte, id string, off, n int64)) (int64, error) {
	st, err := f.Stat()
	if err != nil {
		return 0, err
	}
	r := bufio.NewReaderSize(io.NewSectionReader(f, 0, st.Size()), 64<<10)
	var off int64
	head := make([]byte, recHead)
	var body []byte
	for off < st.Size() {
		if _, err := io.ReadFull(r, head); err != nil {
			return off, errTorn
		}
		n := int64(binary.BigEndian.Uint32(head[25:29]))
		if string(head[:4]) != recMagic || (head[4] != recMsg && head[4] != recDone) ||
			!validID(string(head[5:25])) || off+recHead+n+recTail > st.Size() {
			return off, errTorn
		}
		if int64(cap(body)) < n+recTail {
			body = make([]byte, n+recTail)
		}
		body = body[:n+recTail]
		if _, err := io.ReadFull(r, body); err != nil {
			return off, errTorn
		}
		crc := crc32.Update(crc32.Checksum(head[4:], crcTable), crcTable, body[:n])
		if crc != binary.BigEndian.Uint32(body[n:]) {
			return off, errTorn
		}
		fn(head[4], string(head[5:25]), off+recHead, n)
		off += recHead + n + recTail
	}
	return off, nil
}

// frame appends a record's header and CRC to b and returns them as the
// two slices to write around its payload, which is never copied: a
// message is held in memory once.
func frame(b []byte, kind byte, id string, payload []byte) (_, head, tail []byte) {
	start := len(b)
	b = append(b, recMagic...)
	b = append(b, kind)
	b = append(b, id...)
	b = binary.BigEndian.AppendUint32(b, uint32(len(payload)))
	crc := crc32.Update(crc32.Checksum(b[start+4:], crcTable), crcTable, payload)
	b = binary.BigEndian.AppendUint32(b, crc)
	return b, b[start : start+recHead], b[start+recHead:]
}

// pwriteAll writes bufs at off, in as many pwritev calls as it takes.
func pwriteAll(f *os.File, bufs [][]byte, off int64) error {
	fd := int(f.Fd())
	for len(bufs) > 0 {
		n, err := unix.Pwritev(fd, bufs[:min(len(bufs), 1024)], off) // IOV_MAX
		if err == unix.EINTR {
			continue
		}
		if err != nil {
			return err
		}
		if n == 0 {
			return io.ErrShortWrite
		}
		off += int64(n)
		for n > 0 && len(bufs) > 0 {
			if n < len(bufs[0]) {
				bufs[0] = bufs[0][n:]
				break
			}
			n -= len(bufs[0])
			bufs = bufs[1:]
		}
	}
	return nil
}

// add writes a message and returns once it is durable, with its place.
func (j *journal) add(id string, payload []byte) (*segment, int64, error) {
	r := &jrec{kind: recMsg, id: id, payload: payload, durable: true}
	j.mu.Lock()
	defer j.mu.Unlock()
	j.pending = append(j.pending, r)
	for !r.written {
		if !j.writing {
			j.writeLocked()
			continue
		}
		j.cond.Wait()
	}
	if r.err != nil {
		return nil, 0, r.err
	}
	return r.seg, r.off, nil
}

// done records that message id, in seg, is done with. The record is
// written with the next write, or now if none is under way; it is not
// waited for.
func (j *journal) done(seg *segment, id string) {
	j.mu.Lock()
	if len(j.segs) == 0 {
		j.mu.Unlock()
		return // closed: the message is sent again after the restart
	}
	seg.live--
	j.pending = append(j.pending, &jrec{kind: recDone, id: id})
	if !j.writing {
		j.writeLocked()
	}
	j.trimLocked()
	j.mu.Unlock()
	j.closeRetired()
}

// writeLocked writes everything pending, batch after batch, until nothing
// is left; other callers queue up meanwhile and are written next. j.mu is
// held on entry and exit, not while writing.
func (j *journal) writeLocked() {
	j.writing = true
	for len(j.pending) > 0 {
		batch := j.pending
		j.pending = nil
		if len(j.segs) == 0 { // closed: a session that outlived the shutdown
			for _, r := range batch {
				r.written, r.err = true, errors.New("queue: closed")
			}
			j.cond.Broadcast()
			continue
		}
		seg := j.segs[len(j.segs)-1]
		j.mu.Unlock()

		var err error
		if seg.size >= j.maxSize {
			if err = j.rotate(); err == nil {
				j.mu.Lock()
				seg = j.segs[len(j.segs)-1]
				j.mu.Unlock()
			}
		}
		// The slices of frames handed out must stay put: room for all.
		if need := len(batch) * (recHead + recTail); cap(j.frames) < need {
			j.frames = make([]byte, 0, need)
		}
		frames, iov := j.frames[:0], j.iov[:0]
		var size int64
		durable := false
		for _, r := range batch {
			var head, tail []byte
			frames, head, tail = frame(frames, r.kind, r.id, r.payload)
			r.off = seg.size + size + recHead
			size += int64(recHead + len(r.payload) + recTail)
			iov = append(iov, head)
			if len(r.payload) > 0 {
				iov = append(iov, r.payload)
			}
			iov = append(iov, tail)
			durable = durable || r.durable
		}
		if err == nil {
			err = pwriteAll(seg.f, iov, seg.size)
		}
		clear(iov) // the payloads are the callers'
		j.iov = iov[:0]
		if err == nil && durable {
			err = syscall.Fdatasync(int(seg.f.Fd()))
		}
		if err != nil {
			err = fmt.Errorf("queue: write journal: %w", err)
		}

		j.mu.Lock()
		if err == nil {
			seg.size += size
		} else if len(j.segs) == 0 {
			// Closed meanwhile: nothing more is written.
		} else if rerr := j.rotateLocked(); rerr != nil {
			// What the failed write left in the file is of unknown state
			// (a failed fdatasync may have dropped the pages): nothing is
			// appended to it again, and its records count as not written.
			// Nothing is left to write to: everything waits for a file.
			err = fmt.Errorf("%w (and no new journal file: %v)", err, rerr)
		}
		for _, r := range batch {
			r.written, r.err, r.seg = true, err, seg
			if err == nil && r.kind == recMsg {
				seg.live++
			}
		}
		j.cond.Broadcast()
	}
	j.writing = false
}

// rotate starts a new file for new records: created, and its name made
// durable before any record in it is acknowledged.
func (j *journal) rotate() error {
	j.mu.Lock()
	defer j.mu.Unlock()
	return j.rotateLocked()
}

func (j *journal) rotateLocked() error {
	s := &segment{seq: j.nextSeq}
	s.path = filepath.Join(j.dir, segName(s.seq))
	f, err := os.OpenFile(s.path, os.O_CREATE|os.O_EXCL|os.O_RDWR, 0o600)
	if err != nil {
		return fmt.Errorf("queue: new journal file: %w", err)
	}
	if err := syncDir(j.dir); err != nil {
		f.Close()
		os.Remove(s.path)
		return fmt.Errorf("queue: new journal file: fsync: %w", err)
	}
	s.f = f
	j.nextSeq++
	j.segs = append(j.segs, s)
	j.trimLocked()
	return nil
}

// trimLocked retires the oldest files while every message in them is done
// and a newer file takes the appends.
func (j *journal) trimLocked() {
	for len(j.segs) > 1 && j.segs[0].live == 0 {
		j.retiring = append(j.retiring, j.segs[0])
		j.segs = j.segs[1:]
	}
}

// closeRetired removes the retired files. Not synced: after a crash a
// removed file may come back, with 'D' records for all its messages.
func (j *journal) closeRetired() {
	j.mu.Lock()
	r := j.retiring
	j.retiring = nil
	j.mu.Unlock()
	for _, s := range r {
		s.f.Close()
		os.Remove(s.path)
	}
}

// close closes the journal's files; nothing may use it after.
func (j *journal) close() {
	j.mu.Lock()
	j.retiring = append(j.retiring[:len(j.retiring):len(j.retiring)], j.segs...)
	j.segs = nil
	j.mu.Unlock()
	for _, s := range j.retiring {
		s.f.Close()
	}
	j.retiring = nil
}
