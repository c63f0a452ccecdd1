package queue

import (
	"encoding/json"
	"fmt"
	"io"
	"strings"
	"text/tabwriter"
	"time"
)

// Select returns the spool's messages f picks (in their state at now),
// oldest first, each with what the running relay has it waiting for, if
// anything: `smarthost queue list`, read from the files.
func (s *Spool) Select(f Filter, now time.Time) ([]Queued, error) {
	ms, err := s.List()
	if err != nil {
		return nil, err
	}
	waiting, err := s.Waiting()
	if err != nil {
		return nil, err
	}
	var out []Queued
	for _, m := range ms {
		// The spool's files cannot tell which message a worker holds: a
		// message is active until its first attempt, then deferred.
		state := m.State(false)
		if f.Match(m, state, now) {
			q := Queued{Message: *m, State: state}
			if w, ok := waiting[m.ID]; ok {
				q.Waiting = w.State()
			}
			out = append(out, q)
		}
	}
	return out, nil
}

// WriteList writes ms as `smarthost queue list` prints them: a table
// (ages and the next attempt counted from now) and how many there are;
// with asJSON, one JSON object per message per line, as postqueue -j.
func WriteList(w io.Writer, ms []Queued, asJSON bool, now time.Time) error {
	if asJSON {
		enc := json.NewEncoder(w)
		enc.SetEscapeHTML(false)
		for _, m := range ms {
			if err := enc.Encode(m); err != nil {
				return err
			}
		}
		return nil
	}
	tw := tabwriter.NewWriter(w, 0, 4, 2, ' ', 0)
	fmt.Fprintln(tw, "ID\tSTATE\tAGE\tSIZE\tATTEMPTS\tNEXT\tFROM\tRECIPIENTS\tLAST REPLY")
	for _, m := range ms {
		next := m.NextAttempt.Sub(now).Round(time.Second)
		var rcpts []string
		for _, r := range m.Recipients {
			rcpts = append(rcpts, r.Addr+"="+r.Status)
		}
		state := m.State
		if m.Waiting != "" {
			state = m.Waiting
		}
		fmt.Fprintf(tw, "%s\t%s\t%s\t%d\t%d\t%s\t<%s>\t%s\t%s\n", m.ID, state, now.Sub(m.Created).Round(time.Second),
			m.Size, m.Attempts, max(next, 0), m.From, strings.Join(rcpts, ","), m.LastError)
	}
	if err := tw.Flush(); err != nil {
		return err
	}
	_, err := fmt.Fprintf(w, "%d message(s)\n", len(ms))
	return err
}

// WriteShow writes message id's state and its content as it will be sent
// (Show), as `smarthost queue show` prints them.
func (s *Spool) WriteShow(w io.Writer, id string) error {
	m, body, err := s.Show(id)
	if err != nil {
		return err
	}
	var b strings.Builder
	fmt.Fprintf(&b, "ID: %s\nFrom: <%s>\nCreated: %s\nAttempts: %d\nNext attempt: %s\n",
		m.ID, m.From, m.Created.Format(time.RFC3339), m.Attempts, m.NextAttempt.Format(time.RFC3339))
	for _, r := range m.Recipients {
		fmt.Fprintf(&b, "Recipient: <%s> %s %s\n", r.Addr, r.Status, r.Error)
	}
	fmt.Fprintf(&b, "\n%s", body)
	_, err = io.WriteString(w, b.String())
	return err
}
