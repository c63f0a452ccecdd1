// Package queue is the durable spool: messages are fsynced to disk before
// they are acknowledged, delivered by a bounded pool of workers, retried on a
// schedule, and bounced to their sender when they fail for good.
package queue

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"os"
	"path/filepath"
	"sort"
	"strings"
	"sync"
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
	Now       func() time.Time // nil: time.Now
}

const defaultInlineMax = 128 << 10

// journalFileMax: a journal file takes no more appends beyond this size.
const journalFileMax = 16 << 20

// Deliverer makes one attempt at the pending recipients of m and reports one
// outcome per recipient of m.Pending(), in order (nil = accepted). An error
// for which IsPermanent is true fails the recipient; any other is retried.
type Deliverer interface {
	Deliver(ctx context.Context, m *Message) []error
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

// Queue is the spool plus its delivery workers.
type Queue struct {
	cfg  Config
	d    Deliverer
	log  *slog.Logger
	lock *os.File
	// dirSync makes renames in msg/ durable, many at a time.
	dirSync *groupSync
	// writers recycles the drafts' 32 KiB write buffers: at hundreds of
	// messages a second, that much garbage each is felt in the collector.
	writers sync.Pool
	bufs    sync.Pool // the drafts' memory buffers, likewise
	journal *journal

	mu       sync.Mutex
	items    map[string]*Message
	inflight map[string]bool
	creating map[string]bool // being committed: rescans leave them alone
	wake     chan struct{}
}

// Open opens (creating if needed) the spool at cfg.Dir, takes its lock so
// that no second process delivers from it, and loads what is there.
func Open(cfg Config, d Deliverer, log *slog.Logger) (*Queue, error) {
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
		return nil, fmt.Errorf("queue: %s is in use by another process: %w", cfg.Dir, err)
	}
	q := &Queue{cfg: cfg, d: d, log: log, lock: lock, dirSync: newGroupSync(filepath.Join(cfg.Dir, "msg")),
		items: map[string]*Message{}, inflight: map[string]bool{}, creating: map[string]bool{}, wake: make(chan struct{}, 1)}
	// Drafts of connections that died with the last process were never
	// acknowledged.
	tmp, _ := os.ReadDir(filepath.Join(cfg.Dir, "tmp"))
	for _, e := range tmp {
		os.Remove(filepath.Join(cfg.Dir, "tmp", e.Name()))
	}
	j, ms, err := openJournal(filepath.Join(cfg.Dir, "journal"), journalFileMax,
		func(id string) bool { return inMsg(cfg.Dir, id) }, log.Warn)
	if err != nil {
		lock.Close()
		return nil, err
	}
	q.journal = j
	for _, m := range ms {
		m.dir = cfg.Dir
		q.items[m.ID] = m
	}
	if err := q.rescan(true); err != nil {
		q.journal.close()
		lock.Close()
		return nil, err
	}
	q.removeOrphans()
	return q, nil
}

// Close releases the spool lock. Call it after Run has returned.
func (q *Queue) Close() error {
	q.journal.close()
	return q.lock.Close()
}

func (q *Queue) now() time.Time { return q.cfg.Now() }

// Len is the number of messages in the spool.
func (q *Queue) Len() int {
	q.mu.Lock()
	defer q.mu.Unlock()
	return len(q.items)
}

// Oldest is the arrival time of the oldest message in the spool (zero when
// empty).
func (q *Queue) Oldest() time.Time {
	q.mu.Lock()
	defer q.mu.Unlock()
	var t time.Time
	for _, m := range q.items {
		if t.IsZero() || m.Created.Before(t) {
			t = m.Created
		}
	}
	return t
}

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

func (q *Queue) add(m *Message) {
	q.mu.Lock()
	q.items[m.ID] = m
	q.mu.Unlock()
	q.kick()
}

func (q *Queue) kick() {
	select {
	case q.wake <- struct{}{}:
	default:
	}
}

