package history

import (
	"bufio"
	"fmt"
	"os"
	"path/filepath"
	"sort"
	"strings"
	"time"

	"github.com/smarthost/smarthost/relay/queue"
)

// The folder holds segments, each named by the time of its first event
// (UTC, so that names sort as times), one event per line:
//
//	20260506T120000.000000000Z.jsonl
//
// A segment is appended to until it holds segmentSize bytes or spans
// segmentAge, then the next begins (each start of the relay begins one
// too). Whole segments go when their last event is older than MaxAge, or,
// oldest first, while the folder is larger than MaxSize.
const (
	segmentExt    = ".jsonl"
	segmentLayout = "20060102T150405.000000000Z"
)

// segmentSize is a 32nd of MaxSize (at least 64 KiB): the size cap is kept
// to within a segment.
func (h *History) segmentSize() int64 { return max(h.cfg.MaxSize/32, 64<<10) }

// segmentAge is a 24th of MaxAge: the age cap is kept to within a
// segment's span.
func (h *History) segmentAge() time.Duration { return max(h.cfg.MaxAge/24, time.Minute) }

// segment is one file of the folder.
type segment struct {
	path  string
	start time.Time // its first event
	size  int64
}

// segments lists dir's segments, oldest first.
func segments(dir string) ([]segment, error) {
	ents, err := os.ReadDir(dir)
	if err != nil {
		return nil, err
	}
	var out []segment
	for _, e := range ents {
		name := e.Name()
		stem, ok := strings.CutSuffix(name, segmentExt)
		if !ok {
			continue
		}
		t, err := time.Parse(segmentLayout, stem)
		if err != nil {
			continue
		}
		info, err := e.Info()
		if err != nil {
			continue // removed meanwhile
		}
		out = append(out, segment{path: filepath.Join(dir, name), start: t, size: info.Size()})
	}
	sort.Slice(out, func(i, j int) bool { return out[i].start.Before(out[j].start) })
	return out, nil
}

// rotate ends the current segment (synced) and starts one at t, then
// prunes.
func (w *writer) rotate(t time.Time) error {
	if w.f != nil {
		w.flush()
		w.f.Sync()
		w.f.Close()
		w.f = nil
	}
	t = t.UTC()
	if !t.After(w.start) {
		t = w.start.Add(time.Nanosecond) // a name of its own, later
	}
	path := filepath.Join(w.h.cfg.Dir, t.Format(segmentLayout)+segmentExt)
	f, err := os.OpenFile(path, os.O_CREATE|os.O_WRONLY|os.O_APPEND, 0o600)
	if err != nil {
		return fmt.Errorf("history: %w", err)
	}
	info, err := f.Stat()
	if err != nil {
		f.Close()
		return fmt.Errorf("history: %w", err)
	}
	w.f, w.start, w.size = f, t, info.Size()
	if w.bw == nil {
		w.bw = bufio.NewWriterSize(f, 64<<10)
	} else {
		w.bw.Reset(f)
	}
	w.prune()
	return nil
}

// prune removes the segments whose events are all older than MaxAge, then
// the oldest while the folder is over MaxSize. The current segment stays.
func (w *writer) prune() {
	segs, err := segments(w.h.cfg.Dir)
	if err != nil {
		w.h.cfg.Log.Error("history: list", "err", err)
		return
	}
	cutoff := w.h.cfg.Now().Add(-w.h.cfg.MaxAge)
	var total int64
	for _, s := range segs {
		total += s.size
	}
	for _, s := range segs {
		if w.f != nil && s.path == w.f.Name() {
			break
		}
		if total <= w.h.cfg.MaxSize && !lastEvent(s.path).Before(cutoff) {
			break
		}
		if err := os.Remove(s.path); err != nil {
			w.h.cfg.Log.Error("history: prune", "err", err)
			return
		}
		total -= s.size
	}
}

// lastEvent is the time of a segment's last event (zero if it has none).
func lastEvent(path string) time.Time {
	var last time.Time
	tail(path, func(e *queue.Event) { last = e.Time })
	return last
}
