package queue

import (
	"bufio"
	"bytes"
	"crypto/rand"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"sort"
	"strconv"
	"strings"
	"sync"
	"time"
)

// The spool is three folders under Config.Dir:
//
//	journal/  messages (up to Config.InlineMax) that await their first
//	          delivery attempt, many to a file (journal.go)
//	tmp/      drafts being written to a file; anything left here at start
//	          is garbage
//	msg/      ID.data: the message as received, then its envelope (a
//	          trailer, below); ID.env, once delivery has changed the
//	          envelope: the current one, which wins over the trailer
//
// A message is committed to the journal when it is small, or else to
// msg/: ID.data is renamed there only when complete and fsynced, and it is
// removed before ID.env, so an .env always has its data. A journal message
// still pending after its first attempt moves to msg/ as ID.data with its
// state at that time as the trailer. A message in both places (a crash
// between the move and the journal's record of it) is the one in msg/.
//
// The trailer is "\n", the envelope as one line of JSON, "\n", and a
// footer of fixed length that gives the trailer's length:
//
//	<data><LF><JSON><LF>0000000123 smarthost-envelope<LF>
const footerTag = " smarthost-envelope\n"

const footerLen int64 = 10 + int64(len(footerTag))

// Status of one recipient.
const (
	StatusPending = "pending"
	StatusSent    = "sent"
	StatusFailed  = "failed"
)

// Recipient is one envelope recipient and what became of it.
type Recipient struct {
	Addr   string   `json:"addr"`
	Status string   `json:"status"`
	Error  string   `json:"error,omitempty"`
	Notify []string `json:"notify,omitempty"` // DSN NOTIFY (RFC 3461)
	ORcpt  string   `json:"orcpt,omitempty"`  // DSN ORCPT address
	// ORcptType is ORCPT's address type: "utf-8" (RFC 6533), or "" for
	// rfc822 (also in spools from before it was kept).
	ORcptType string `json:"orcpt_type,omitempty"`
}

// Envelope is what a message is committed with.
type Envelope struct {
	From   string
	To     []string
	Class  string     // the submitter's rate-limit class, for routes
	Ret    string     // DSN RET: FULL or HDRS
	EnvID  string     // DSN ENVID
	Notify [][]string // DSN NOTIFY per recipient of To (nil: none given)
	ORcpt  []string   // DSN ORCPT per recipient of To
	// ORcptType per recipient of To: "utf-8", or "rfc822" or "".
	ORcptType []string
	// SMTPUTF8: the client sent MAIL ... SMTPUTF8 (RFC 6531), which goes
	// upstream with the message. UTF8Required: the message needs it (a
	// UTF-8 address or header); one that does not may also go to an
	// upstream without SMTPUTF8.
	SMTPUTF8, UTF8Required bool
}

// Message is one spooled message.
type Message struct {
	ID          string      `json:"id"`
	From        string      `json:"from"` // "" for a bounce
	Class       string      `json:"class,omitempty"`
	Ret         string      `json:"ret,omitempty"`
	EnvID       string      `json:"envid,omitempty"`
	SMTPUTF8    bool        `json:"smtputf8,omitempty"`      // see Envelope
	UTF8        bool        `json:"utf8_required,omitempty"` // Envelope.UTF8Required
	Recipients  []Recipient `json:"recipients"`
	Prepend     string      `json:"prepend"` // header fields sent before the data
	Size        int64       `json:"size"`    // of the data file
	Created     time.Time   `json:"created"`
	Attempts    int         `json:"attempts"`
	NextAttempt time.Time   `json:"next_attempt"`
	LastError   string      `json:"last_error,omitempty"`
	Warned      bool        `json:"warned,omitempty"` // a delay warning was sent

	dir   string
	saved bool // an ID.env may exist: remove() must look for one
	// In the journal: the file and the offset of the data; nil once the
	// message is in msg/.
	jseg *segment
	joff int64
}

// PendingRecipients are the recipients still to be delivered, in envelope
// order, with their DSN parameters.
func (m *Message) PendingRecipients() []Recipient {
	var p []Recipient
	for _, r := range m.Recipients {
		if r.Status == StatusPending {
			p = append(p, r)
		}
	}
	return p
}

