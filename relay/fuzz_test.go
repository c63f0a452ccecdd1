package relay

import (
	"bufio"
	"bytes"
	"errors"
	"io"
	"testing"
)

// FuzzDataReader: the CRLF check passes a message through unchanged exactly
// when it has no bare CR or LF, and the header reader never loses a byte.
func FuzzDataReader(f *testing.F) {
	for _, s := range []string{"From: a@b.c\r\n\r\nbody\r\n", "a\nb\r\n", "a\rb\r\n", "x\r\n.\r\n", "\r\n", "", "h: v\r\n continued\r\n\r\n\r\n"} {
		f.Add([]byte(s))
	}
	f.Fuzz(func(t *testing.T, in []byte) {
		out, err := io.ReadAll(&crlfReader{r: bytes.NewReader(in)})
		bare := false
		for i, b := range in {
			if b == '\n' && (i == 0 || in[i-1] != '\r') || b == '\r' && (i == len(in)-1 || in[i+1] != '\n') {
				bare = true
			}
		}
		if bare != errors.Is(err, errBareLineEnding) {
			t.Fatalf("%q: bare=%v err=%v", in, bare, err)
		}
		if bare {
			return
		}
		if !bytes.Equal(out, in) {
			t.Fatalf("changed %q to %q", in, out)
		}
		br := bufio.NewReader(bytes.NewReader(in))
		h, err := readHeaderBlock(br, 1<<20)
		if err != nil {
			t.Fatal(err)
		}
		rest, _ := io.ReadAll(br)
		whole := append(h, rest...)
		// The header block may gain the empty line a body-less message
		// lacks, nothing else.
		if !bytes.HasPrefix(whole, in) && !bytes.Equal(whole[:len(in)], in) {
			t.Fatalf("header split lost bytes: %q -> %q + %q", in, h, rest)
		}
	})
}
