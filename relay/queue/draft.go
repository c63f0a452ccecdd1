package queue

import (
	"bufio"
	"bytes"
	"fmt"
	"os"
	"sync"
	"sync/atomic"
)

// newDraft starts a draft of message id: in memory, or with InlineMax < 0
// in a file.
func newDraft(q *Queue, id string) (*Draft, error) {
	d := &Draft{q: q, id: id}
	if q.cfg.InlineMax < 0 {
		return d, d.toFile()
	}
	d.buf, _ = q.drafts.bufs.Get().(*bytes.Buffer)
	if d.buf == nil {
		d.buf = &bytes.Buffer{}
	}
	return d, nil
}

// drafts is what the drafts of a queue share.
type drafts struct {
	// writers recycles the drafts' 32 KiB write buffers: at hundreds of
	// messages a second, that much garbage each is felt in the collector.
	writers sync.Pool
	bufs    sync.Pool // the drafts' memory buffers, likewise
	// inMemory is the bytes drafts hold in memory now (MemoryMax).
	inMemory atomic.Int64
}

// Draft is a message being received. It is owned by one goroutine. It is
// kept in memory up to Config.InlineMax, to be committed to the journal,
// and written to a file in tmp/ from there on.
type Draft struct {
	q        *Queue
	id       string
	buf      *bytes.Buffer // while in memory
	f        *os.File      // once in a file
	w        *bufio.Writer // most messages reach the file in one write
	size     int64
	inMemory int64 // bytes of buf counted in drafts.inMemory
}

// toFile moves the draft to a file in tmp/ and writes through it from now.
func (d *Draft) toFile() error {
	f, err := d.q.disk.create(d.q.files.tmpPath(d.id+".data"), os.O_WRONLY)
	if err != nil {
		return fmt.Errorf("queue: create draft: %w", err)
	}
	w, _ := d.q.drafts.writers.Get().(*bufio.Writer)
	if w == nil {
		w = bufio.NewWriterSize(f, 32<<10)
	}
	w.Reset(f)
	d.f, d.w = f, w
	if d.buf != nil {
		_, err = w.Write(d.buf.Bytes())
		d.releaseBuf()
	}
	return err
}

// ID is the queue ID the message will have.
func (d *Draft) ID() string { return d.id }

func (d *Draft) Write(p []byte) (int, error) {
	if d.buf != nil && !d.fitsInMemory(len(p)) {
		if err := d.toFile(); err != nil {
			return 0, err
		}
	}
	var n int
	var err error
	if d.buf != nil {
		n, err = d.buf.Write(p)
	} else {
		n, err = d.w.Write(p)
	}
	d.size += int64(n)
	if err != nil {
		err = fmt.Errorf("queue: write draft: %w", err)
	}
	return n, err
}

// fitsInMemory reports whether n more bytes may stay in memory: the draft stays
// within InlineMax and all drafts within MemoryMax. It counts them if so.
func (d *Draft) fitsInMemory(n int) bool {
	if int64(d.buf.Len()+n) > d.q.cfg.InlineMax {
		return false
	}
	if d.q.drafts.inMemory.Add(int64(n)) > d.q.cfg.MemoryMax {
		d.q.drafts.inMemory.Add(-int64(n))
		return false
	}
	d.inMemory += int64(n)
	return true
}

// Size is the number of bytes written so far.
func (d *Draft) Size() int64 { return d.size }

// Abort throws the draft away.
func (d *Draft) Abort() {
	d.releaseBuf()
	d.releaseWriter()
	if d.f != nil {
		d.f.Close()
		os.Remove(d.f.Name())
	}
}

// releaseWriter gives the write buffer back, once.
func (d *Draft) releaseWriter() {
	if d.w != nil {
		d.w.Reset(nil)
		d.q.drafts.writers.Put(d.w)
		d.w = nil
	}
}

