package queue

import (
	"encoding/json"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"syscall"
	"time"
)

// Priority orders the messages waiting for one upstream's budget.
type Priority int

const (
	PriorityNormal Priority = iota
	PriorityHigh
	PriorityBulk
)

// ParsePriority reads high, normal (or "") and bulk.
func ParsePriority(s string) (Priority, error) {
	switch s {
	case "", "normal":
		return PriorityNormal, nil
	case "high":
		return PriorityHigh, nil
	case "bulk":
		return PriorityBulk, nil
	}
	return PriorityNormal, fmt.Errorf("priority %q: must be high, normal or bulk", s)
}

func (p Priority) String() string {
	return map[Priority]string{PriorityHigh: "high", PriorityNormal: "normal", PriorityBulk: "bulk"}[p]
}

// weight is a priority's share of a lane while several wait: of every 21
// messages released, 16 are high, 4 normal and 1 bulk; one with nothing
// waiting leaves its share to the others. So high goes first, and neither
// bulk nor high ever starves normal.
func (p Priority) weight() float64 {
	return map[Priority]float64{PriorityHigh: 16, PriorityNormal: 4, PriorityBulk: 1}[p]
}

// WaitError is the outcome for a recipient that the deliverer did not try:
// the upstream it goes through has no room for it now (its rate, its
// connections, a hold after it throttled, or the shared budget being out of
// reach). It is not an attempt: the message keeps its attempt count, and the
// time it waits does not count towards max_age. It waits in the lane of
// that budget, released in order of priority and, within one, by user in
// turn.
type WaitError struct {
	Lane     string // the budget waited for (an upstream's sending identity)
	Upstream string // the upstream's name, for people
	Reason   string // rate, connections, hold, backend
	// After is when the lane may be tried again.
	After    time.Duration
	Priority Priority
	// Width is how many of the lane's messages may be tried at once (at
	// least 1): the upstream's connections.
	Width int
}

func (e *WaitError) Error() string {
	return fmt.Sprintf("waiting for upstream %s (%s)", e.Upstream, e.Reason)
}

// State is how `smarthost queue list` says it: "waiting for upstream rate".
func (e *WaitError) State() string {
	switch e.Reason {
	case "hold":
		return "waiting for upstream hold to end"
	case "backend":
		return "waiting for the shared rate limiter"
	case "connections":
		return "waiting for an upstream connection"
	}
	return "waiting for upstream rate"
}

// IsWait reports whether err is a WaitError.
func IsWait(err error) bool {
	var w *WaitError
	return errors.As(err, &w)
}

// Laner is what a shaping Deliverer says before an attempt: the lane m
// would wait in if it waits (lane "": none) and its priority there. A
// message whose lane already has messages waiting joins them, in its
// place, rather than taking the budget from under them.
type Laner interface {
	Lane(m *Message) (lane string, p Priority)
}

// onlyWaits returns the first WaitError of errs when every outcome is nil
// or a WaitError and at least one is a WaitError: nothing was attempted
// that failed.
func onlyWaits(out []Outcome) *WaitError {
	var first *WaitError
	for _, o := range out {
		err := o.Err
		var w *WaitError
		switch {
		case err == nil:
		case errors.As(err, &w):
			if first == nil {
				first = w
			}
		default:
			return nil
		}
	}
	return first
}

// recordSent marks the recipients that were delivered in an attempt that
// otherwise only waited; it is not an attempt. It returns what became of
// them, for the log and the events.
func (m *Message) recordSent(out []Outcome) []fate {
	var fates []fate
	i := 0
	for j := range m.Recipients {
		r := &m.Recipients[j]
		if r.Status != StatusPending {
			continue
		}
		if out[i].Err == nil {
			r.Status, r.Error = StatusSent, ""
			// The attempt number its line carries is the next one's.
			fates = append(fates, fate{rcpt: *r, o: out[i], kind: EventDelivered, attempt: m.Attempts + 1})
		}
		i++
	}
	return fates
}

