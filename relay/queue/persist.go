package queue

import (
	"fmt"
	"io"
	"os"
)

// Where a message lives in the spool, from its commit to its removal: the
// journal for a small one, a file of its own in msg/ for the rest (and for
// any message whose delivery goes on after a first attempt). The queue's
// other files call these; these call the journal (journal.go), the files
// (msgfiles.go), the scheduler and the observer (event.go), and nothing
// back.

// commit stores the message of draft d durably and schedules it: a small
// one, still in memory, as a record of the journal; a large one by moving
// its file into msg/.
func (q *Queue) commit(d *Draft, env Envelope, prepend []byte) (string, error) {
	m := d.message(env, prepend, q.now(), q.cfg.Dir)
	rec, err := d.record(m)
	if err != nil {
		return "", err
	}
	if rec != nil {
		defer d.releaseBuf()
		seg, off, err := q.journal.add(m.ID, rec)
		if err != nil {
			return "", err
		}
		m.jseg, m.joff = seg, off
	} else if err := q.commitFile(d, m); err != nil {
		return "", err
	}
	q.accepted(m, env.DKIM)
	q.sched.add(m)
	return m.ID, nil
}

// commitFile finishes d's file with m's envelope and moves it into msg/.
func (q *Queue) commitFile(d *Draft, m *Message) error {
	name, err := d.finishFile(m)
	if err != nil {
		return err
	}
	// From the rename on, a rescan could find the message before it is
	// added to the schedule: it must leave it to us.
	return q.sched.commit(m.ID, func() error { return q.files.commit(name, m) })
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
			e := m.event(EventRetry, q.now())
			e.By = "smarthost queue retry"
			q.observe(e)
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
	d, err := q.drafts.inFile(m.ID)
	if err != nil {
		return err
	}
	if _, err := io.Copy(d.w, io.NewSectionReader(m.jseg.f, m.joff, m.Size)); err != nil {
		d.Abort()
		return fmt.Errorf("queue: move %s out of the journal: %w", m.ID, err)
	}
	seg := m.jseg
	m.jseg, m.saved = nil, false
	if err := q.commitFile(d, m); err != nil {
		m.jseg = seg
		return err
	}
	q.journal.done(seg, m.ID)
	return nil
}