// Pending lists the recipients still to be delivered, in envelope order.
func (m *Message) Pending() []string {
	var p []string
	for _, r := range m.Recipients {
		if r.Status == StatusPending {
			p = append(p, r.Addr)
		}
	}
	return p
}

// Open returns the message as it is to be sent: the prepended header fields
// and then the data, byte for byte.
func (m *Message) Open() (io.ReadCloser, error) {
	if m.jseg != nil {
		return io.NopCloser(io.MultiReader(strings.NewReader(m.Prepend), io.NewSectionReader(m.jseg.f, m.joff, m.Size))), nil
	}
	f, err := os.Open(m.dataPath())
	if err != nil {
		return nil, fmt.Errorf("queue: open %s: %w", m.ID, err)
	}
	return struct {
		io.Reader
		io.Closer
	}{io.MultiReader(strings.NewReader(m.Prepend), io.LimitReader(f, m.Size)), f}, nil
}

func (m *Message) dataPath() string { return filepath.Join(m.dir, "msg", m.ID+".data") }
func (m *Message) envPath() string  { return filepath.Join(m.dir, "msg", m.ID+".env") }

func newID() string {
	var b [10]byte
	if _, err := rand.Read(b[:]); err != nil {
		panic("queue: no randomness: " + err.Error())
	}
	return strings.ToUpper(hex.EncodeToString(b[:]))
}

func validID(id string) bool {
	if len(id) != 20 {
		return false
	}
	_, err := hex.DecodeString(id)
	return err == nil
}

// Draft is a message being received. It is owned by one goroutine. It is
// kept in memory up to Config.InlineMax, to be committed to the journal,
// and written to a file in tmp/ from there on.
type Draft struct {
	q    *Queue
	id   string
	buf  *bytes.Buffer // while in memory
	f    *os.File      // once in a file
	w    *bufio.Writer // most messages reach the file in one write
	size int64
}

// Create starts a draft.
func (q *Queue) Create() (*Draft, error) {
	d := &Draft{q: q, id: newID()}
	if q.cfg.InlineMax < 0 {
		return d, d.toFile()
	}
	d.buf, _ = q.bufs.Get().(*bytes.Buffer)
	if d.buf == nil {
		d.buf = &bytes.Buffer{}
	}
	return d, nil
}

