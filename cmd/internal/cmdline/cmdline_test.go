package cmdline

import (
	"bytes"
	"strings"
	"testing"
)

func testIO(stdin string) (IO, *bytes.Buffer, *bytes.Buffer) {
	var out, errs bytes.Buffer
	return IO{Stdin: strings.NewReader(stdin), Stdout: &out, Stderr: &errs, Getenv: func(string) string { return "" }}, &out, &errs
}

// Flags come before or after the arguments; --help prints the usage on
// standard output and ends the command with OK, a bad flag with BadConfig.
func TestParseArgs(t *testing.T) {
	c, out, errs := testIO("")
	fs := c.Flags("queue show", "ID [--config FILE]\n\nShows one message.")
	path := fs.String("config", "", "configuration file")
	all := fs.Bool("all", false, "every message")
	pos, code, done := fs.ParseArgs([]string{"A", "--config", "f.yaml", "B", "-all"})
	if done || code != OK || strings.Join(pos, " ") != "A B" || *path != "f.yaml" || !*all {
		t.Errorf("ParseArgs: %v %d %v, config %q all %v", pos, code, done, *path, *all)
	}
	if _, code, done := fs.ParseArgs([]string{"A", "--help"}); !done || code != OK ||
		!strings.HasPrefix(out.String(), "usage: smarthost queue show ID [--config FILE]\n\nShows one message.\n\nflags:\n") ||
		!strings.Contains(out.String(), "-config string") {
		t.Errorf("--help: %d %v, printed %q", code, done, out.String())
	}
	if _, code, done := fs.ParseArgs([]string{"--nope"}); !done || code != BadConfig || !strings.Contains(errs.String(), "nope") {
		t.Errorf("a bad flag: %d %v, said %q", code, done, errs.String())
	}
	out.Reset()
	if code := fs.BadArgs(OK, false); code != BadConfig || !strings.HasPrefix(out.String(), "usage: smarthost queue show") {
		t.Errorf("BadArgs of wrong arguments: %d, printed %q", code, out.String())
	}
	if code := fs.BadArgs(OK, true); code != OK {
		t.Errorf("BadArgs after --help: %d", code)
	}
}

// A command of verbs runs the one named, lists them on help (standard
// output, OK) and with none or an unknown one (standard error, BadConfig).
func TestVerbs(t *testing.T) {
	var ran []string
	run := Verbs("queue", map[string]Verb{
		"show": {Usage: "ID", About: "one message", Run: func(c IO, args []string) int { ran = append(ran, args...); return 7 }},
		"list": {Usage: "[--json]", About: "every message"},
	})
	c, out, errs := testIO("")
	if code := run(c, []string{"show", "X"}); code != 7 || len(ran) != 1 || ran[0] != "X" {
		t.Errorf("show X: %d, ran with %v", code, ran)
	}
	if code := run(c, []string{"--help"}); code != OK || !strings.Contains(out.String(), "  list [--json]\n      every message\n  show ID\n") {
		t.Errorf("--help: %d, printed %q", code, out.String())
	}
	if code := run(c, []string{"frob"}); code != BadConfig || !strings.HasPrefix(errs.String(), "smarthost: queue: unknown verb \"frob\"\n") {
		t.Errorf("an unknown verb: %d, said %q", code, errs.String())
	}
	errs.Reset()
	if code := run(c, nil); code != BadConfig || !strings.HasPrefix(errs.String(), "usage: smarthost queue VERB") {
		t.Errorf("no verb: %d, said %q", code, errs.String())
	}
}

// A configuration that cannot be read is said with its path, and the
// command ends with BadConfig.
func TestConfig(t *testing.T) {
	c, _, errs := testIO("")
	f, source, code := c.Flags("drain", "").Config(t.TempDir() + "/missing.yaml")
	if f != nil || code != BadConfig || !strings.HasSuffix(source, "missing.yaml") || !strings.Contains(errs.String(), "missing.yaml") {
		t.Errorf("a missing file: %v %q %d, said %q", f, source, code, errs.String())
	}
}

// From a pipe, the answer and the password are a line each.
func TestConfirmedAndReadPassword(t *testing.T) {
	for answer, want := range map[string]bool{"y\n": true, " YES \n": true, "n\n": false, "": false, "yes please\n": false} {
		c, out, _ := testIO(answer)
		if got := c.Confirmed("delete 3 message(s)? [y/N] "); got != want || out.String() != "delete 3 message(s)? [y/N] " {
			t.Errorf("answer %q: %v, want %v (asked %q)", answer, got, want, out.String())
		}
	}
	c, _, _ := testIO("s3cret\r\nnext\n")
	if pw, err := c.ReadPassword(); err != nil || pw != "s3cret" {
		t.Errorf("ReadPassword: %q, %v", pw, err)
	}
}
