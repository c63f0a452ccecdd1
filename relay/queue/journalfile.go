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

func segName(seq uint64) string { return fmt.Sprintf("%016X.log", seq) }

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