// toFile moves the draft to a file in tmp/ and writes through it from now.
func (d *Draft) toFile() error {
	f, err := os.OpenFile(filepath.Join(d.q.cfg.Dir, "tmp", d.id+".data"), os.O_CREATE|os.O_EXCL|os.O_WRONLY, 0o600)
	if err != nil {
		return fmt.Errorf("queue: create draft: %w", err)
	}
	w, _ := d.q.writers.Get().(*bufio.Writer)
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
	if d.buf != nil && int64(d.buf.Len()+len(p)) > d.q.cfg.InlineMax {
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

// Size is the number of bytes written so far.
func (d *Draft) Size() int64 { return d.size }

// Abort throws the draft away.
func (d *Draft) Abort() {
	d.releaseBuf()
	d.release()
	if d.f != nil {
		d.f.Close()
		os.Remove(d.f.Name())
	}
}

// release gives the write buffer back, once.
func (d *Draft) release() {
	if d.w != nil {
		d.w.Reset(nil)
		d.q.writers.Put(d.w)
		d.w = nil
	}
}

// releaseBuf gives the memory buffer back, once; one grown by a large
// message is left to the collector.
func (d *Draft) releaseBuf() {
	if d.buf != nil {
		if int64(d.buf.Cap()) <= 2*d.q.cfg.InlineMax {
			d.buf.Reset()
			d.q.bufs.Put(d.buf)
		}
		d.buf = nil
	}
}

// Commit makes the draft a queued message: on return without error it is on
// disk, fsynced, and will be delivered even if the process dies right away.
func (d *Draft) Commit(env Envelope, prepend []byte) (string, error) {
	q := d.q
	now := q.now()
	m := &Message{ID: d.id, From: env.From, Class: env.Class, Ret: env.Ret, EnvID: env.EnvID,
		SMTPUTF8: env.SMTPUTF8, UTF8: env.UTF8Required,
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
		q.add(m)
		return m.ID, nil
	}
	if err := d.commitFile(m); err != nil {
		return "", err
	}
	q.add(m)
	return m.ID, nil
}

// commitFile ends the draft's file with m's envelope and moves it to msg/,
// durably.
func (d *Draft) commitFile(m *Message) error {
	q := d.q
	err := writeTrailer(d.w, m)
	if err == nil {
		err = d.w.Flush()
	}
	d.release()
	if err != nil {
		d.Abort()
		return fmt.Errorf("queue: write draft: %w", err)
	}
	if err := d.f.Sync(); err != nil {
		d.Abort()
		return fmt.Errorf("queue: fsync draft: %w", err)
	}
	if err := d.f.Close(); err != nil {
		d.Abort()
		return fmt.Errorf("queue: close draft: %w", err)
	}
	// From the rename on, a rescan could find the message before add()
	// below: it must leave it to us.
	q.mu.Lock()
	q.creating[m.ID] = true
	q.mu.Unlock()
	defer func() {
		q.mu.Lock()
		delete(q.creating, m.ID)
		q.mu.Unlock()
	}()
	err = os.Rename(d.f.Name(), m.dataPath())
	if err != nil {
		os.Remove(d.f.Name())
		return fmt.Errorf("queue: commit: %w", err)
	}
	if err := q.dirSync.sync(); err != nil {
		os.Remove(m.dataPath())
		return fmt.Errorf("queue: commit: fsync spool: %w", err)
	}
	return nil
}

// spill moves a journal message to msg/, with its state as of now as the
// trailer, and tells the journal it is done with it there.
func (q *Queue) spill(m *Message) error {
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

// writeTrailer appends m's envelope to its data (see the spool's layout).
func writeTrailer(w io.Writer, m *Message) error {
	b, err := json.Marshal(m)
	if err != nil {
		return err
	}
	_, err = fmt.Fprintf(w, "\n%s\n%010d%s", b, len(b)+2, footerTag)
	return err
}

// readTrailer reads the envelope from the end of a message's data (size
// bytes in all, trailer included).
func readTrailer(f io.ReaderAt, size int64, id string) (*Message, error) {
	var foot [footerLen]byte
	if size < footerLen {
		return nil, fmt.Errorf("queue: %s.data has no envelope", id)
	}
	if _, err := f.ReadAt(foot[:], size-footerLen); err != nil {
		return nil, fmt.Errorf("queue: read %s.data: %w", id, err)
	}
	n, err := strconv.ParseInt(string(foot[:10]), 10, 64)
	if err != nil || string(foot[10:]) != footerTag || n < 2 || n > size-footerLen {
		return nil, fmt.Errorf("queue: %s.data has no envelope", id)
	}
	b := make([]byte, n)
	if _, err := f.ReadAt(b, size-footerLen-n); err != nil {
		return nil, fmt.Errorf("queue: read %s.data: %w", id, err)
	}
	if b[0] != '\n' || b[n-1] != '\n' {
		return nil, fmt.Errorf("queue: %s.data has no envelope", id)
	}
	m := &Message{}
	if err := json.Unmarshal(b[1:n-1], m); err != nil {
		return nil, fmt.Errorf("queue: decode %s.data: %w", id, err)
	}
	if m.Size != size-footerLen-n {
		return nil, fmt.Errorf("queue: %s.data: envelope says %d bytes of data, file has %d", id, m.Size, size-footerLen-n)
	}
	return m, nil
}

// writeEnv replaces m's envelope file atomically and durably.
func (q *Queue) writeEnv(m *Message) error {
	b, err := json.MarshalIndent(m, "", "  ")
	if err != nil {
		return fmt.Errorf("queue: encode %s: %w", m.ID, err)
	}
	tmp := filepath.Join(q.cfg.Dir, "tmp", m.ID+".env")
	m.saved = true
	if err := writeFileSync(tmp, b, os.O_TRUNC); err != nil {
		return fmt.Errorf("queue: write envelope: %w", err)
	}
	if err := os.Rename(tmp, m.envPath()); err != nil {
		os.Remove(tmp)
		return fmt.Errorf("queue: commit envelope: %w", err)
	}
	if err := q.dirSync.sync(); err != nil {
		return fmt.Errorf("queue: fsync spool: %w", err)
	}
	return nil
}

func writeFileSync(path string, b []byte, flag int) error {
	f, err := os.OpenFile(path, os.O_CREATE|os.O_WRONLY|flag, 0o600)
	if err != nil {
		return err
	}
	if _, err := f.Write(b); err != nil {
		f.Close()
		os.Remove(path)
		return err
	}
	if err := f.Sync(); err != nil {
		f.Close()
		os.Remove(path)
		return err
	}
	return f.Close()
}

// groupSync fsyncs one folder for many callers at once: each caller waits
// for a sync that began after it called, and concurrent callers share one.
// This is group commit: under load one fsync makes many renames durable.
type groupSync struct {
	dir       string
	mu        sync.Mutex
	cond      *sync.Cond
	running   bool
	started   uint64 // syncs begun
	completed uint64 // the last sync finished
	err       error  // of that sync
}

func newGroupSync(dir string) *groupSync {
	g := &groupSync{dir: dir}
	g.cond = sync.NewCond(&g.mu)
	return g
}

func (g *groupSync) sync() error {
	g.mu.Lock()
	defer g.mu.Unlock()
	target := g.started + 1 // the first sync that can begin after now
	for g.completed < target {
		if g.running {
			g.cond.Wait()
			continue
		}
		g.running = true
		g.started++
		gen := g.started
		g.mu.Unlock()
		err := syncDir(g.dir)
		g.mu.Lock()
		g.running, g.completed, g.err = false, gen, err
		g.cond.Broadcast()
	}
	return g.err
}

func syncDir(dir string) error {
	d, err := os.Open(dir)
	if err != nil {
		return err
	}
	defer d.Close()
	return d.Sync()
}

// remove deletes a message, data first: an envelope alone is dropped at the
// next start, whereas data alone would be its first envelope again and
// deliver to everyone once more. Neither removal is synced: after a crash
// the message may be back whole (sent again: the one duplicate we allow).
// Waiting for a folder sync here halved delivery throughput
// (docs/benchmarks.md).
func (q *Queue) remove(m *Message) error {
	if m.jseg != nil {
		q.journal.done(m.jseg, m.ID)
		m.jseg = nil
		return nil
	}
	if err := os.Remove(m.dataPath()); err != nil && !errors.Is(err, os.ErrNotExist) {
		return fmt.Errorf("queue: remove %s: %w", m.ID, err)
	}
	if m.saved {
		os.Remove(m.envPath())
	}
	return nil
}

// readMessage loads a committed message: its current envelope if delivery
// has saved one, or else the first one, from the data's trailer.
func readMessage(dir, id string) (*Message, error) {
	b, err := os.ReadFile(filepath.Join(dir, "msg", id+".env"))
	var m *Message
	switch {
	case err == nil:
		m = &Message{saved: true}
		if err := json.Unmarshal(b, m); err != nil {
			return nil, fmt.Errorf("queue: decode %s.env: %w", id, err)
		}
	case errors.Is(err, os.ErrNotExist):
		f, err := os.Open(filepath.Join(dir, "msg", id+".data"))
		if err != nil {
			return nil, err
		}
		defer f.Close()
		st, err := f.Stat()
		if err != nil {
			return nil, err
		}
		if m, err = readTrailer(f, st.Size(), id); err != nil {
			return nil, err
		}
	default:
		return nil, err
	}
	if m.ID != id {
		return nil, fmt.Errorf("queue: the envelope of %s names message %q", id, m.ID)
	}
	m.dir = dir
	return m, nil
}

// scan lists the IDs of the messages in msg/, and of the journal messages
// marked for deletion there (Spool.Delete).
func scan(dir string) (ids, marked []string, err error) {
	ents, err := os.ReadDir(filepath.Join(dir, "msg"))
	if err != nil {
		return nil, nil, fmt.Errorf("queue: read spool: %w", err)
	}
	for _, e := range ents {
		if id, ok := strings.CutSuffix(e.Name(), ".data"); ok && validID(id) {
			ids = append(ids, id)
		} else if id, ok := strings.CutSuffix(e.Name(), ".delete"); ok && validID(id) {
			marked = append(marked, id)
		}
	}
	return ids, marked, nil
}

// Spool is read-only and administrative access to a spool folder, for the
// `smarthost queue` command; it works whether or not a server is running.
type Spool struct{ dir string }

// OpenSpool opens the spool at dir for inspection.
func OpenSpool(dir string) (*Spool, error) {
	if _, err := os.Stat(filepath.Join(dir, "msg")); err != nil {
		return nil, fmt.Errorf("queue: %s is not a spool: %w", dir, err)
	}
	return &Spool{dir: dir}, nil
}

// inMsg reports whether message id has a file in msg/.
func inMsg(dir, id string) bool {
	_, err := os.Stat(filepath.Join(dir, "msg", id+".data"))
	return err == nil
}

// deleteMarked reports whether message id, in the journal, is to be
// dropped (Spool.Delete).
func deleteMarked(dir, id string) bool {
	_, err := os.Stat(filepath.Join(dir, "msg", id+".delete"))
	return err == nil
}

// journal reads the messages waiting in the journal, but for those in
// msg/ already. The journal's files stay open for the Spool's life, which
// is a command's.
func (s *Spool) journal() ([]*Message, error) {
	_, ms, err := loadSegments(filepath.Join(s.dir, "journal"), os.O_RDONLY, func(id string) bool {
		return inMsg(s.dir, id) || deleteMarked(s.dir, id)
	})
	if errors.Is(err, os.ErrNotExist) {
		return nil, nil // a spool from before the journal
	}
	for _, m := range ms {
		m.dir = s.dir
	}
	return ms, err
}

// List returns every queued message, oldest first.
func (s *Spool) List() ([]*Message, error) {
	ids, _, err := scan(s.dir)
	if err != nil {
		return nil, err
	}
	var ms []*Message
	for _, id := range ids {
		m, err := readMessage(s.dir, id)
		if err != nil {
			continue // delivered or deleted since the scan
		}
		ms = append(ms, m)
	}
	js, err := s.journal()
	if err != nil {
		return nil, err
	}
	ms = append(ms, js...)
	sort.Slice(ms, func(i, j int) bool { return ms[i].Created.Before(ms[j].Created) })
	return ms, nil
}

// find returns message id, from msg/ or the journal.
func (s *Spool) find(id string) (*Message, error) {
	if !validID(id) {
		return nil, fmt.Errorf("queue: %q is not a queue ID", id)
	}
	m, err := readMessage(s.dir, id)
	if err == nil {
		return m, nil
	}
	js, jerr := s.journal()
	if jerr != nil {
		return nil, jerr
	}
	for _, m := range js {
		if m.ID == id {
			return m, nil
		}
	}
	return nil, fmt.Errorf("queue: no message %s: %w", id, err)
}

// Show returns one message's state and its content as it will be sent.
func (s *Spool) Show(id string) (*Message, []byte, error) {
	m, err := s.find(id)
	if err != nil {
		return nil, nil, err
	}
	r, err := m.Open()
	if err != nil {
		return nil, nil, err
	}
	defer r.Close()
	var b bytes.Buffer
	_, err = io.Copy(&b, r)
	return m, b.Bytes(), err
}

// Retry asks for a delivery attempt now. A running server sees the request
// at its next spool scan. A message in the journal awaits its first
// attempt, which is always due at once.
func (s *Spool) Retry(id string) error {
	m, err := s.find(id)
	if err != nil || m.jseg != nil {
		return err
	}
	return writeFileSync(filepath.Join(s.dir, "msg", id+".retry"), nil, os.O_TRUNC)
}

// Delete removes a message without a bounce. One in the journal, which
// only the server writes, is marked for the server to drop (at its next
// spool scan, or at start).
func (s *Spool) Delete(id string) error {
	if !validID(id) {
		return fmt.Errorf("queue: %q is not a queue ID", id)
	}
	msg := filepath.Join(s.dir, "msg")
	if err := os.Remove(filepath.Join(msg, id+".data")); err != nil {
		m, ferr := s.find(id)
		if ferr != nil {
			return ferr
		}
		if m.jseg == nil {
			return fmt.Errorf("queue: no message %s: %w", id, err)
		}
		if err := writeFileSync(filepath.Join(msg, id+".delete"), nil, os.O_TRUNC); err != nil {
			return fmt.Errorf("queue: mark %s deleted: %w", id, err)
		}
		return syncDir(msg)
	}
	os.Remove(filepath.Join(msg, id+".env"))
	os.Remove(filepath.Join(msg, id+".retry"))
	return syncDir(msg)
}
