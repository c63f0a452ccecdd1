package queue

import (
	"encoding/json"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"sync"
)

// msgFiles is the part of the spool where messages have files of their own:
// msg/ (ID.data, ID.env, and the requests of `smarthost queue`: ID.retry,
// ID.delete) and tmp/ (drafts, and envelopes being written). See format.go
// for what the files hold and why they are safe to crash in.
type msgFiles struct {
	dir  string     // the spool's
	disk disk       // creates, renames and syncs
	sync *groupSync // makes renames in msg/ durable, many at a time
}

func newMsgFiles(dir string, dsk disk) *msgFiles {
	return &msgFiles{dir: dir, disk: dsk, sync: newGroupSync(filepath.Join(dir, "msg"), dsk)}
}

func (f *msgFiles) msgPath(name string) string { return filepath.Join(f.dir, "msg", name) }
func (f *msgFiles) tmpPath(name string) string { return filepath.Join(f.dir, "tmp", name) }

// clean removes what the last process left unfinished: drafts in tmp/
// (never acknowledged), and envelopes in msg/ without their data (only
// remove leaves those, when a crash interrupts it after the data went).
func (f *msgFiles) clean(log func(string, ...any)) {
	tmp, _ := os.ReadDir(filepath.Join(f.dir, "tmp"))
	for _, e := range tmp {
		os.Remove(f.tmpPath(e.Name()))
	}
	ents, _ := os.ReadDir(filepath.Join(f.dir, "msg"))
	for _, e := range ents {
		id, ok := strings.CutSuffix(e.Name(), ".env")
		if !ok {
			continue
		}
		if _, err := os.Stat(f.msgPath(id + ".data")); errors.Is(err, os.ErrNotExist) {
			log("queue: envelope without data dropped", "msg_id", id)
			os.Remove(f.msgPath(e.Name()))
		}
	}
}

// commit moves a complete, fsynced draft file into msg/ as m's data and
// waits for a sync of the folder that began after the rename.
func (f *msgFiles) commit(tmp string, m *Message) error {
	if err := f.disk.rename(tmp, m.dataPath()); err != nil {
		os.Remove(tmp)
		return fmt.Errorf("queue: commit: %w", err)
	}
	if err := f.sync.sync(); err != nil {
		os.Remove(m.dataPath())
		return fmt.Errorf("queue: commit: fsync spool: %w", err)
	}
	return nil
}

// writeEnv replaces m's envelope file atomically and durably.
func (f *msgFiles) writeEnv(m *Message) error {
	b, err := json.MarshalIndent(m, "", "  ")
	if err != nil {
		return fmt.Errorf("queue: encode %s: %w", m.ID, err)
	}
	tmp := f.tmpPath(m.ID + ".env")
	m.saved = true
	if err := writeFileSync(f.disk, tmp, b, os.O_TRUNC); err != nil {
		return fmt.Errorf("queue: write envelope: %w", err)
	}
	if err := f.disk.rename(tmp, m.envPath()); err != nil {
		os.Remove(tmp)
		return fmt.Errorf("queue: commit envelope: %w", err)
	}
	if err := f.sync.sync(); err != nil {
		return fmt.Errorf("queue: fsync spool: %w", err)
	}
	return nil
}

// remove deletes a message's files, data first: an envelope alone is dropped at the
// next start, whereas data alone would be its first envelope again and
// deliver to everyone once more. Neither removal is synced: after a crash
// the message may be back whole (sent again: the one duplicate we allow).
// Waiting for a folder sync here halved delivery throughput
// (docs/benchmarks.md).
func (f *msgFiles) remove(m *Message) error {
	if err := os.Remove(m.dataPath()); err != nil && !errors.Is(err, os.ErrNotExist) {
		return fmt.Errorf("queue: remove %s: %w", m.ID, err)
	}
	if m.saved {
		os.Remove(m.envPath())
	}
	return nil
}

// read loads a committed message: its current envelope if delivery has
// saved one, or else the first one, from the data's trailer.
func (f *msgFiles) read(id string) (*Message, error) {
	b, err := os.ReadFile(f.msgPath(id + ".env"))
	var m *Message
	switch {
	case err == nil:
		m = &Message{saved: true}
		if err := json.Unmarshal(b, m); err != nil {
			return nil, fmt.Errorf("queue: decode %s.env: %w", id, err)
		}
	case errors.Is(err, os.ErrNotExist):
		data, err := os.Open(f.msgPath(id + ".data"))
		if err != nil {
			return nil, err
		}
		defer data.Close()
		st, err := data.Stat()
		if err != nil {
			return nil, err
		}
		if m, err = readTrailer(data, st.Size(), id); err != nil {
			return nil, err
		}
	default:
		return nil, err
	}
	if m.ID != id {
		return nil, fmt.Errorf("queue: the envelope of %s names message %q", id, m.ID)
	}
	m.dir = f.dir
	return m, nil
}

// scan lists the IDs of the messages in msg/, and of the journal messages
// marked for deletion there (Spool.Delete).
func (f *msgFiles) scan() (ids, marked []string, err error) {
	ents, err := os.ReadDir(filepath.Join(f.dir, "msg"))
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

// has reports whether message id has a file in msg/.
func (f *msgFiles) has(id string) bool {
	_, err := os.Stat(f.msgPath(id + ".data"))
	return err == nil
}

// marked reports whether message id, in the journal, is to be
// dropped (Spool.Delete).
func (f *msgFiles) marked(id string) bool {
	_, err := os.Stat(f.msgPath(id + ".delete"))
	return err == nil
}

// groupSync fsyncs one folder for many callers at once: each caller waits
// for a sync that began after it called, and concurrent callers share one.
// This is group commit: under load one fsync makes many renames durable.
type groupSync struct {
	dir       string
	disk      disk
	mu        sync.Mutex
	cond      *sync.Cond
	running   bool
	started   uint64 // syncs begun
	completed uint64 // the last sync finished
	err       error  // of that sync
	waiting   int    // callers waiting for a sync under way (a test reads it)
}

func newGroupSync(dir string, dsk disk) *groupSync {
	g := &groupSync{dir: dir, disk: dsk}
	g.cond = sync.NewCond(&g.mu)
	return g
}

func (g *groupSync) sync() error {
	g.mu.Lock()
	defer g.mu.Unlock()
	target := g.started + 1 // the first sync that can begin after now
	for g.completed < target {
		if g.running {
			g.waiting++
			g.cond.Wait()
			g.waiting--
			continue
		}
		g.running = true
		g.started++
		gen := g.started
		g.mu.Unlock()
		err := g.disk.syncDir(g.dir)
		g.mu.Lock()
		g.running, g.completed, g.err = false, gen, err
		g.cond.Broadcast()
	}
	return g.err
}