// releaseBuf gives the memory buffer back, once; one grown by a large
// message is left to the collector.
func (d *Draft) releaseBuf() {
	if d.inMemory > 0 {
		d.q.drafts.inMemory.Add(-d.inMemory)
		d.inMemory = 0
	}
	if d.buf != nil {
		if int64(d.buf.Cap()) <= 2*d.q.cfg.InlineMax {
			d.buf.Reset()
			d.q.drafts.bufs.Put(d.buf)
		}
		d.buf = nil
	}
}

// Commit makes the draft a queued message: on return without error it is on
// disk, fsynced, and will be delivered even if the process dies right away.
func (d *Draft) Commit(env Envelope, prepend []byte) (string, error) {
	q := d.q
	now := q.now()
	m := &Message{ID: d.id, From: env.From, Class: env.Class, User: env.User, Ret: env.Ret, EnvID: env.EnvID,
		SMTPUTF8: env.SMTPUTF8, UTF8: env.UTF8Required, MessageID: env.MessageID, Client: env.Client,
		Prepend: string(prepend), Size: d.size, Created: now, NextAttempt: now, dir: q.cfg.Dir}
	for i, r := range env.To {
		rc := Recipient{Addr: r, Status: StatusPending}
		if i < len(env.Notify) {
			rc.Notify = env.Notify[i]
		}
		if i < len(env.ORcpt) {
			rc.ORcpt = env.ORcpt[i]
		}
		if i < len(env.ORcptType) && env.ORcptType[i] != "rfc822" {
			rc.ORcptType = env.ORcptType[i]
		}
		m.Recipients = append(m.Recipients, rc)
	}
	for _, a := range env.Archive {
		// NOTIFY=NEVER: an upstream that accepts the copy and fails later
		// must not bounce it to the sender either.
		m.Recipients = append(m.Recipients, Recipient{Addr: a.Addr, Status: StatusPending, Archive: true,
			Upstreams: a.Upstreams, Notify: []string{"NEVER"}})
	}
	if d.buf != nil {
		defer d.releaseBuf()
		if err := writeTrailer(d.buf, m); err != nil {
			return "", fmt.Errorf("queue: write draft: %w", err)
		}
		seg, off, err := q.journal.add(m.ID, d.buf.Bytes())
		if err != nil {
			return "", err
		}
		m.jseg, m.joff = seg, off
	} else if err := d.commitFile(m); err != nil {
		return "", err
	}
	q.accepted(m, env.DKIM)
	q.sched.add(m)
	return m.ID, nil
}

// accepted tells the observer of a message just committed.
func (q *Queue) accepted(m *Message, dkim []string) {
	if q.cfg.Observer == nil {
		return
	}
	e := m.event(EventAccepted, m.Created)
	e.Client, e.Size = m.Client, m.Size
	for _, r := range m.Recipients {
		e.Rcpts = append(e.Rcpts, r.Addr)
	}
	q.observe(e)
	if len(dkim) > 0 {
		s := m.event(EventSigned, m.Created)
		s.DKIM = dkim
		q.observe(s)
	}
}

// commitFile ends the draft's file with m's envelope and moves it to msg/,
// durably.
func (d *Draft) commitFile(m *Message) error {
	q := d.q
	err := writeTrailer(d.w, m)
	if err == nil {
		err = d.w.Flush()
	}
	d.releaseWriter()
	if err != nil {
		d.Abort()
		return fmt.Errorf("queue: write draft: %w", err)
	}
	if err := d.q.disk.fsync(d.f); err != nil {
		d.Abort()
		return fmt.Errorf("queue: fsync draft: %w", err)
	}
	if err := d.f.Close(); err != nil {
		d.Abort()
		return fmt.Errorf("queue: close draft: %w", err)
	}
	// From the rename on, a rescan could find the message before it is
	// added to the schedule: it must leave it to us.
	return q.sched.commit(m.ID, func() error { return q.files.commit(d.f.Name(), m) })
}
