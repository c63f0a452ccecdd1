package smtpd

import (
	"bufio"
	"bytes"
	"errors"
	"io"
	"strings"
	"testing"
)

func readData(in string, maxLine int, maxBytes int64, lf bool) (string, string, error) {
	br := bufio.NewReaderSize(strings.NewReader(in), 16)
	r := newDataReader(br, maxLine, maxBytes, lf)
	out, err := io.ReadAll(r)
	if err == nil {
		err = r.err
	}
	rest, _ := io.ReadAll(br)
	return string(out), string(rest), err
}

func TestDataReader(t *testing.T) {
	for _, tc := range []struct {
		in, out, rest string
		err           error
		lf            bool // normalize bare LF
	}{
		{in: "a\r\nb\r\n.\r\nNEXT", out: "a\r\nb\r\n", rest: "NEXT", err: io.EOF},
		{in: ".\r\n", err: io.EOF},
		{in: "..dot\r\n.\r\n", out: ".dot\r\n", err: io.EOF},
		{in: "\r\n\r\n.\r\n", out: "\r\n\r\n", err: io.EOF},
		// The smuggling endings, and their kin: never an end, always an
		// error when bare LF is refused.
		{in: "a\n.\nMAIL", err: ErrBareLineEnding},
		{in: "a\r\n.\nMAIL", err: ErrBareLineEnding},
		{in: "a\n.\r\nMAIL", err: ErrBareLineEnding},
		{in: "a\r.\r\nMAIL", err: ErrBareLineEnding},
		{in: "a\r\n.\rMAIL\r\n.\r\n", err: ErrBareLineEnding},
		{in: ".\rX\r\n.\r\n", err: ErrBareLineEnding},
		{in: "a\r\n\x00.\r\n", err: ErrNUL},
		{in: "a\r\nb", err: io.ErrUnexpectedEOF},
		{in: "a\r\n.\r", err: io.ErrUnexpectedEOF},
		{in: strings.Repeat("x", 20) + "\r\n.\r\n", err: ErrLineTooLong},

		// Normalized: a bare LF is a CRLF, but never part of the end.
		{in: "a\nb\n.\r\nc\r\n.\r\nNEXT", out: "a\r\nb\r\n.\r\nc\r\n", rest: "NEXT", err: io.EOF, lf: true},
		{in: "a\r\n.\nMAIL x\r\n.\r\n", out: "a\r\n.\r\nMAIL x\r\n", err: io.EOF, lf: true},
		{in: "\n\n.\r\n", out: "\r\n\r\n.\r\n", err: io.ErrUnexpectedEOF, lf: true},
		{in: "\n\n.x\r\n.\r\n", out: "\r\n\r\nx\r\n", err: io.EOF, lf: true},
		{in: "a\n..\nb\r\n.\r\n", out: "a\r\n.\r\nb\r\n", err: io.EOF, lf: true},
		{in: "a\r.\r\nMAIL", err: ErrBareLineEnding, lf: true},
		{in: "a\n\r.\r\n", err: ErrBareLineEnding, lf: true},
		{in: "a\n\x00\r\n.\r\n", err: ErrNUL, lf: true},
	} {
		out, rest, err := readData(tc.in, 12, 0, tc.lf)
		if !errors.Is(err, tc.err) {
			t.Errorf("%q (lf %v): err %v, want %v", tc.in, tc.lf, err, tc.err)
			continue
		}
		if tc.err == io.EOF && (out != tc.out || rest != tc.rest) {
			t.Errorf("%q (lf %v): message %q, left %q; want %q, %q", tc.in, tc.lf, out, rest, tc.out, tc.rest)
		}
	}
}

func TestDataReaderSizeLimit(t *testing.T) {
	for _, in := range []string{"0123456789\r\n0123456789\r\n.\r\nNEXT", "0123456789\n0123456789\n0123\r\n.\r\nNEXT"} {
		br := bufio.NewReader(strings.NewReader(in))
		r := newDataReader(br, 1000, 15, true)
		out, err := io.ReadAll(r)
		if !errors.Is(err, ErrDataTooLarge) || len(out) != 15 {
			t.Fatalf("%q: read %d bytes, %v; want 15 and ErrDataTooLarge", in, len(out), err)
		}
		// The rest of the message is dropped up to its real end, no further.
		r.drain()
		if r.err != io.EOF {
			t.Fatalf("drain: %v", r.err)
		}
		if rest, _ := io.ReadAll(br); string(rest) != "NEXT" {
			t.Fatalf("left %q after the message", rest)
		}
	}
}

