package webhook

import (
	"fmt"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
)

// outbox is one webhook's durable queue of events to post: a folder with
// a file per event, named by its number in the order they came, so that
// the oldest is the lowest. A file is written whole and renamed into
// place; posted, it is removed. Events wait there across restarts; with
// more than max waiting, the oldest go.
type outbox struct {
	dir string
	max uint64
	mu  sync.Mutex
	// first..next-1 are the numbers of the events waiting (one may be
	// missing: a file that could not be written).
	first, next uint64
	wake        chan struct{}
}

const eventExt = ".json"

// openOutbox opens (creating) the outbox at dir and finds what waits there.
func openOutbox(dir string, max int) (*outbox, error) {
	if err := os.MkdirAll(dir, 0o700); err != nil {
		return nil, fmt.Errorf("webhook: %w", err)
	}
	ents, err := os.ReadDir(dir)
	if err != nil {
		return nil, fmt.Errorf("webhook: %w", err)
	}
	o := &outbox{dir: dir, max: uint64(max), wake: make(chan struct{}, 1)}
	have := false
	for _, e := range ents {
		stem, ok := strings.CutSuffix(e.Name(), eventExt)
		n, err := strconv.ParseUint(stem, 10, 64)
		if !ok || err != nil {
			os.Remove(filepath.Join(dir, e.Name())) // a write cut short
			continue
		}
		if !have || n < o.first {
			o.first = n
		}
		o.next = max64(o.next, n+1)
		have = true
	}
	if !have {
		o.first, o.next = 1, 1
	}
	return o, nil
}

func max64(a, b uint64) uint64 {
	if a > b {
		return a
	}
	return b
}

func (o *outbox) path(n uint64) string {
	return filepath.Join(o.dir, fmt.Sprintf("%020d%s", n, eventExt))
}

// add puts an event at the end, and drops the oldest beyond max; it
// returns how many it dropped.
func (o *outbox) add(body []byte) (dropped int, err error) {
	o.mu.Lock()
	defer o.mu.Unlock()
	n := o.next
	tmp := filepath.Join(o.dir, fmt.Sprintf(".%d.tmp", n))
	if err := os.WriteFile(tmp, body, 0o600); err != nil {
		os.Remove(tmp)
		return 0, fmt.Errorf("webhook: %w", err)
	}
	if err := os.Rename(tmp, o.path(n)); err != nil {
		os.Remove(tmp)
		return 0, fmt.Errorf("webhook: %w", err)
	}
	o.next++
	for o.next-o.first > o.max {
		if os.Remove(o.path(o.first)) == nil {
			dropped++
		}
		o.first++
	}
	select {
	case o.wake <- struct{}{}:
	default:
	}
	return dropped, nil
}

// peek returns the oldest event waiting and its number; ok is false when
// none waits.
func (o *outbox) peek() (n uint64, body []byte, ok bool) {
	o.mu.Lock()
	defer o.mu.Unlock()
	for ; o.first < o.next; o.first++ {
		b, err := os.ReadFile(o.path(o.first))
		if err != nil {
			continue // gone (posted by an earlier process that stopped before it knew), or unreadable
		}
		return o.first, b, true
	}
	return 0, nil, false
}

// done removes event n, posted or given up on.
func (o *outbox) done(n uint64) {
	o.mu.Lock()
	defer o.mu.Unlock()
	os.Remove(o.path(n))
	if n == o.first {
		o.first++
	}
}

// waiting is the number of events waiting.
func (o *outbox) waiting() int {
	o.mu.Lock()
	defer o.mu.Unlock()
	return int(o.next - o.first)
}