// rescan brings the in-memory index in line with the folder: messages
// deleted by an administrator go, retry requests take effect. At start, and
// only then (a running server leaves what it cannot explain to a person),
// an unreadable message is set aside.
func (q *Queue) rescan(atStart bool) error {
	// Only messages indexed before the folder is read may be dropped for
	// not being in it: one committed meanwhile may be missing from the
	// listing, and dropping it would delay it until the next rescan.
	q.mu.Lock()
	before := make(map[string]bool, len(q.items))
	for id := range q.items {
		before[id] = true
	}
	q.mu.Unlock()
	ids, marked, err := scan(q.cfg.Dir)
	if err != nil {
		return err
	}
	seen := map[string]bool{}
	for _, id := range ids {
		seen[id] = true
		retry := filepath.Join(q.cfg.Dir, "msg", id+".retry")
		_, statErr := os.Stat(retry)
		q.mu.Lock()
		m, known := q.items[id]
		busy := q.inflight[id]
		creating := q.creating[id]
		q.mu.Unlock()
		if creating {
			continue
		}
		if !known {
			if m, err = readMessage(q.cfg.Dir, id); err != nil {
				if atStart {
					// Every file in msg/ was complete and fsynced before
					// it got there, so this is damage, not a crash:
					// keep it aside for a person.
					q.log.Error("queue: unreadable message set aside as .bad", "msg_id", id, "err", err)
					for _, ext := range []string{".data", ".env"} {
						p := filepath.Join(q.cfg.Dir, "msg", id+ext)
						os.Rename(p, p+".bad") // the .env may not exist
					}
				}
				continue
			}
			q.mu.Lock()
			q.items[id] = m
			q.mu.Unlock()
		}
		if statErr == nil && !busy {
			q.mu.Lock()
			m.NextAttempt = q.now()
			q.mu.Unlock()
			os.Remove(retry)
		}
	}
	q.mu.Lock()
	for id, m := range q.items {
		if before[id] && !seen[id] && !q.inflight[id] && !q.creating[id] && m.jseg == nil {
			delete(q.items, id)
		}
	}
	q.mu.Unlock()
	q.dropMarked(marked)
	return nil
}

// dropMarked drops the journal messages `smarthost queue delete` marked
// (Spool.Delete). One being delivered is dropped at a later scan if it is
// still there; one in msg/ by then is removed from there.
func (q *Queue) dropMarked(ids []string) {
	for _, id := range ids {
		q.mu.Lock()
		m, known := q.items[id]
		busy := q.inflight[id]
		if known && !busy {
			q.inflight[id] = true // no worker may take it meanwhile
		}
		q.mu.Unlock()
		if busy {
			continue
		}
		if known {
			err := q.remove(m)
			q.mu.Lock()
			delete(q.inflight, id)
			if err == nil {
				delete(q.items, id)
			}
			q.mu.Unlock()
			if err != nil {
				q.log.Error("queue: delete", "msg_id", id, "err", err)
				continue
			}
			q.log.Info("queue: message deleted by request", "msg_id", id)
		}
		os.Remove(filepath.Join(q.cfg.Dir, "msg", id+".delete"))
	}
}

// removeOrphans drops envelopes without data: only remove() leaves them
// behind, when a crash interrupts it after the data went.
func (q *Queue) removeOrphans() {
	ents, _ := os.ReadDir(filepath.Join(q.cfg.Dir, "msg"))
	for _, e := range ents {
		id, ok := strings.CutSuffix(e.Name(), ".env")
		if !ok {
			continue
		}
		if _, err := os.Stat(filepath.Join(q.cfg.Dir, "msg", id+".data")); errors.Is(err, os.ErrNotExist) {
			q.log.Info("queue: envelope without data dropped", "msg_id", id)
			os.Remove(filepath.Join(q.cfg.Dir, "msg", e.Name()))
		}
	}
}

// Run delivers until ctx is done, then waits for the attempts in flight.
func (q *Queue) Run(ctx context.Context) error {
	work := make(chan *Message)
	var wg sync.WaitGroup
	for i := 0; i < q.cfg.Workers; i++ {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for m := range work {
				q.attempt(ctx, m)
			}
		}()
	}
	defer func() {
		close(work)
		wg.Wait()
	}()

	lastScan := q.now()
	for {
		if q.now().Sub(lastScan) >= q.cfg.Rescan {
			if err := q.rescan(false); err != nil {
				q.log.Error("queue: rescan", "err", err)
			}
			lastScan = q.now()
		}
		due, next := q.due()
		for _, m := range due {
			select {
			case work <- m:
			case <-ctx.Done():
				q.mu.Lock()
				delete(q.inflight, m.ID)
				q.mu.Unlock()
				return nil
			}
		}
		wait := q.cfg.Rescan
		if !next.IsZero() {
			wait = min(wait, next.Sub(q.now()))
		}
		if len(due) > 0 {
			continue // workers may have freed up; look again at once
		}
		t := time.NewTimer(max(wait, 10*time.Millisecond))
		select {
		case <-ctx.Done():
			t.Stop()
			return nil
		case <-q.wake:
		case <-t.C:
		}
		t.Stop()
	}
}

