package history

import (
	"encoding/json"
	"fmt"
	"io"
	"strings"

	"github.com/smarthost/smarthost/relay/queue"
)

// WriteStories writes stories as `smarthost trace` prints them: as text
// (Story.WriteText), a blank line between two, or with asJSON one JSON
// object per story per line.
func WriteStories(w io.Writer, stories []Story, asJSON bool) error {
	enc := json.NewEncoder(w)
	enc.SetEscapeHTML(false)
	for i, s := range stories {
		var err error
		if asJSON {
			err = enc.Encode(s)
		} else {
			if i > 0 {
				fmt.Fprintln(w)
			}
			err = s.WriteText(w)
		}
		if err != nil {
			return err
		}
	}
	return nil
}

// WriteText writes the story for a reader: a line about the message (its
// queue ID, Message-ID, sender and user), then a line per event with its
// local time, kind and what it says beyond them.
func (s Story) WriteText(w io.Writer) error {
	if len(s.Events) == 0 {
		return nil
	}
	first := s.Events[0]
	var b strings.Builder
	fmt.Fprintf(&b, "%s  %s  from <%s>", s.ID, first.MessageID, first.From)
	if first.User != "" {
		fmt.Fprintf(&b, "  user %s", first.User)
	}
	b.WriteString("\n")
	for _, e := range s.Events {
		fmt.Fprintf(&b, "  %s  %-10s %s\n", e.Time.Local().Format("2006-01-02 15:04:05.000"), e.Kind, detail(e))
	}
	_, err := io.WriteString(w, b.String())
	return err
}

// detail is what an event says beyond its time and kind, as key=value
// words in the manner of Postfix's log, the reply last.
func detail(e queue.Event) string {
	var parts []string
	add := func(format string, args ...any) { parts = append(parts, fmt.Sprintf(format, args...)) }
	if e.Rcpt != "" {
		add("to=<%s>", e.Rcpt)
	}
	if len(e.Rcpts) > 0 {
		add("to=<%s>", strings.Join(e.Rcpts, ">,<"))
	}
	if e.Client != "" {
		add("client=%s size=%d", e.Client, e.Size)
	}
	if len(e.DKIM) > 0 {
		add("dkim=%s", strings.Join(e.DKIM, ","))
	}
	if e.Upstream != "" {
		add("upstream=%s[%s]", e.Upstream, e.Addr)
	}
	if e.TLS != "" {
		add("tls=%s", e.TLS)
	}
	if e.Attempt > 0 {
		add("attempt=%d delay=%.3g", e.Attempt, e.Delay)
	}
	if e.Status != "" {
		add("dsn=%s", e.Status)
	}
	if e.Reason != "" {
		add("reason=%s", e.Reason)
	}
	if e.DSNID != "" {
		add("notification=%s", e.DSNID)
	}
	if e.By != "" {
		add("by=%q", e.By)
	}
	if e.Reply != "" {
		add("(%s)", strings.ReplaceAll(e.Reply, "\n", " / "))
	} else if e.Error != "" {
		add("(%s)", e.Error)
	}
	return strings.Join(parts, " ")
}
