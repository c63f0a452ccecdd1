package queue

import (
	"bufio"
	"bytes"
	"fmt"
	"os"
	"sync"
	"sync/atomic"
	"time"
)

// drafts is what the drafts of a queue share, and where they go.
type drafts struct {
	inlineMax int64 // Config.InlineMax
	memoryMax int64 // Config.MemoryMax
	disk      disk
	files     *msgFiles // their files are in its tmp/
	// writers recycles the drafts' 32 KiB write buffers: at hundreds of
	// messages a second, that much garbage each is felt in the collector.
	writers sync.Pool
	bufs    sync.Pool // the drafts' memory buffers, likewise
	// inMemory is the bytes drafts hold in memory now (MemoryMax).
	inMemory atomic.Int64
}

// start starts a draft of message id: in memory, or with InlineMax < 0
// in a file.
func (ds *drafts) start(id string) (*Draft, error) {
	d := &Draft{ds: ds, id: id}
	if ds.inlineMax < 0 {
		return d, d.toFile()
	}
	d.buf, _ = ds.bufs.Get().(*bytes.Buffer)
	if d.buf == nil {
		d.buf = &bytes.Buffer{}
	}
	return d, nil
}

// inFile starts a draft of message id in a file.
func (ds *drafts) inFile(id string) (*Draft, error) {
	d := &Draft{ds: ds, id: id}
	return d, d.toFile()
}

// Draft is a message being received. It is owned by one goroutine. It is
// kept in memory up to Config.InlineMax, to be committed to the journal,
// and written to a file in tmp/ from there on.
type Draft struct {
	ds       *drafts
	q        *Queue // where Commit queues it; nothing else uses it
	id       string
	buf      *bytes.Buffer // while in memory
	f        *os.File      // once in a file
	w        *bufio.Writer // most messages reach the file in one write
	size     int64
	inMemory int64 // bytes of buf counted in drafts.inMemory
}

// toFile moves the draft to a file in tmp/ and writes through it from now.
func (d *Draft) toFile() error {
	f, err := d.ds.disk.create(d.ds.files.tmpPath(d.id+".data"), os.O_WRONLY)
	if err != nil {
		return fmt.Errorf("queue: create draft: %w", err)
	}
	w, _ := d.ds.writers.Get().(*bufio.Writer)
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
	if int64(d.buf.Len()+n) > d.ds.inlineMax {
		return false
	}
	if d.ds.inMemory.Add(int64(n)) > d.ds.memoryMax {
		d.ds.inMemory.Add(-int64(n))
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
		d.ds.writers.Put(d.w)
		d.w = nil
	}
}

// releaseBuf gives the memory buffer back, once; one grown by a large
// message is left to the collector.
func (d *Draft) releaseBuf() {
	if d.inMemory > 0 {
		d.ds.inMemory.Add(-d.inMemory)
		d.inMemory = 0
	}
	if d.buf != nil {
		if int64(d.buf.Cap()) <= 2*d.ds.inlineMax {
			d.buf.Reset()
			d.ds.bufs.Put(d.buf)
		}
		d.buf = nil
	}
}

// Commit makes the draft a queued message: on return without error it is on
// disk, fsynced, and will be delivered even if the process dies right away.
func (d *Draft) Commit(env Envelope, prepend []byte) (string, error) {
	return d.q.commit(d, env, prepend)
}

// message is the message the draft becomes, with env's recipients and
// archive copies, arriving now.
func (d *Draft) message(env Envelope, prepend []byte, now time.Time, dir string) *Message {
	m := &Message{ID: d.id, From: env.From, Class: env.Class, User: env.User, Ret: env.Ret, EnvID: env.EnvID,
		SMTPUTF8: env.SMTPUTF8, UTF8: env.UTF8Required, MessageID: env.MessageID, Client: env.Client,
		Prepend: string(prepend), Size: d.size, Created: now, NextAttempt: now, dir: dir}
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
	return m
}

// record returns what the journal takes of the draft, still in memory:
// its bytes with m's envelope as trailer. It is nil for a draft in a file.
func (d *Draft) record(m *Message) ([]byte, error) {
	if d.buf == nil {
		return nil, nil
	}
	if err := writeTrailer(d.buf, m); err != nil {
		return nil, fmt.Errorf("queue: write draft: %w", err)
	}
	return d.buf.Bytes(), nil
}

// finishFile ends the draft's file with m's envelope, fsynced and closed,
// and returns its name, for the queue to move into msg/.
func (d *Draft) finishFile(m *Message) (string, error) {
	err := writeTrailer(d.w, m)
	if err == nil {
		err = d.w.Flush()
	}
	d.releaseWriter()
	if err != nil {
		d.Abort()
		return "", fmt.Errorf("queue: write draft: %w", err)
	}
	if err := d.ds.disk.fsync(d.f); err != nil {
		d.Abort()
		return "", fmt.Errorf("queue: fsync draft: %w", err)
	}
	if err := d.f.Close(); err != nil {
		d.Abort()
		return "", fmt.Errorf("queue: close draft: %w", err)
	}
	return d.f.Name(), nil
}