// due marks and returns the messages whose time has come, oldest first, and
// the time of the next one after them.
func (q *Queue) due() ([]*Message, time.Time) {
	q.mu.Lock()
	defer q.mu.Unlock()
	now := q.now()
	var due []*Message
	var next time.Time
	for id, m := range q.items {
		if q.inflight[id] {
			continue
		}
		if !m.NextAttempt.After(now) {
			due = append(due, m)
		} else if next.IsZero() || m.NextAttempt.Before(next) {
			next = m.NextAttempt
		}
	}
	sort.Slice(due, func(i, j int) bool { return due[i].NextAttempt.Before(due[j].NextAttempt) })
	for _, m := range due {
		q.inflight[m.ID] = true
	}
	return due, next
}

// attempt makes one delivery attempt and records its outcome durably.
func (q *Queue) attempt(ctx context.Context, m *Message) {
	defer func() {
		q.mu.Lock()
		delete(q.inflight, m.ID)
		q.mu.Unlock()
		q.kick() // its next attempt may be the earliest now
	}()
	// An administrator may have deleted it since it was scheduled (one in
	// the journal is dropped by dropMarked instead).
	if m.jseg == nil {
		if _, err := os.Stat(m.dataPath()); err != nil {
			q.forget(m)
			return
		}
	}
	pending := m.Pending()
	var errs []error
	if len(pending) > 0 {
		errs = q.d.Deliver(ctx, m)
		if len(errs) != len(pending) {
			err := fmt.Errorf("queue: deliverer gave %d outcomes for %d recipients", len(errs), len(pending))
			errs = make([]error, len(pending))
			for i := range errs {
				errs[i] = err
			}
		}
	}
	now := q.now()
	expired := now.Sub(m.Created) >= q.cfg.MaxAge
	var failed []Recipient
	q.mu.Lock()
	m.Attempts++
	i := 0
	for j := range m.Recipients {
		r := &m.Recipients[j]
		if r.Status != StatusPending {
			continue
		}
		err := errs[i]
		i++
		switch {
		case err == nil:
			r.Status, r.Error = StatusSent, ""
			q.log.Info("delivered", "msg_id", m.ID, "rcpt", r.Addr, "attempt", m.Attempts)
		case IsPermanent(err) || expired:
			r.Status, r.Error = StatusFailed, err.Error()
			if !IsPermanent(err) {
				r.Error = fmt.Sprintf("gave up after %s: %v", q.cfg.MaxAge, err)
			}
			failed = append(failed, *r)
			q.log.Warn("delivery failed", "msg_id", m.ID, "rcpt", r.Addr, "attempt", m.Attempts, "err", err)
		default:
			r.Error = err.Error()
			m.LastError = err.Error()
			q.log.Info("delivery deferred", "msg_id", m.ID, "rcpt", r.Addr, "attempt", m.Attempts, "err", err)
		}
	}
	m.NextAttempt = now.Add(q.cfg.Retry[min(m.Attempts, len(q.cfg.Retry))-1])
	done := len(m.Pending()) == 0
	q.mu.Unlock()

	if len(failed) > 0 && m.From != "" {
		if err := q.bounce(m, failed); err != nil {
			// The failure itself stays in the log and in `queue show` while
			// the message has other recipients pending.
			q.log.Error("queue: cannot queue bounce", "msg_id", m.ID, "err", err)
		}
	}
	if !done && m.From != "" && q.cfg.DelayWarning > 0 && !m.Warned && now.Sub(m.Created) >= q.cfg.DelayWarning {
		if err := q.warnDelay(m, m.PendingRecipients()); err != nil {
			q.log.Error("queue: cannot queue delay warning", "msg_id", m.ID, "err", err)
		} else {
			m.Warned = true // saved with the state below
		}
	}
	if done {
		if err := q.remove(m); err != nil {
			q.log.Error("queue: remove", "msg_id", m.ID, "err", err)
		}
		q.forget(m)
		return
	}
	if m.jseg != nil {
		// Retries may go on for days: out of the journal, whose files are
		// removed only once all their messages are done with.
		if err := q.spill(m); err != nil {
			q.log.Error("queue: save state", "msg_id", m.ID, "err", err)
		}
		return
	}
	if _, err := os.Stat(m.dataPath()); err != nil {
		q.forget(m) // deleted while we were delivering
		return
	}
	if err := q.writeEnv(m); err != nil {
		q.log.Error("queue: save state", "msg_id", m.ID, "err", err)
	}
}

func (q *Queue) forget(m *Message) {
	q.mu.Lock()
	delete(q.items, m.ID)
	q.mu.Unlock()
}
