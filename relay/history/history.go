// Package history keeps what happened to each message, after it has left
// the queue too, for a few days or up to a size, whichever comes first:
// every queue.Event, one JSON line each, in files of a folder, written by
// one goroutine off the paths that accept and deliver mail. Search reads
// them, in any process, to answer `smarthost trace`, the admin API and the
// status page.
//
// Where things are: history.go (this file) the writer; segment.go the
// files and their pruning; search.go the reading; text.go a story as
// `smarthost trace` prints it.
package history

import (
	"bufio"
	"bytes"
	"encoding/json"
	"errors"
	"fmt"
	"log/slog"
	"os"
	"path/filepath"
	"sync/atomic"
	"syscall"
	"time"

	"github.com/smarthost/smarthost/relay/queue"
)

// Config is the history section of the configuration, parsed.
type Config struct {
	Dir     string
	MaxAge  time.Duration // events older than this go; default 72h
	MaxSize int64         // the folder's files in all; default 1 GiB
	// Buffer is how many events may wait in memory for the writer; beyond
	// it, events are dropped (and counted) rather than slow mail down.
	// Default 65536.
	Buffer int
	Now    func() time.Time // nil: time.Now
	Log    *slog.Logger
}

const (
	defaultMaxAge  = 72 * time.Hour
	defaultMaxSize = 1 << 30
	defaultBuffer  = 1 << 16
)

// ErrInUse is Open's error when another process writes the history.
var ErrInUse = errors.New("in use by another process")

// History writes events to the folder. Observe never blocks.
type History struct {
	cfg     Config
	lock    *os.File
	events  chan queue.Event
	done    chan struct{}
	dropped atomic.Uint64
	written atomic.Uint64
}

var _ queue.Observer = (*History)(nil)

// Open opens (creating if needed) the history at cfg.Dir, takes its lock
// so that no second process writes to it, and starts the writer.
func Open(cfg Config) (*History, error) {
	if cfg.MaxAge <= 0 {
		cfg.MaxAge = defaultMaxAge
	}
	if cfg.MaxSize <= 0 {
		cfg.MaxSize = defaultMaxSize
	}
	if cfg.Buffer <= 0 {
		cfg.Buffer = defaultBuffer
	}
	if cfg.Now == nil {
		cfg.Now = time.Now
	}
	if cfg.Log == nil {
		cfg.Log = slog.New(slog.DiscardHandler)
	}
	if err := os.MkdirAll(cfg.Dir, 0o700); err != nil {
		return nil, fmt.Errorf("history: %w", err)
	}
	lock, err := os.OpenFile(filepath.Join(cfg.Dir, "lock"), os.O_CREATE|os.O_RDWR, 0o600)
	if err != nil {
		return nil, fmt.Errorf("history: %w", err)
	}
	if err := syscall.Flock(int(lock.Fd()), syscall.LOCK_EX|syscall.LOCK_NB); err != nil {
		lock.Close()
		return nil, fmt.Errorf("history: %s: %w (%v)", cfg.Dir, ErrInUse, err)
	}
	h := &History{cfg: cfg, lock: lock, events: make(chan queue.Event, cfg.Buffer), done: make(chan struct{})}
	w, err := h.newWriter()
	if err != nil {
		lock.Close()
		return nil, err
	}
	go h.run(w)
	return h, nil
}

// Observe takes an event to write. It never waits: with the buffer full
// (a disk that stalls), the event is dropped and counted.
func (h *History) Observe(e queue.Event) {
	select {
	case h.events <- e:
	default:
		h.dropped.Add(1)
	}
}

// Dropped is the number of events dropped for a full buffer.
func (h *History) Dropped() uint64 { return h.dropped.Load() }

// Written is the number of events written.
func (h *History) Written() uint64 { return h.written.Load() }

// Close writes the events still buffered, syncs, and releases the lock.
// Nothing may Observe after it.
func (h *History) Close() error {
	close(h.events)
	<-h.done
	return h.lock.Close()
}

// run writes events as they come, a batch at a time: what is waiting is
// written in one go, then the file is flushed (a crash of the process
// loses only what was still waiting), and synced at rotation and at the
// end.
func (h *History) run(w *writer) {
	defer close(h.done)
	prune := time.NewTicker(time.Hour)
	defer prune.Stop()
	for {
		select {
		case e, ok := <-h.events:
			if !ok {
				w.close()
				return
			}
			w.write(e)
			for more := true; more; {
				select {
				case e, ok := <-h.events:
					if !ok {
						w.close()
						return
					}
					w.write(e)
				default:
					more = false
				}
			}
			w.flush()
		case <-prune.C:
			w.prune()
		}
	}
}

// writer owns the current segment.
type writer struct {
	h     *History
	f     *os.File
	bw    *bufio.Writer
	line  bytes.Buffer
	enc   *json.Encoder // into line
	start time.Time     // of the segment
	size  int64
}

func (h *History) newWriter() (*writer, error) {
	w := &writer{h: h}
	w.enc = json.NewEncoder(&w.line)
	// "<" and ">" as they are: a Message-ID is searched for as written.
	w.enc.SetEscapeHTML(false)
	w.prune()
	return w, w.rotate(h.cfg.Now())
}

// write appends one event, rotating first when the segment is full or old.
func (w *writer) write(e queue.Event) {
	if w.f == nil || w.size >= w.h.segmentSize() || e.Time.Sub(w.start) >= w.h.segmentAge() {
		if err := w.rotate(e.Time); err != nil {
			w.h.cfg.Log.Error("history: new file", "err", err)
			w.h.dropped.Add(1)
			return
		}
	}
	w.line.Reset()
	if err := w.enc.Encode(e); err != nil {
		w.h.cfg.Log.Error("history: encode", "err", err)
		w.h.dropped.Add(1)
		return
	}
	w.bw.Write(w.line.Bytes()) // an error shows at the flush
	w.size += int64(w.line.Len())
	w.h.written.Add(1)
}

func (w *writer) flush() {
	if w.bw != nil {
		if err := w.bw.Flush(); err != nil {
			w.h.cfg.Log.Error("history: write", "err", err)
		}
	}
}

func (w *writer) close() {
	w.flush()
	if w.f != nil {
		w.f.Sync()
		w.f.Close()
	}
}
