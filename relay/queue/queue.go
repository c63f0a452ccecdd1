// Package queue is the durable spool: messages are fsynced to disk before
// they are acknowledged, delivered by a bounded pool of workers, retried on a
// schedule, and bounced to their sender when they fail for good.
//
// Where things are: queue.go (this file) opens the spool and changes it;
// message.go is a message and its recipients; draft.go a message being
// received; format.go what the files hold; msgfiles.go the messages with a
// file of their own (msg/, tmp/); journal.go and journalfile.go the
// journal of small new messages; scheduler.go which messages are due and
// which in flight; attempt.go the workers and one delivery attempt, from
// the deliverer to the message's removal or saved state; bounce.go
// delivery status notifications; spool.go the view `smarthost queue` uses.
package queue

import (
	"context"
	"errors"
	"fmt"
	"io"
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
func (q *Queue) Create() (*Draft, error) { return newDraft(q, newID()) }

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
	d := &Draft{q: q, id: newID()}
	err := d.toFile()
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

// rescan brings the schedule in line with msg/: messages deleted by
// an administrator go, retry requests take effect. At start, and only then
// (a running server leaves what it cannot explain to a person), an
// unreadable message is set aside.
func (q *Queue) rescan(atStart bool) error {
	// Only messages known before msg/ is read may be dropped for
	// not being in it: one committed meanwhile may be missing from the
	// listing, and dropping it would delay it until the next rescan.
	before := q.sched.ids()
	ids, marked, err := q.files.scan()
	if err != nil {
		return err
	}
	seen := map[string]bool{}
	for _, id := range ids {
		seen[id] = true
		m, busy, committing := q.sched.lookup(id)
		if committing {
			continue
		}
		if m == nil {
			if m, err = q.files.read(id); err != nil {
				if atStart {
					// Every file in msg/ was complete and fsynced before
					// it got there, so this is damage, not a crash:
					// keep it aside for a person.
					q.log.Error("queue: unreadable message set aside as .bad", "msg_id", id, "err", err)
					for _, ext := range []string{".data", ".env"} {
						p := q.files.msgPath(id + ext)
						os.Rename(p, p+".bad") // the .env may not exist
					}
				}
				continue
			}
			q.sched.add(m)
		}
		retry := q.files.msgPath(id + ".retry")
		if _, err := os.Stat(retry); err == nil && !busy {
			q.sched.retryNow(m)
			os.Remove(retry)
		}
	}
	for _, m := range q.sched.dropGone(before, seen) {
		q.log.Info("queue: message deleted by request", "msg_id", m.ID)
		e := m.event(EventDeleted, q.now())
		e.By = "smarthost queue delete"
		q.observe(e)
	}
	q.dropMarked(marked)
	return nil
}

// dropMarked drops the journal messages `smarthost queue delete` marked
// (Spool.Delete). One being delivered is dropped at a later scan if it is
// still there; one in msg/ by then is removed from there.
func (q *Queue) dropMarked(ids []string) {
	for _, id := range ids {
		m, _, _ := q.sched.lookup(id)
		if m != nil {
			if !q.sched.claim(id) { // no worker may take it meanwhile
				continue
			}
			err := q.remove(m)
			if err == nil {
				q.sched.forget(id)
			}
			q.sched.release(id)
			if err != nil {
				q.log.Error("queue: delete", "msg_id", id, "err", err)
				continue
			}
			q.log.Info("queue: message deleted by request", "msg_id", id)
			e := m.event(EventDeleted, q.now())
			e.By = "smarthost queue delete"
			q.observe(e)
		}
		os.Remove(q.files.msgPath(id + ".delete"))
	}
}

// remove deletes a message that is done with: a 'D' record for one in the
// journal, its files for one in msg/.
func (q *Queue) remove(m *Message) error {
	if m.jseg != nil {
		q.journal.done(m.jseg, m.ID)
		m.jseg = nil
		return nil
	}
	return q.files.remove(m)
}

// save keeps the state of a message still pending: one in the journal
// moves out to msg/ (retries may go on for days, and journal files are
// removed only once all their messages are done with); one in msg/ gets
// its envelope file replaced.
func (q *Queue) save(m *Message) error {
	if m.jseg != nil {
		return q.moveToMsg(m)
	}
	if !q.files.has(m.ID) {
		q.sched.forget(m.ID) // deleted while we were delivering
		return nil
	}
	return q.files.writeEnv(m)
}

// moveToMsg moves a journal message to msg/, with its state as of now as the
// trailer, and tells the journal it is done with it there.
func (q *Queue) moveToMsg(m *Message) error {
	d := &Draft{q: q, id: m.ID}
	if err := d.toFile(); err != nil {
		return err
	}
	if _, err := io.Copy(d.w, io.NewSectionReader(m.jseg.f, m.joff, m.Size)); err != nil {
		d.Abort()
		return fmt.Errorf("queue: move %s out of the journal: %w", m.ID, err)
	}
	seg := m.jseg
	m.jseg, m.saved = nil, false
	if err := d.commitFile(m); err != nil {
		m.jseg = seg
		return err
	}
	q.journal.done(seg, m.ID)
	return nil
}

// notify queues a delivery status notification to m's sender about
// rcpts: failed, or with delayed, still being tried (bounce.go). It tells
// the observer which message carries it.
func (q *Queue) notify(m *Message, rcpts []Recipient, delayed bool) error {
	rcpts = wantNotice(rcpts, delayed)
	if len(rcpts) == 0 {
		return nil
	}
	orig, err := m.Open()
	if err != nil {
		return err
	}
	header := readHeader(orig, maxBounceHeader)
	orig.Close()
	text := report(reportInput{m: m, rcpts: rcpts, delayed: delayed, header: header, now: q.now(),
		hostname: q.cfg.Hostname, maxAge: q.cfg.MaxAge})
	d, err := q.Create()
	if err != nil {
		return err
	}
	if _, err := d.Write(text); err != nil {
		d.Abort()
		return err
	}
	// To a UTF-8 sender the report's own header is UTF-8: SMTPUTF8.
	utf8 := !isASCII(m.From)
	id, err := d.Commit(Envelope{To: []string{m.From}, SMTPUTF8: utf8, UTF8Required: utf8,
		MessageID: fmt.Sprintf("<%s.%s@%s>", m.ID, map[bool]string{false: "failed", true: "delayed"}[delayed], q.cfg.Hostname)}, nil)
	if err == nil {
		q.log.Info("delivery status notification queued", "msg_id", m.ID, "dsn_id", id, "delayed", delayed, "to", m.From)
		e := m.event(EventDSN, q.now())
		e.DSNID, e.Rcpt = id, m.From
		if delayed {
			e.Reason = "delayed"
		}
		q.observe(e)
	}
	return err
}

// warnDelayed sends the sender one warning, once, when m is still pending
// after DelayWarning (time on hold not counted), and tells the observer
// that each of its recipients is delayed.
func (q *Queue) warnDelayed(m *Message, now time.Time) {
	w := m.senderRecipients()
	if len(w) == 0 || q.cfg.DelayWarning <= 0 || m.Warned || m.age(now) < q.cfg.DelayWarning {
		return
	}
	if m.From != "" {
		if err := q.notify(m, w, true); err != nil {
			q.log.Error("queue: cannot queue delay warning", "msg_id", m.ID, "err", err)
			return
		}
	}
	m.Warned = true // saved with the message's state
	for _, r := range w {
		e := m.event(EventDelayed, now)
		e.Rcpt, e.Attempt, e.Delay, e.Error = r.Addr, m.Attempts, seconds(now.Sub(m.Created)), r.Error
		e.Status = statusOf(EventDeferred, r.Error)
		q.observe(e)
	}
}
