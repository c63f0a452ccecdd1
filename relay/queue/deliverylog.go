package queue

import (
	"context"
	"log/slog"
	"time"
)

// tell writes the delivery log, one line per recipient per attempt, and
// tells the observer. The line has what an administrator is asked about
// (which upstream, what it said, with its own queue ID, how long it took)
// and what finds it again: the queue ID, the Message-ID, the sender, the
// recipient and the submitter. handoff: the attempt went to the peers.
func (q *Queue) tell(m *Message, fates []fate, now time.Time, handoff bool) {
	for _, f := range fates {
		e := m.event(f.kind, now)
		if handoff && f.kind == EventDelivered {
			e.Kind = EventHandedOff
		}
		o := f.o
		e.Rcpt, e.Archive, e.Attempt, e.Reason, e.By = f.rcpt.Addr, f.rcpt.Archive, f.attempt, f.reason, f.by
		e.Upstream, e.Addr, e.TLS, e.Reply = o.Upstream, o.Addr, o.TLS, o.Reply
		text := o.Reply
		if o.Err != nil && o.Reply == "" {
			e.Error = o.Err.Error()
			text = e.Error
		}
		e.Status = statusOf(f.kind, text)
		total := now.Sub(m.Created)
		e.Delay, e.DelayTransfer, e.DelayQueue = seconds(total), seconds(o.Took), seconds(max(total-o.Took, 0))
		q.logFate(e)
		q.observe(e)
	}
}

// logFate writes an event of an attempt as its delivery log line.
func (q *Queue) logFate(e Event) {
	msg, lvl, status := "delivered", slog.LevelInfo, "sent"
	switch {
	case e.Kind == EventHandedOff:
		msg, status = "handed off", "handed_off"
	case e.Kind == EventDeferred:
		msg, status = "delivery deferred", "deferred"
	case e.Kind == EventBounced && e.Archive:
		msg, lvl, status = "archive copy failed", slog.LevelError, "bounced"
	case e.Kind == EventBounced:
		msg, lvl, status = "delivery failed", slog.LevelWarn, "bounced"
	}
	attrs := []slog.Attr{
		slog.String("msg_id", e.ID), slog.String("message_id", e.MessageID),
		slog.String("from", e.From), slog.String("rcpt", e.Rcpt), slog.String("user", e.User),
		slog.String("status", status), slog.String("dsn", e.Status), slog.Int("attempt", e.Attempt),
		slog.String("upstream", e.Upstream), slog.String("upstream_addr", e.Addr), slog.String("tls", e.TLS),
		slog.Float64("delay", e.Delay), slog.Float64("delay_queue", e.DelayQueue), slog.Float64("delay_transfer", e.DelayTransfer),
	}
	if e.Reply != "" {
		attrs = append(attrs, slog.String("reply", e.Reply))
	}
	if e.Error != "" {
		attrs = append(attrs, slog.String("err", e.Error))
	}
	if e.Reason != "" {
		attrs = append(attrs, slog.String("reason", e.Reason))
	}
	if e.Archive {
		attrs = append(attrs, slog.Bool("archive", true))
	}
	q.log.LogAttrs(context.Background(), lvl, msg, attrs...)
}
