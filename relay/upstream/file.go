package upstream

import (
	"context"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"strings"

	"github.com/smarthost/smarthost/relay/queue"
)

// fileTransport is the development outbox: each message becomes an .eml
// file, with its envelope in Return-Path: and X-Envelope-To: fields on top.
type fileTransport struct{ dir string }

func newFileTransport(dir string) (*fileTransport, error) {
	if err := os.MkdirAll(dir, 0o755); err != nil {
		return nil, err
	}
	return &fileTransport{dir: dir}, nil
}

func (t *fileTransport) Close() {}

func (t *fileTransport) Send(_ context.Context, m *queue.Message, to []queue.Recipient) []queue.Outcome {
	name, err := t.write(m, to)
	if err != nil {
		return queue.Failed(len(to), err)
	}
	out := make([]queue.Outcome, len(to))
	for i := range out {
		out[i].Reply = "written to " + name // where to look, as a reply would say
	}
	return out
}

// write writes the message and returns the file's name.
func (t *fileTransport) write(m *queue.Message, to []queue.Recipient) (string, error) {
	src, err := m.Open()
	if err != nil {
		return "", err
	}
	defer src.Close()
	tmp, err := os.CreateTemp(t.dir, ".tmp-*")
	if err != nil {
		return "", err
	}
	defer os.Remove(tmp.Name())
	rcpts := make([]string, len(to))
	for i, r := range to {
		rcpts[i] = "<" + r.Addr + ">"
	}
	fmt.Fprintf(tmp, "Return-Path: <%s>\r\nX-Envelope-To: %s\r\n", m.From, strings.Join(rcpts, ", "))
	if _, err := io.Copy(tmp, src); err != nil {
		tmp.Close()
		return "", err
	}
	if err := tmp.Sync(); err != nil {
		tmp.Close()
		return "", err
	}
	if err := tmp.Close(); err != nil {
		return "", err
	}
	name := filepath.Join(t.dir, m.ID+".eml")
	for i := 2; ; i++ {
		// Link, not rename, so an earlier file of the same message (another
		// route's recipients) is never overwritten.
		if err := os.Link(tmp.Name(), name); err == nil {
			return name, nil
		} else if !os.IsExist(err) {
			return "", err
		}
		name = filepath.Join(t.dir, fmt.Sprintf("%s-%d.eml", m.ID, i))
	}
}

func (t *fileTransport) probe(context.Context) error {
	f, err := os.CreateTemp(t.dir, ".probe-*")
	if err != nil {
		return err
	}
	f.Close()
	return os.Remove(f.Name())
}
