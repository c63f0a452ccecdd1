// Package queue is the queue: the durable spool, where messages are fsynced
// before they are acknowledged, and its schedule and workers, which deliver
// them, retry them, and bounce them to their sender when they fail for good.
//
// Where things are: queue.go (this file) opens the spool and hands it
// over; persist.go where a message lives, from its commit to its removal
// (the journal or msg/); message.go is a message and its recipients;
// draft.go a message being received; format.go what the files hold; msgfiles.go the messages with a
// file of their own (msg/, tmp/); journal.go and journalfile.go the
// journal of small new messages; scheduler.go which messages are due and
// which in flight; attempt.go the workers and one delivery attempt, from
// the deliverer to the message's removal or saved state; bounce.go
// delivery status notifications; spool.go the view `smarthost queue` uses,
// listing.go what it prints.
package queue

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"os"
	"path/filepath"
	"sync/atomic"
	"syscall"
	"time"
)

// Config is the queue section of the configuration, parsed.
type Config struct {
	Dir     string
	Workers int
	Retry   []time.Duration // delay after attempt 1, 2, ...; then the last one
	MaxAge  time.Duration   // after this a pending recipient bounces
	// DelayWarning, when set, sends the sender one "still trying" notice
	// for a message still pending this long after it arrived.
	DelayWarning time.Duration
	Hostname     string // names the reporting MTA in bounces
	// Rescan is how often the spool folder is read again to pick up
	// `smarthost queue retry|delete`; default 10s.
	Rescan time.Duration
	// InlineMax is the largest message (data and envelope) committed to
	// the journal, many to a file, rather than to a file of its own:
	// 0 means 128 KiB, a negative value none. A message being received is
	// held in memory up to this size.
	InlineMax int64
	// MemoryMax bounds the bytes of all messages being received that are
	// held in memory at once (0: 64 MiB): beyond it, new data goes to
	// files in tmp/, so that thousands of slow senders cost disk, not RAM.
	MemoryMax int64
	Now       func() time.Time // nil: time.Now
	// Shaped, when set, hears of each message that waited in a lane for
	// an upstream's budget (WaitError) and was then tried: which
	// upstream, and how long it waited.
	Shaped func(upstream string, waited time.Duration)
	// Observer is told of every event of every message (nil: none).
	Observer Observer
}

const (
	defaultInlineMax = 128 << 10
	defaultMemoryMax = 64 << 20
)

// journalFileMax: a journal file takes no more appends beyond this size.
const journalFileMax = 16 << 20

// Deliverer makes one attempt at the pending recipients of m and reports one
// outcome per recipient of m.Pending(), in order (a nil Err: accepted). An
// Err for which IsPermanent is true fails the recipient; any other is
// retried.
type Deliverer interface {
	Deliver(ctx context.Context, m *Message) []Outcome
}

// PermanentError marks a delivery failure that no retry can fix.
type PermanentError struct{ Err error }

func (e *PermanentError) Error() string { return e.Err.Error() }

func (e *PermanentError) Unwrap() error { return e.Err }

// Permanent marks err as permanent.
func Permanent(err error) error { return &PermanentError{err} }

// IsPermanent reports whether err was marked permanent. Everything else is
// temporary: when in doubt, retry.
func IsPermanent(err error) bool {
	var p *PermanentError
	return errors.As(err, &p)
}

// ErrInUse is Open's error when another process (a running relay) has
// the spool.
var ErrInUse = errors.New("in use by another process")

// Queue is the spool plus its delivery workers.
type Queue struct {
	cfg     Config
	d       Deliverer
	log     *slog.Logger
	lock    *os.File
	disk    disk
	files   *msgFiles
	journal *journal
	sched   *scheduler
	// handoff, once set, replaces the deliverer and the retry schedule:
	// the node is leaving and hands every message to its peers. leaving
	// ends when it is set, which cuts short the attempts then in flight
	// through the routes (an upstream that tarpits would hold them for its
	// whole timeout).
	handoff atomic.Pointer[handoff]
	leaving context.Context
	leave   context.CancelCauseFunc
	drafts  drafts // what the drafts share (draft.go)
}

// Open opens (creating if needed) the spool at cfg.Dir, takes its lock so
// that no second process delivers from it, and loads what is there.
func Open(cfg Config, d Deliverer, log *slog.Logger) (*Queue, error) {
	return open(cfg, d, log, realDisk)
}