// readModel reads in line by line by the rules the reader implements: a
// line ends at CRLF, or with lf at a bare LF (handed on as CRLF); a bare
// CR or a NUL is a framing error, and so is a bare LF without lf; the
// message ends only at a line that is exactly "." and ends in CRLF after a
// line that did (or at the start); any other "." line is content, and a
// leading "." of a longer line is dropped. It returns the message, how
// many bytes of in it takes, and io.EOF, io.ErrUnexpectedEOF (ran out) or
// nil (a framing error).
func readModel(in []byte, lf bool) (string, int, error) {
	var want bytes.Buffer
	consumed := 0
	prevCRLF := true
	for s := in; ; {
		i := bytes.IndexByte(s, '\n')
		if i < 0 {
			// A CR as the last byte may yet be a CRLF: the input ran
			// out. Anything else bad is a framing error.
			if bytes.ContainsAny(bytes.TrimSuffix(s, []byte("\r")), "\r\x00") {
				return "", 0, nil
			}
			return "", 0, io.ErrUnexpectedEOF
		}
		line := s[:i]
		crlf := bytes.HasSuffix(line, []byte("\r"))
		line = bytes.TrimSuffix(line, []byte("\r"))
		if bytes.ContainsAny(line, "\r\x00") || !crlf && !lf {
			return "", 0, nil
		}
		s = s[i+1:]
		consumed += i + 1
		switch {
		case string(line) == "." && crlf && prevCRLF:
			return want.String(), consumed, io.EOF
		case string(line) == ".":
			want.WriteString(".")
		default:
			want.Write(bytes.TrimPrefix(line, []byte(".")))
		}
		want.WriteString("\r\n")
		prevCRLF = crlf
	}
}

// FuzzDataReader checks the reader against readModel, in both modes: never
// is a byte after the end read, and never does the message end anywhere
// but at CRLF "." CRLF after a line that ended in CRLF.
func FuzzDataReader(f *testing.F) {
	for _, s := range []string{"a\r\n.\r\n", "a\n.\nb\r\n.\r\n", "..x\r\n.\r\nMAIL", "\r\n.\rX\r\n.\r\n", "x\x00\r\n.\r\n", "a\n.\r\nb\r\n.\r\n"} {
		f.Add([]byte(s), false)
		f.Add([]byte(s), true)
	}
	f.Fuzz(func(t *testing.T, in []byte, lf bool) {
		out, rest, err := readData(string(in), 1<<20, 0, lf)
		want, consumed, wantErr := readModel(in, lf)
		switch wantErr {
		case io.EOF:
			if err != io.EOF || out != want || rest != string(in[consumed:]) {
				t.Fatalf("%q (lf %v): got %q, %v, left %q; want %q, left %q", in, lf, out, err, rest, want, in[consumed:])
			}
			// A size limit cuts the same message at exactly that size.
			limit := int64(len(want) / 2)
			out, _, err := readData(string(in), 1<<20, limit, lf)
			if limit > 0 && (!errors.Is(err, ErrDataTooLarge) || out != want[:limit]) {
				t.Fatalf("%q limited to %d: got %q, %v", in, limit, out, err)
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

// BenchmarkDataReader10KB: undoing the dot-stuffing of a 10 KB message and
// checking its line endings, as DATA does for every message.
func BenchmarkDataReader10KB(b *testing.B) {
	line := strings.Repeat("x", 76) + "\r\n"
	msg := "Subject: bench\r\n\r\n" + strings.Repeat(line, 10240/len(line)) + ".\r\n"
	src := strings.NewReader(msg)
	br := bufio.NewReaderSize(src, 4096)
	buf := make([]byte, 32<<10)
	b.SetBytes(int64(len(msg)))
	for b.Loop() {
		src.Reset(msg)
		br.Reset(src)
		r := newDataReader(br, 2000, 0, true)
		for {
			if _, err := r.Read(buf); err != nil {
				if err != io.EOF {
					b.Fatal(err)
				}
				break
			}
		}
	}
}
