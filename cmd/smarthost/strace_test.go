package main

// Reading the log of `strace -f -y`: each system call with the line where
// it was entered and the line where it returned. strace writes a call's
// line before it lets the thread go on, so a call that another thread
// made because this one returned (a reply sent after a sync) is always on
// a later line: line order is the order of cause and effect.

import (
	"bufio"
	"fmt"
	"io"
	"regexp"
	"strings"
)

// sysCall is one system call that returned.
type sysCall struct {
	name        string
	args        string // as strace printed them
	ret         string
	enter, exit int // line numbers, from 1
}

var (
	straceLine     = regexp.MustCompile(`^(\d+)\s+(.*)$`)
	straceComplete = regexp.MustCompile(`^(\w+)\((.*)\)\s+= (\S+)`)
	straceUnfin    = regexp.MustCompile(`^(\w+)\((.*) <unfinished \.\.\.>$`)
	straceResumed  = regexp.MustCompile(`^<\.\.\. (\w+) resumed>(.*)\)\s+= (\S+)`)
	straceFD       = regexp.MustCompile(`^\d+<([^>]*)>`)
	straceQuoted   = regexp.MustCompile(`"((?:[^"\\]|\\.)*)"`)
)

// parseStrace reads the log of `strace -f -y -o FILE` and returns the
// calls that succeeded, in the order they returned.
func parseStrace(r io.Reader) ([]sysCall, error) {
	sc := bufio.NewScanner(r)
	sc.Buffer(make([]byte, 1<<20), 64<<20)
	pending := map[string]sysCall{} // by thread
	var out []sysCall
	n := 0
	for sc.Scan() {
		n++
		m := straceLine.FindStringSubmatch(sc.Text())
		if m == nil {
			return nil, fmt.Errorf("strace log line %d: %q", n, sc.Text())
		}
		tid, rest := m[1], m[2]
		var c sysCall
		switch {
		case straceResumed.MatchString(rest):
			r := straceResumed.FindStringSubmatch(rest)
			p, ok := pending[tid]
			if !ok || p.name != r[1] {
				return nil, fmt.Errorf("strace log line %d: %s resumed, never entered", n, r[1])
			}
			delete(pending, tid)
			c = p
			c.args += r[2]
			c.ret, c.exit = r[3], n
		case straceUnfin.MatchString(rest):
			u := straceUnfin.FindStringSubmatch(rest)
			pending[tid] = sysCall{name: u[1], args: u[2], enter: n}
			continue
		case straceComplete.MatchString(rest):
			f := straceComplete.FindStringSubmatch(rest)
			c = sysCall{name: f[1], args: f[2], ret: f[3], enter: n, exit: n}
		default:
			continue // signals, exits, "resumed" of a call that failed oddly
		}
		if !strings.HasPrefix(c.ret, "-") && c.ret != "?" {
			out = append(out, c)
		}
	}
	return out, sc.Err()
}

// fdPath is the path strace -y printed for a call's first argument, a
// file descriptor: "/q/journal/0000000000000001.log", "socket:[123]".
func (c sysCall) fdPath() string {
	if m := straceFD.FindStringSubmatch(c.args); m != nil {
		return m[1]
	}
	return ""
}

// strings returns the call's quoted arguments (paths, data), unquoted as
// far as the tests need: strace escapes what is not printable.
func (c sysCall) strings() []string {
	var out []string
	for _, m := range straceQuoted.FindAllStringSubmatch(c.args, -1) {
		out = append(out, m[1])
	}
	return out
}
