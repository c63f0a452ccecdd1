package queue

import (
	"bytes"
	"errors"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"sort"
)

// Spool is read-only and administrative access to a spool folder, for the
// `smarthost queue` command; it works whether or not a server is running.
type Spool struct {
	dir string
	f   *msgFiles
}

// OpenSpool opens the spool at dir for inspection.
func OpenSpool(dir string) (*Spool, error) {
	if _, err := os.Stat(filepath.Join(dir, "msg")); err != nil {
		return nil, fmt.Errorf("queue: %s is not a spool: %w", dir, err)
	}
	return &Spool{dir: dir, f: newMsgFiles(dir, osDisk{})}, nil
}

// journal reads the messages waiting in the journal, but for those in
// msg/ already. The journal's files stay open for the Spool's life, which
// is a command's.
func (s *Spool) journal() ([]*Message, error) {
	_, ms, err := loadSegments(filepath.Join(s.dir, "journal"), os.O_RDONLY, func(id string) bool {
		return s.f.has(id) || s.f.marked(id)
	})
	if errors.Is(err, os.ErrNotExist) {
		return nil, nil // a spool from before the journal
	}
	for _, m := range ms {
		m.dir = s.dir
	}
	return ms, err
}

// List returns every queued message, oldest first. The journal is read
// before msg/ is scanned: a message the server moves from one to the other
// meanwhile is then in one of them at least (scanned the other way round,
// it was in neither and went missing from the list), and in both at most,
// which the IDs put right.
func (s *Spool) List() ([]*Message, error) {
	js, err := s.journal()
	if err != nil {
		return nil, err
	}
	ids, _, err := s.f.scan()
	if err != nil {
		return nil, err
	}
	ms := make([]*Message, 0, len(ids)+len(js))
	seen := make(map[string]bool, len(ids))
	for _, id := range ids {
		m, err := s.f.read(id)
		if err != nil {
			continue // delivered or deleted since the scan
		}
		ms = append(ms, m)
		seen[id] = true
	}
	for _, m := range js {
		if !seen[m.ID] {
			ms = append(ms, m)
		}
	}
	sort.Slice(ms, func(i, j int) bool { return ms[i].Created.Before(ms[j].Created) })
	return ms, nil
}

// find returns message id, from msg/ or the journal.
func (s *Spool) find(id string) (*Message, error) {
	if !validID(id) {
		return nil, fmt.Errorf("queue: %q is not a queue ID", id)
	}
	m, err := s.f.read(id)
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
	// Moved from the journal to msg/ since the first look?
	if m, err := s.f.read(id); err == nil {
		return m, nil
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
	_, err = s.askRetry(id)
	return err
}

// askRetry leaves the request for a running server's next scan, unless the
// message was delivered meanwhile (no request is left behind then).
func (s *Spool) askRetry(id string) (asked bool, err error) {
	marker := s.f.msgPath(id + ".retry")
	if err := writeFileSync(osDisk{}, marker, nil, os.O_TRUNC); err != nil {
		return false, err
	}
	if !s.f.has(id) {
		os.Remove(marker)
		return false, nil
	}
	return true, nil
}

// RetryAll asks for an attempt now at every message that waits for a
// retry (as Postfix's `postqueue -f`), and returns how many it asked for.
func (s *Spool) RetryAll() (int, error) {
	ids, _, err := s.f.scan()
	if err != nil {
		return 0, err
	}
	n := 0
	for _, id := range ids {
		asked, err := s.askRetry(id)
		if err != nil {
			return n, err
		}
		if asked {
			n++
		}
	}
	return n, nil
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
		if err := writeFileSync(osDisk{}, filepath.Join(msg, id+".delete"), nil, os.O_TRUNC); err != nil {
			return fmt.Errorf("queue: mark %s deleted: %w", id, err)
		}
		return osDisk{}.syncDir(msg)
	}
	os.Remove(filepath.Join(msg, id+".env"))
	os.Remove(filepath.Join(msg, id+".retry"))
	return osDisk{}.syncDir(msg)
}
