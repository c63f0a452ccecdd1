package smtpd

import (
	"bufio"
	"errors"
	"io"
	"strings"
	"testing"
)

func readWrapped(in string, maxBytes int64, lf bool) (string, string, error) {
	br := bufio.NewReaderSize(strings.NewReader(in), 16)
	r := newDataReader(br, 12, maxBytes, lf) // a line limit wrap must ignore
	r.wrap = true
	out, err := io.ReadAll(r)
	if err == nil {
		err = r.err
	}
	rest, _ := io.ReadAll(br)
	return string(out), string(rest), err
}

// foldModel breaks each line of a message (CRLF line ends) as Postfix's
// SMTP client does: after 998 bytes, CRLF and a space, which begins the
// next piece and counts in its 998.
func foldModel(msg string) string {
	lines := strings.Split(msg, "\r\n")
	for i, l := range lines {
		var b strings.Builder
		for len(l) > foldAt {
			b.WriteString(l[:foldAt] + "\r\n")
			l = " " + l[foldAt:]
		}
		lines[i] = b.String() + l
	}
	return strings.Join(lines, "\r\n")
}

func TestDataReaderWrap(t *testing.T) {
	x := func(n int) string { return strings.Repeat("x", n) }
	for _, tc := range []struct {
		in, out string
		err     error
		lf      bool
	}{
		{in: x(998) + "\r\n.\r\n", out: x(998) + "\r\n", err: io.EOF},
		{in: x(999) + "\r\n.\r\n", out: x(998) + "\r\n x\r\n", err: io.EOF},
		{in: x(998+997+5) + "\r\n.\r\n", out: x(998) + "\r\n " + x(997) + "\r\n " + x(5) + "\r\n", err: io.EOF},
		// A stuffed dot is dropped before counting; a dot never starts
		// a folded line.
		{in: ".." + x(1000) + "\r\n.\r\n", out: "." + x(997) + "\r\n " + x(3) + "\r\n", err: io.EOF},
		{in: x(1000) + "\n" + x(1000) + "\r\n.\r\n", out: x(998) + "\r\n xx\r\n" + x(998) + "\r\n xx\r\n", err: io.EOF, lf: true},
		// The framing rules hold in a long line, before and after a fold.
		{in: x(2000) + "\rMAIL\r\n.\r\n", err: ErrBareLineEnding},
		{in: x(500) + "\r" + x(600) + "\r\n.\r\n", err: ErrBareLineEnding},
		{in: x(1500) + "\n.\nMAIL\r\n.\r\n", err: ErrBareLineEnding},
		{in: x(1500) + "\x00\r\n.\r\n", err: ErrNUL},
		{in: x(1500), err: io.ErrUnexpectedEOF},
	} {
		out, _, err := readWrapped(tc.in, 0, tc.lf)
		if !errors.Is(err, tc.err) {
			t.Errorf("%.20q… (%d bytes): err %v, want %v", tc.in, len(tc.in), err, tc.err)
			continue
		}
		if tc.err == io.EOF && out != tc.out {
			t.Errorf("%.20q… (%d bytes): got %d bytes, want %d:\n%q", tc.in, len(tc.in), len(out), len(tc.out), out)
		}
	}
}

// FuzzDataReaderWrap: with wrap, the message ends exactly where it does
// without (readModel), the framing errors are the same, and the message
// is readModel's with each line broken as Postfix breaks it: no line over
// 998 bytes, and no line the break made begins with anything but a space.
func FuzzDataReaderWrap(f *testing.F) {
	long := strings.Repeat("y", 1200)
	for _, s := range []string{"a\r\n.\r\n", long + "\r\n.\r\nMAIL", long + "\n.\n" + long + "\r\n.\r\n", "." + long + "\r\n.\r\n", long + "\r" + long, long + "\x00\r\n.\r\n"} {
		f.Add([]byte(s), false)
		f.Add([]byte(s), true)
	}
	f.Fuzz(func(t *testing.T, in []byte, lf bool) {
		out, rest, err := readWrapped(string(in), 0, lf)
		want, consumed, wantErr := readModel(in, lf)
		switch wantErr {
		case io.EOF:
			if err != io.EOF || out != foldModel(want) || rest != string(in[consumed:]) {
				t.Fatalf("%q (lf %v): got %q, %v, left %q; want %q, left %q", in, lf, out, err, rest, foldModel(want), in[consumed:])
			}
			for _, l := range strings.Split(out, "\r\n") {
				if len(l) > foldAt {
					t.Fatalf("%q: a line of %d bytes", in, len(l))
				}
			}
		case io.ErrUnexpectedEOF:
			if err != io.ErrUnexpectedEOF {
				t.Fatalf("%q (lf %v): %v, want unexpected EOF", in, lf, err)
			}
		default:
			if !errors.Is(err, ErrBareLineEnding) && !errors.Is(err, ErrNUL) {
				t.Fatalf("%q (lf %v): %v, want a framing error", in, lf, err)
			}
		}
	})
}
