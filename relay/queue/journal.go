package queue

import (
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"sync"
)

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
	disk    disk

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

// openJournal reads the journal at dir, cuts records left incomplete by a
// crash, and starts a new file for what comes. It returns the messages
// still waiting in it, but for those skip says are in msg/ already.
func openJournal(dir string, maxSize int64, dsk disk, skip func(id string) bool, warn func(string, ...any)) (*journal, []*Message, error) {
	if err := os.MkdirAll(dir, 0o700); err != nil {
		return nil, nil, fmt.Errorf("queue: %w", err)
	}
	j := &journal{dir: dir, maxSize: maxSize, disk: dsk, nextSeq: 1}
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
			if err := j.disk.fsync(s.f); err != nil {
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
		size, err := j.writeBatch(seg, batch, err)

		j.mu.Lock()
		j.settleLocked(seg, batch, size, err)
	}
	j.writing = false
}

// writeBatch appends batch to seg in one write, and syncs it if a record
// in it is waited for; j.mu is not held. It sets each record's offset and
// returns the bytes written. A rotation that failed (err) writes nothing.
func (j *journal) writeBatch(seg *segment, batch []*jrec, err error) (int64, error) {
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
		err = j.disk.fdatasync(seg.f)
	}
	if err != nil {
		err = fmt.Errorf("queue: write journal: %w", err)
	}
	return size, err
}

// settleLocked tells batch's writers how its write went: on success seg
// grows by size and counts its new messages; on failure seg takes no more
// appends.
func (j *journal) settleLocked(seg *segment, batch []*jrec, size int64, err error) {
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
	f, err := j.disk.create(s.path, os.O_RDWR)
	if err != nil {
		return fmt.Errorf("queue: new journal file: %w", err)
	}
	if err := j.disk.syncDir(j.dir); err != nil {
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
