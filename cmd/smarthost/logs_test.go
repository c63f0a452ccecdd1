package main

import (
	"fmt"
	"strings"

	"github.com/smarthost/smarthost/relay/relaytest"
)

// logRecord is one line of a relay's log as fields: msg, msg_id, err...
// Tests match fields, for their own messages, rather than look for words
// anywhere in a log (an earlier test's line, a debug line quoting a
// reply).
type logRecord map[string]string

type logRecords []logRecord

// parseTextLog reads log.format: text, which the end-to-end relays use:
// key=value pairs (relaytest.TextKeys); other lines (a panic, the race
// detector) are not log records.
func parseTextLog(text string) logRecords {
	var out logRecords
	for _, line := range strings.Split(text, "\n") {
		if r, err := relaytest.TextKeys(line); err == nil && r["msg"] != "" {
			out = append(out, r)
		}
	}
	return out
}

// parseJSONLog reads log.format: json (the compose stack's relays).
func parseJSONLog(text string) logRecords {
	var out logRecords
	for _, line := range strings.Split(text, "\n") {
		m, err := relaytest.DecodeStrict([]byte(line))
		if err != nil {
			continue
		}
		r := logRecord{}
		for k, v := range m {
			r[k] = fmt.Sprint(v)
		}
		out = append(out, r)
	}
	return out
}

// records is what the relay has logged so far.
func (p *proc) records() logRecords { return parseTextLog(p.logText()) }

// with keeps the records whose field key holds one of values.
func (rs logRecords) with(key string, values ...string) logRecords {
	var out logRecords
	for _, r := range rs {
		v, ok := r[key]
		if !ok {
			continue
		}
		for _, want := range values {
			if v == want {
				out = append(out, r)
				break
			}
		}
	}
	return out
}

// of keeps the records about the given messages (field msg_id).
func (rs logRecords) of(ids []string) logRecords { return rs.with("msg_id", ids...) }

// withPrefix keeps the records whose field key begins with prefix.
func (rs logRecords) withPrefix(key, prefix string) logRecords {
	var out logRecords
	for _, r := range rs {
		if v, ok := r[key]; ok && strings.HasPrefix(v, prefix) {
			out = append(out, r)
		}
	}
	return out
}
