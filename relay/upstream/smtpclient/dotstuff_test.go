package smtpclient

import (
	"bufio"
	"bytes"
	"math/rand/v2"
	"net/textproto"
	"strings"
	"testing"
)

// What dotStuffer sends, end of data included, is what textproto's
// DotWriter sends for the whole message, for any message and any chunking.
func TestDotStufferMatchesDotWriter(t *testing.T) {
	msgs := []string{"", "\r\n", ".\r\n", "..\r\n", "a\r\n.\r\n", ".a\r\n.b\r\n", "x", "x\r\n.", "a\r\n\r\n.\r\n\r\n", "a\r", ".", "\r",
		"From: a\r\n\r\n.hidden\r\n.\r\n"}
	r := rand.New(rand.NewPCG(3, 4))
	parts := []string{".", "..", "a", "\r\n", "\r\n.", "b c", "\r\n..\r\n"}
	for i := 0; i < 300; i++ {
		var b strings.Builder
		for j := r.IntN(40); j > 0; j-- {
			b.WriteString(parts[r.IntN(len(parts))])
		}
		b.WriteString("\r\n")
		msgs = append(msgs, b.String())
	}
	for _, m := range msgs {
		var want bytes.Buffer
		tw := textproto.NewWriter(bufio.NewWriter(&want))
		dw := tw.DotWriter()
		dw.Write([]byte(m))
		dw.Close()
		for _, chunk := range []int{1, 2, 3, 5, 1 << 20} {
			var got bytes.Buffer
			bw := bufio.NewWriter(&got)
			ds := newDotStuffer(bw)
			for rest := []byte(m); len(rest) > 0; {
				n := min(chunk, len(rest))
				if _, err := ds.Write(rest[:n]); err != nil {
					t.Fatal(err)
				}
				rest = rest[n:]
			}
			ds.finish()
			bw.Flush()
			if got.String() != want.String() {
				t.Fatalf("message %q in chunks of %d:\n got %q\nwant %q", m, chunk, got.String(), want.String())
			}
		}
	}
}

// The same for any message of CRLF lines and any chunking. Bare CR and LF
// inside the message are left out: the relay refuses or normalizes them
// before a message is queued, and textproto's writer rewrites them (a bare
// LF becomes CRLF), which ours does not.
func FuzzDotStuffer(f *testing.F) {
	f.Add([]byte("a\r\n.b\r\n..\r\n"), uint8(1))
	f.Add([]byte(".\r\n"), uint8(3))
	f.Add([]byte("x\r\n.\r\n..x"), uint8(2))
	f.Fuzz(func(t *testing.T, m []byte, chunk uint8) {
		if bytes.ContainsAny(bytes.ReplaceAll(m, []byte("\r\n"), nil), "\r\n") {
			return // out of scope (above); not a skip, which CI counts as a missing service
		}
		var want bytes.Buffer
		bw := bufio.NewWriter(&want)
		dw := textproto.NewWriter(bw).DotWriter()
		dw.Write(m)
		dw.Close()
		var got bytes.Buffer
		gw := bufio.NewWriter(&got)
		ds := newDotStuffer(gw)
		for rest, n := m, int(chunk)+1; len(rest) > 0; rest = rest[min(n, len(rest)):] {
			ds.Write(rest[:min(n, len(rest))])
		}
		ds.finish()
		gw.Flush()
		if got.String() != want.String() {
			t.Fatalf("%q in chunks of %d:\n got %q\nwant %q", m, int(chunk)+1, got.String(), want.String())
		}
	})
}
