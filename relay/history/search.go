package history

import (
	"bufio"
	"bytes"
	"encoding/json"
	"errors"
	"io"
	"os"
	"slices"
	"sort"
	"strings"
	"time"

	"github.com/smarthost/smarthost/relay/queue"
)

// Query asks for the stories of messages.
type Query struct {
	// Text is a queue ID, a Message-ID (with or without its angle
	// brackets), or an address, the sender's or a recipient's; letter
	// case does not matter.
	Text  string
	Since time.Time // only events from then on (zero: all kept)
	Limit int       // the newest this many messages; default 100
}

// Story is what happened to one message, in order.
type Story struct {
	ID     string        `json:"queue_id"`
	Events []queue.Event `json:"events"`
}

const defaultLimit = 100

// Search reads the history at dir for the messages q asks for, newest
// first, each with all its events since q.Since, and with the delivery
// status notification sent about it (a message of its own). It reads the
// files as they are: a relay may be writing to them.
func Search(dir string, q Query) ([]Story, error) {
	if q.Limit <= 0 {
		q.Limit = defaultLimit
	}
	text := strings.TrimSpace(q.Text)
	if text == "" {
		return nil, errors.New("history: nothing to search for")
	}
	segs, err := segments(dir)
	if err != nil {
		return nil, err
	}
	segs = since(segs, q.Since)
	// First the messages the text names, then every event of those.
	first := map[string]time.Time{}
	err = scan(segs, prefilter(text), func(e *queue.Event) {
		if !e.Time.Before(q.Since) && matches(e, text) {
			if _, ok := first[e.ID]; !ok {
				first[e.ID] = e.Time
			}
		}
	})
	if err != nil {
		return nil, err
	}
	ids := newest(first, q.Limit)
	stories := map[string]*Story{}
	collect := func(ids map[string]bool) error {
		return scan(segs, hasID(ids), func(e *queue.Event) {
			if !e.Time.Before(q.Since) {
				s := stories[e.ID]
				if s == nil {
					s = &Story{ID: e.ID}
					stories[e.ID] = s
				}
				s.Events = append(s.Events, *e)
			}
		})
	}
	if err := collect(ids); err != nil {
		return nil, err
	}
	// The notifications sent about them, which are messages of their own.
	dsns := map[string]bool{}
	for _, s := range stories {
		for _, e := range s.Events {
			if e.Kind == queue.EventDSN && e.DSNID != "" && stories[e.DSNID] == nil {
				dsns[e.DSNID] = true
			}
		}
	}
	if len(dsns) > 0 {
		if err := collect(dsns); err != nil {
			return nil, err
		}
	}
	return order(stories), nil
}

// since drops the segments that end before t (a segment ends where the
// next begins).
func since(segs []segment, t time.Time) []segment {
	for len(segs) > 1 && !segs[1].start.After(t) {
		segs = segs[1:]
	}
	return segs
}

// matches reports whether e names text: as its queue ID, its Message-ID,
// its sender or a recipient.
func matches(e *queue.Event, text string) bool {
	id := strings.Trim(text, "<>")
	return strings.EqualFold(e.ID, text) || (e.MessageID != "" && strings.EqualFold(strings.Trim(e.MessageID, "<>"), id)) ||
		strings.EqualFold(e.From, text) || strings.EqualFold(e.Rcpt, text) ||
		slices.ContainsFunc(e.Rcpts, func(r string) bool { return strings.EqualFold(r, text) })
}

// prefilter picks the lines worth decoding: those that contain the text
// (without a Message-ID's brackets), in any case; every line when JSON
// would write the text otherwise.
func prefilter(text string) func([]byte) bool {
	t := strings.Trim(text, "<>")
	if t == "" || strings.ContainsAny(t, "\"\\") || !isASCII(t) {
		return nil
	}
	lower := []byte(strings.ToLower(t))
	return func(line []byte) bool { return containsFold(line, lower) }
}

// hasID picks the lines of the messages ids, by their queue_id, which
// every line has near its start.
func hasID(ids map[string]bool) func([]byte) bool {
	key := []byte(`"queue_id":"`)
	return func(line []byte) bool {
		i := bytes.Index(line, key)
		if i < 0 {
			return false
		}
		rest := line[i+len(key):]
		j := bytes.IndexByte(rest, '"')
		return j >= 0 && ids[string(rest[:j])]
	}
}

