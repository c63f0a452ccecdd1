package relaytest

import (
	"bytes"
	"encoding/json"
	"fmt"
	"io"
	"strconv"
	"strings"
	"sync"
	"testing"
)

// CheckLog checks every log line of the relay in log: a JSON line must be
// one object whose keys each occur once (Elasticsearch and many decoders
// refuse a line with a key twice), and so must a line of log/slog's text
// form. Lines of neither form (the race detector's report, a panic) are
// not log lines and are left alone.
func CheckLog(log []byte) error {
	var probs []string
	for i, line := range bytes.Split(log, []byte("\n")) {
		if err := CheckLogLine(line); err != nil {
			probs = append(probs, fmt.Sprintf("line %d: %v: %s", i+1, err, line))
		}
	}
	if len(probs) > 0 {
		return fmt.Errorf("%d log line(s) with a problem:\n%s", len(probs), strings.Join(probs, "\n"))
	}
	return nil
}

// CheckLogLine checks one line (see CheckLog).
func CheckLogLine(line []byte) error {
	line = bytes.TrimSpace(line)
	switch {
	case bytes.HasPrefix(line, []byte("{")):
		_, err := DecodeStrict(line)
		return err
	case bytes.HasPrefix(line, []byte("time=")):
		_, err := TextKeys(string(line))
		return err
	}
	return nil
}

// DecodeStrict decodes one JSON object, refusing a key that occurs twice
// in it (or in an object within it) and anything after it.
func DecodeStrict(b []byte) (map[string]any, error) {
	dec := json.NewDecoder(bytes.NewReader(b))
	dec.UseNumber()
	v, err := strictValue(dec)
	if err != nil {
		return nil, err
	}
	if _, err := dec.Token(); err != io.EOF {
		return nil, fmt.Errorf("more after the object")
	}
	m, ok := v.(map[string]any)
	if !ok {
		return nil, fmt.Errorf("not an object")
	}
	return m, nil
}

func strictValue(dec *json.Decoder) (any, error) {
	tok, err := dec.Token()
	if err != nil {
		return nil, err
	}
	switch tok {
	case json.Delim('{'):
		m := map[string]any{}
		for dec.More() {
			k, err := dec.Token()
			if err != nil {
				return nil, err
			}
			key := k.(string)
			if _, dup := m[key]; dup {
				return nil, fmt.Errorf("key %q twice", key)
			}
			if m[key], err = strictValue(dec); err != nil {
				return nil, err
			}
		}
		_, err := dec.Token() // }
		return m, err
	case json.Delim('['):
		var a []any
		for dec.More() {
			v, err := strictValue(dec)
			if err != nil {
				return nil, err
			}
			a = append(a, v)
		}
		_, err := dec.Token() // ]
		return a, err
	}
	return tok, nil
}

// TextKeys parses a line of log/slog's text form (key=value, a value
// quoted when it must be) into its keys and values, refusing a key twice.
func TextKeys(line string) (map[string]string, error) {
	out := map[string]string{}
	for line = strings.TrimSpace(line); line != ""; line = strings.TrimLeft(line, " ") {
		eq := strings.IndexByte(line, '=')
		if eq <= 0 || strings.ContainsAny(line[:eq], " \"") {
			return nil, fmt.Errorf("not key=value at %q", line)
		}
		key := line[:eq]
		line = line[eq+1:]
		var val string
		if strings.HasPrefix(line, `"`) {
			q, err := strconv.QuotedPrefix(line)
			if err != nil {
				return nil, fmt.Errorf("key %s: bad quoting", key)
			}
			val, _ = strconv.Unquote(q)
			line = line[len(q):]
		} else {
			val, line, _ = strings.Cut(line, " ")
		}
		if _, dup := out[key]; dup {
			return nil, fmt.Errorf("key %q twice", key)
		}
		out[key] = val
	}
	return out, nil
}

// LogChecker is a log destination for a test's logger that checks every
// line as CheckLog does; the test fails at its end if a line had a problem.
type LogChecker struct {
	mu    sync.Mutex
	part  []byte
	all   bytes.Buffer
	probs []string
}

// NewLogChecker makes a LogChecker whose problems fail t when it ends.
func NewLogChecker(t testing.TB) *LogChecker {
	c := &LogChecker{}
	t.Cleanup(func() {
		c.mu.Lock()
		defer c.mu.Unlock()
		for _, p := range c.probs {
			t.Errorf("log line: %s", p)
		}
	})
	return c
}

func (c *LogChecker) Write(p []byte) (int, error) {
	c.mu.Lock()
	defer c.mu.Unlock()
	if c.all.Len() < maxKept {
		c.all.Write(p)
	}
	c.part = append(c.part, p...)
	for {
		i := bytes.IndexByte(c.part, '\n')
		if i < 0 {
			return len(p), nil
		}
		if err := CheckLogLine(c.part[:i]); err != nil {
			c.probs = append(c.probs, fmt.Sprintf("%v: %s", err, c.part[:i]))
		}
		c.part = c.part[i+1:]
	}
}

// maxKept bounds what String keeps (a benchmark logs a lot); every line
// is checked all the same.
const maxKept = 8 << 20

// String is everything logged so far (up to 8 MiB).
func (c *LogChecker) String() string {
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.all.String()
}

// Lines decodes the JSON lines logged so far whose message is msg (every
// line, with msg ""); a line that does not decode strictly fails t.
func (c *LogChecker) Lines(t testing.TB, msg string) []map[string]any {
	t.Helper()
	var out []map[string]any
	for _, line := range strings.Split(c.String(), "\n") {
		if line == "" {
			continue
		}
		m, err := DecodeStrict([]byte(line))
		if err != nil {
			t.Fatalf("%v: %s", err, line)
		}
		if msg == "" || m["msg"] == msg {
			out = append(out, m)
		}
	}
	return out
}