func open(cfg Config, d Deliverer, log *slog.Logger, od ondisk) (*Queue, error) {
	if cfg.Workers <= 0 {
		cfg.Workers = 1
	}
	if len(cfg.Retry) == 0 {
		cfg.Retry = []time.Duration{time.Minute}
	}
	if cfg.Rescan <= 0 {
		cfg.Rescan = 10 * time.Second
	}
	if cfg.Now == nil {
		cfg.Now = time.Now
	}
	if cfg.InlineMax == 0 {
		cfg.InlineMax = defaultInlineMax
	}
	if cfg.MemoryMax == 0 {
		cfg.MemoryMax = defaultMemoryMax
	}
	for _, sub := range []string{"tmp", "msg", "journal"} {
		if err := os.MkdirAll(filepath.Join(cfg.Dir, sub), 0o700); err != nil {
			return nil, fmt.Errorf("queue: %w", err)
		}
	}
	lock, err := os.OpenFile(filepath.Join(cfg.Dir, "lock"), os.O_CREATE|os.O_RDWR, 0o600)
	if err != nil {
		return nil, fmt.Errorf("queue: %w", err)
	}
	if err := syscall.Flock(int(lock.Fd()), syscall.LOCK_EX|syscall.LOCK_NB); err != nil {
		lock.Close()
		return nil, fmt.Errorf("queue: %s: %w (%v)", cfg.Dir, ErrInUse, err)
	}
	q := &Queue{cfg: cfg, d: d, log: log, lock: lock, disk: od.disk, files: newMsgFiles(cfg.Dir, od.disk)}
	q.drafts = drafts{inlineMax: cfg.InlineMax, memoryMax: cfg.MemoryMax, disk: od.disk, files: q.files}
	q.leaving, q.leave = context.WithCancelCause(context.Background())
	q.sched = newScheduler(q.now)
	q.files.clean(log.Info)
	j, ms, err := openJournal(filepath.Join(cfg.Dir, "journal"), od.journalMax, od.disk, q.files.has, log.Warn)
	if err != nil {
		lock.Close()
		return nil, err
	}
	q.journal = j
	for _, m := range ms {
		m.dir = cfg.Dir
		q.sched.add(m)
	}
	if err := q.rescan(true); err != nil {
		q.journal.close()
		lock.Close()
		return nil, err
	}
	return q, nil
}

// Close releases the spool lock. Call it after Run has returned.
func (q *Queue) Close() error {
	q.journal.close()
	return q.lock.Close()
}

func (q *Queue) now() time.Time { return q.cfg.Now() }

// Create starts a draft.
func (q *Queue) Create() (*Draft, error) {
	d, err := q.drafts.start(newID())
	if d != nil {
		d.q = q
	}
	return d, err
}

type handoff struct {
	d     Deliverer
	retry time.Duration
}

// Handoff sends every message from now on through d (the peers of
// queue.handoff) instead of the routes, retrying every retry, and makes
// them all due at once. Attempts in flight through the routes are cut
// short (the deliverer sees their context end with ErrLeaving), so that
// their messages go to the peers too: one the upstream had taken whole
// before the cut may arrive twice. It is for a node that leaves: once Len
// is 0 it has nothing left.
func (q *Queue) Handoff(d Deliverer, retry time.Duration) {
	q.handoff.Store(&handoff{d: d, retry: retry})
	q.leave(ErrLeaving)
	q.sched.flushLanes()
	q.sched.retryAll()
}

// ErrLeaving is why a delivery through the routes was cut short: the node
// hands its queue to its peers (Handoff).
var ErrLeaving = errors.New("interrupted: the node is handing its queue to its peers")

// deliverer and retryAfter are the routes' and the schedule's, or the
// handoff's; routes says which.
func (q *Queue) deliverer() (d Deliverer, routes bool) {
	if h := q.handoff.Load(); h != nil {
		return h.d, false
	}
	return q.d, true
}

func (q *Queue) retryAfter(attempts int) time.Duration {
	if h := q.handoff.Load(); h != nil {
		return h.retry
	}
	return q.cfg.Retry[min(attempts, len(q.cfg.Retry))-1]
}

// Len is the number of messages in the spool.
func (q *Queue) Len() int { return q.sched.len() }

// Oldest is the arrival time of the oldest message in the spool, but for
// those on hold (zero when there is none).
func (q *Queue) Oldest() time.Time { return q.sched.oldest() }

// Held is the number of messages on hold.
func (q *Queue) Held() int { return q.sched.held() }

// Writable checks that a message could be spooled right now: that a file
// can be made and written in the spool.
func (q *Queue) Writable() error {
	d, err := q.drafts.inFile(newID())
	if err == nil {
		_, err = d.Write([]byte("probe"))
	}
	if err == nil {
		err = d.w.Flush()
	}
	if d.f != nil {
		d.Abort()
	}
	return err
}
