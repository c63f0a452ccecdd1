package relay

import (
	"bufio"
	"bytes"
	"io"
	"testing"
)

// FuzzHeaderBlock: splitting the header block off never loses or changes a
// byte; it may only add the empty line that a body-less message lacks.
// (The DATA reader itself is fuzzed in relay/smtpd.)
func FuzzHeaderBlock(f *testing.F) {
	for _, s := range []string{"From: a@b.c\r\n\r\nbody\r\n", "\r\n", "", "h: v\r\n continued\r\n\r\n\r\n", "no header end\r\n"} {
		f.Add([]byte(s))
	}
	f.Fuzz(func(t *testing.T, in []byte) {
		br := bufio.NewReader(bytes.NewReader(in))
		h, err := readHeaderBlock(br, 1<<20)
		if err != nil {
			t.Fatal(err)
		}
		rest, _ := io.ReadAll(br)
		whole := append(h, rest...)
		if !bytes.HasPrefix(whole, in) {
			t.Fatalf("header split lost bytes: %q -> %q + %q", in, h, rest)
		}
		if extra := whole[len(in):]; len(extra) > 4 || len(rest) > 0 && len(extra) > 0 {
			t.Fatalf("header split added %q to %q", extra, in)
		}
	})
}
