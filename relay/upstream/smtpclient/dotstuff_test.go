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
