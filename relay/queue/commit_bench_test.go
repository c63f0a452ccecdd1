package queue_test

import (
	"log/slog"
	"strings"
	"testing"

	"github.com/smarthost/smarthost/relay/history"
	"github.com/smarthost/smarthost/relay/queue"
)

// BenchmarkCommit10KB: spool one 10 KB message durably, from parallel
// goroutines as concurrent sessions do: into the journal (records of
// concurrent commits share one write and one fdatasync), and as a file of
// its own (data and envelope trailer in one fsync, shared folder sync), as
// messages beyond InlineMax are; and into the journal with the delivery
// history told of each (journal_history: what keeping it costs the submit
// path; its writing is the history's own goroutine's).
func BenchmarkCommit10KB(b *testing.B) {
	for _, c := range []struct {
		name    string
		inline  int64
		history bool
	}{{"journal", 0, false}, {"file", -1, false}, {"journal_history", 0, true}} {
		b.Run(c.name, func(b *testing.B) {
			dir := b.TempDir()
			cfg := queue.Config{Dir: dir + "/queue", InlineMax: c.inline}
			if c.history {
				h, err := history.Open(history.Config{Dir: dir + "/history"})
				if err != nil {
					b.Fatal(err)
				}
				defer h.Close()
				cfg.Observer = h
			}
			q, err := queue.Open(cfg, nil, slog.New(slog.DiscardHandler))
			if err != nil {
				b.Fatal(err)
			}
			defer q.Close()
			body := []byte(strings.Repeat(strings.Repeat("x", 98)+"\r\n", 100))
			env := queue.Envelope{From: "a@x.org", To: []string{"b@y.org"}, MessageID: "<bench@x.org>", Client: "192.0.2.1"}
			b.SetBytes(int64(len(body)))
			b.SetParallelism(8)
			b.RunParallel(func(pb *testing.PB) {
				for pb.Next() {
					d, err := q.Create()
					if err != nil {
						b.Fatal(err)
					}
					d.Write(body)
					if _, err := d.Commit(env, []byte("Received: x\r\n")); err != nil {
						b.Fatal(err)
					}
				}
			})
		})
	}
}
