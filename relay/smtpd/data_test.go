package smtpd

import (
	"bufio"
	"bytes"
	"errors"
	"io"
	"strings"
	"testing"

	"github.com/emersion/go-smtp"
)

func readData(in string, maxLine int, maxBytes int64) (string, string, error) {
	br := bufio.NewReaderSize(strings.NewReader(in), 16)
	r := newDataReader(br, maxLine, maxBytes)
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
	}{
		{"a\r\nb\r\n.\r\nNEXT", "a\r\nb\r\n", "NEXT", io.EOF},
		{".\r\n", "", "", io.EOF},
		{"..dot\r\n.\r\n", ".dot\r\n", "", io.EOF},
		{"\r\n\r\n.\r\n", "\r\n\r\n", "", io.EOF},
		// The smuggling endings, and their kin: never an end, always an error.
		{"a\n.\nMAIL", "", "", ErrBareLineEnding},
		{"a\r\n.\nMAIL", "", "", ErrBareLineEnding},
		{"a\n.\r\nMAIL", "", "", ErrBareLineEnding},
		{"a\r.\r\nMAIL", "", "", ErrBareLineEnding},
		{"a\r\n.\rMAIL\r\n.\r\n", "", "", ErrBareLineEnding},
		{".\rX\r\n.\r\n", "", "", ErrBareLineEnding},
		{"a\r\n\x00.\r\n", "", "", ErrNUL},
		{"a\r\nb", "", "", io.ErrUnexpectedEOF},
		{"a\r\n.\r", "", "", io.ErrUnexpectedEOF},
		{strings.Repeat("x", 20) + "\r\n.\r\n", "", "", ErrLineTooLong},
	} {
		out, rest, err := readData(tc.in, 12, 0)
		if !errors.Is(err, tc.err) {
			t.Errorf("%q: err %v, want %v", tc.in, err, tc.err)
			continue
		}
		if tc.err == io.EOF && (out != tc.out || rest != tc.rest) {
			t.Errorf("%q: message %q, left %q; want %q, %q", tc.in, out, rest, tc.out, tc.rest)
		}
	}
}

func TestDataReaderSizeLimit(t *testing.T) {
	in := "0123456789\r\n0123456789\r\n.\r\nNEXT"
	br := bufio.NewReader(strings.NewReader(in))
	r := newDataReader(br, 1000, 15)
	out, err := io.ReadAll(r)
	if !errors.Is(err, smtp.ErrDataTooLarge) || len(out) != 15 {
		t.Fatalf("read %d bytes, %v; want 15 and ErrDataTooLarge", len(out), err)
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

// FuzzDataReader checks the reader against a line-by-line reading of the
// rules: a message ends only at a line that is exactly "."; any CR or LF
// that is not part of a CRLF, or a NUL, before that is an error; never is a
// byte after the end read.
func FuzzDataReader(f *testing.F) {
	for _, s := range []string{"a\r\n.\r\n", "a\n.\nb\r\n.\r\n", "..x\r\n.\r\nMAIL", "\r\n.\rX\r\n.\r\n", "x\x00\r\n.\r\n"} {
		f.Add([]byte(s))
	}
	f.Fuzz(func(t *testing.T, in []byte) {
		out, rest, err := readData(string(in), 1<<20, 0)
		var want bytes.Buffer
		wantErr := io.ErrUnexpectedEOF
		consumed := 0
		for s := in; ; {
			i := bytes.Index(s, []byte("\r\n"))
			if i < 0 {
				// A CR as the last byte may yet be a CRLF: the input ran
				// out. Anything else bad is a framing error.
				if bytes.ContainsAny(bytes.TrimSuffix(s, []byte("\r")), "\r\n\x00") {
					wantErr = nil
				}
				break
			}
			line := s[:i]
			if bytes.ContainsAny(line, "\r\n\x00") {
				wantErr = nil
				break
			}
			s = s[i+2:]
			consumed += i + 2
			if string(line) == "." {
				wantErr = io.EOF
				break
			}
			want.Write(bytes.TrimPrefix(line, []byte(".")))
			want.WriteString("\r\n")
		}
		switch wantErr {
		case io.EOF:
			if err != io.EOF || out != want.String() || rest != string(in[consumed:]) {
				t.Fatalf("%q: got %q, %v, left %q; want %q, left %q", in, out, err, rest, want.String(), in[consumed:])
			}
			// A size limit cuts the same message at exactly that size.
			limit := int64(want.Len() / 2)
			out, _, err := readData(string(in), 1<<20, limit)
			if limit > 0 && (!errors.Is(err, smtp.ErrDataTooLarge) || out != want.String()[:limit]) {
				t.Fatalf("%q limited to %d: got %q, %v", in, limit, out, err)
			}
		case io.ErrUnexpectedEOF:
			if err != io.ErrUnexpectedEOF {
				t.Fatalf("%q: %v, want unexpected EOF", in, err)
			}
		default:
			if !errors.Is(err, ErrBareLineEnding) && !errors.Is(err, ErrNUL) {
				t.Fatalf("%q: %v, want a framing error", in, err)
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
		r := newDataReader(br, 2000, 0)
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