// newest keeps the limit messages first seen last.
func newest(first map[string]time.Time, limit int) map[string]bool {
	ids := make([]string, 0, len(first))
	for id := range first {
		ids = append(ids, id)
	}
	sort.Slice(ids, func(i, j int) bool { return first[ids[i]].After(first[ids[j]]) })
	out := map[string]bool{}
	for _, id := range ids[:min(limit, len(ids))] {
		out[id] = true
	}
	return out
}

// order lists the stories newest first.
func order(stories map[string]*Story) []Story {
	out := make([]Story, 0, len(stories))
	for _, s := range stories {
		out = append(out, *s)
	}
	sort.Slice(out, func(i, j int) bool { return out[i].Events[0].Time.After(out[j].Events[0].Time) })
	return out
}

// scan decodes every line of segs that want picks (nil: every line) and
// gives it to fn. A line cut short (being written) or that does not
// decode is passed over.
func scan(segs []segment, want func([]byte) bool, fn func(*queue.Event)) error {
	for _, s := range segs {
		f, err := os.Open(s.path)
		if errors.Is(err, os.ErrNotExist) {
			continue // pruned meanwhile
		}
		if err != nil {
			return err
		}
		err = scanLines(f, want, fn)
		f.Close()
		if err != nil {
			return err
		}
	}
	return nil
}

func scanLines(r io.Reader, want func([]byte) bool, fn func(*queue.Event)) error {
	br := bufio.NewReaderSize(r, 256<<10)
	for {
		line, err := br.ReadSlice('\n')
		if errors.Is(err, bufio.ErrBufferFull) {
			for errors.Is(err, bufio.ErrBufferFull) { // no event is this long
				_, err = br.ReadSlice('\n')
			}
			continue
		}
		if err == io.EOF {
			return nil // a last line without its end is still being written
		}
		if err != nil {
			return err
		}
		if want != nil && !want(line) {
			continue
		}
		var e queue.Event
		if json.Unmarshal(line, &e) == nil {
			fn(&e)
		}
	}
}

// containsFold reports whether b contains lower (lower-case ASCII) in any
// case.
func containsFold(b, lower []byte) bool {
	n := len(lower)
	for i := 0; i+n <= len(b); i++ {
		c := b[i]
		if c|0x20 != lower[0]|0x20 {
			continue
		}
		if bytes.EqualFold(b[i:i+n], lower) {
			return true
		}
	}
	return false
}

func isASCII(s string) bool {
	for i := 0; i < len(s); i++ {
		if s[i] >= 0x80 {
			return false
		}
	}
	return true
}

// tailBytes is how much of a segment's end Recent reads.
const tailBytes = 1 << 20

// Recent returns the last n events of the given kinds (any, with none),
// newest first, from the end of the newest segments: what the status page
// shows without reading days of history.
func Recent(dir string, n int, kinds ...string) ([]queue.Event, error) {
	segs, err := segments(dir)
	if err != nil {
		return nil, err
	}
	var out []queue.Event
	for i := len(segs) - 1; i >= 0 && i >= len(segs)-4 && len(out) < n; i-- {
		var got []queue.Event
		if err := tail(segs[i].path, func(e *queue.Event) {
			if len(kinds) == 0 || slices.Contains(kinds, e.Kind) {
				got = append(got, *e)
			}
		}); err != nil {
			return nil, err
		}
		for j := len(got) - 1; j >= 0 && len(out) < n; j-- {
			out = append(out, got[j])
		}
	}
	return out, nil
}

// tail scans the last tailBytes of a segment, from its first whole line.
func tail(path string, fn func(*queue.Event)) error {
	f, err := os.Open(path)
	if errors.Is(err, os.ErrNotExist) {
		return nil
	}
	if err != nil {
		return err
	}
	defer f.Close()
	info, err := f.Stat()
	if err != nil {
		return err
	}
	var r io.Reader = f
	if off := info.Size() - tailBytes; off > 0 {
		br := bufio.NewReader(io.NewSectionReader(f, off, tailBytes))
		if _, err := br.ReadSlice('\n'); err != nil && !errors.Is(err, bufio.ErrBufferFull) {
			return nil
		}
		r = br
	}
	return scanLines(r, nil, fn)
}