// wait parks m, whose attempt only waited for upstream budgets (no
// recipient failed): it is not an attempt. Recipients delivered meanwhile
// (through another route) are saved as such first. The message leaves
// the workers' hands and enters its lane under one lock, so that the
// lane cannot let it go while a worker still holds it.
func (q *Queue) wait(m *Message, out []Outcome, w *WaitError) {
	s := q.sched
	var sent []fate
	s.change(func() { sent = m.recordSent(out) })
	if len(sent) > 0 {
		q.tell(m, sent, q.now(), false)
		if err := q.save(m); err != nil {
			q.log.Error("queue: save state", "msg_id", m.ID, "err", err)
		}
	}
	s.park(m, w, q.now())
}

// keepWaited saves, as the queue stops, how long its waiting messages
// have waited, so that the time does not count towards max_age after a
// restart either; a wait under a minute is not worth a write.
func (q *Queue) keepWaited() {
	es := q.sched.flushLanes()
	now := q.now()
	for _, e := range es {
		if d := now.Sub(e.since); d >= time.Minute {
			e.m.Waited += d
			if err := q.save(e.m); err != nil {
				q.log.Error("queue: save state", "msg_id", e.m.ID, "err", err)
			}
		}
	}
}

// waitingFile lists, for `smarthost queue list`, the messages waiting in
// lanes: written by the running relay (at most once a second, when the
// lanes change), removed when none wait.
const waitingFile = "waiting.json"

// listWaiting writes the waiting list if the lanes changed and the last
// write was a second ago or more; it returns when it last wrote and
// whether a change is still to be written.
func (q *Queue) listWaiting(last time.Time) (time.Time, bool) {
	now := time.Now()
	if !q.sched.laneChanged() {
		return last, false
	}
	if now.Sub(last) < time.Second {
		return last, true
	}
	st, ok := q.sched.laneStatus(true)
	if !ok {
		return last, false
	}
	path := filepath.Join(q.cfg.Dir, waitingFile)
	if len(st) == 0 {
		os.Remove(path)
		return now, false
	}
	b, _ := json.Marshal(st)
	// Advisory, and rewritten within a second: no sync.
	if err := os.WriteFile(path+".tmp", b, 0o600); err == nil {
		os.Rename(path+".tmp", path)
	}
	return now, false
}

// laner is the deliverer's Laner, if it has one and the node is not
// handing its queue over.
func (q *Queue) laner() Laner {
	if q.handoff.Load() != nil {
		return nil
	}
	l, _ := q.d.(Laner)
	return l
}

// Lanes lists the messages waiting for an upstream's budget, by lane.
func (q *Queue) Lanes() []LaneStatus {
	st, _ := q.sched.laneStatus(false)
	return st
}

// Waiting is what a running relay says of a message waiting in a lane.
type Waiting struct {
	Upstream, Reason string
}

// State says it as `queue list` does.
func (w Waiting) State() string {
	return (&WaitError{Upstream: w.Upstream, Reason: w.Reason}).State() + " (" + w.Upstream + ")"
}

// Waiting returns the messages the running relay has waiting for an
// upstream's budget; none when no relay runs on the spool.
func (s *Spool) Waiting() (map[string]Waiting, error) {
	out := map[string]Waiting{}
	if !locked(filepath.Join(s.dir, "lock")) {
		return out, nil // a list left by a relay that stopped
	}
	b, err := os.ReadFile(filepath.Join(s.dir, waitingFile))
	if errors.Is(err, os.ErrNotExist) {
		return out, nil
	}
	if err != nil {
		return nil, err
	}
	var st []LaneStatus
	if err := json.Unmarshal(b, &st); err != nil {
		return nil, fmt.Errorf("queue: %s: %w", waitingFile, err)
	}
	for _, l := range st {
		for _, id := range l.IDs {
			out[id] = Waiting{Upstream: l.Upstream, Reason: l.Reason}
		}
	}
	return out, nil
}

// locked reports whether a process holds the lock file at path (a relay
// runs on the spool).
func locked(path string) bool {
	f, err := os.Open(path)
	if err != nil {
		return false
	}
	defer f.Close()
	if err := syscall.Flock(int(f.Fd()), syscall.LOCK_SH|syscall.LOCK_NB); err != nil {
		return true
	}
	syscall.Flock(int(f.Fd()), syscall.LOCK_UN)
	return false
}
