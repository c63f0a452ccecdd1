package upstream

import (
	"cmp"
	"context"
	"fmt"
	"strings"
	"time"

	"github.com/smarthost/smarthost/ratelimit"
	"github.com/smarthost/smarthost/relay/queue"
)

// Deliver sends m's pending recipients, grouped by route. Each group tries
// its upstreams in order; a recipient moves on to the next upstream after a
// temporary failure (connection refused, 4xx), when the upstream cannot
// take the message (no SMTPUTF8, too large), or when it is on hold after a
// throttle reply, and stops at acceptance or a permanent refusal. One that
// no upstream of its route could take fails at once, unless one of them
// failed only for the moment, or is on hold (then it waits for the hold,
// a queue.WaitError). Under shaping, a group whose upstream's budget has
// no room waits for it (a queue.WaitError): no attempt.
func (r *Router) Deliver(ctx context.Context, m *queue.Message) []queue.Outcome {
	pending := m.PendingRecipients()
	out := make([]queue.Outcome, len(pending))
	type group struct {
		list []string
		p    queue.Priority
		idx  []int
	}
	groups := map[string]*group{} // failover list → its recipients
	var order []string
	for i, rcpt := range pending {
		list, p := r.routeFor(m, rcpt)
		key := strings.Join(list, "\x00")
		g := groups[key]
		if g == nil {
			g = &group{list: list, p: p}
			groups[key] = g
			order = append(order, key)
		}
		g.idx = append(g.idx, i)
	}
	for _, key := range order {
		g := groups[key]
		r.deliverGroup(ctx, m, pending, g.list, g.p, g.idx, out)
	}
	for i, rcpt := range pending {
		if rcpt.Archive {
			r.cfg.Metrics.archived(out[i].Err == nil)
		}
	}
	return out
}

// deliverGroup delivers the recipients left (indexes into pending) of one
// failover list, setting their outcomes in out.
func (r *Router) deliverGroup(ctx context.Context, m *queue.Message, pending []queue.Recipient, list []string, p queue.Priority, left []int, out []queue.Outcome) {
	transient := make([]queue.Outcome, len(pending)) // the last temporary failure, if any
	var hold *queue.WaitError                        // the first hold met
	for _, name := range r.order(list) {
		if len(left) == 0 {
			return
		}
		to := make([]queue.Recipient, len(left))
		for j, i := range left {
			to[j] = pending[i]
		}
		a, w := r.admit(ctx, name, m, len(to), p)
		switch {
		case w != nil && a.Held:
			hold = cmp.Or(hold, w)
			continue
		case w != nil:
			for _, i := range left {
				out[i] = queue.Outcome{Err: w, Upstream: name}
			}
			return
		}
		var h *queue.WaitError
		left, h = r.send(ctx, m, name, to, left, a, p, out, transient)
		hold = cmp.Or(hold, h)
	}
	for _, i := range left {
		switch c, _ := classify(out[i].Err); {
		case queue.IsWait(out[i].Err):
		case transient[i].Err != nil:
			out[i] = transient[i] // an upstream that was down may take it later
		case hold != nil:
			out[i].Err = hold // an upstream on hold will
		case c == unsupported:
			out[i].Err = queue.Permanent(&queue.UnsupportedError{Err: out[i].Err})
		}
	}
}

// send makes one transaction with upstream name for to (the recipients
// left), sets their outcomes, and returns those that the route's next
// upstream should try, and the hold a throttle reply started.
func (r *Router) send(ctx context.Context, m *queue.Message, name string, to []queue.Recipient, left []int,
	a ratelimit.Admission, p queue.Priority, out, transient []queue.Outcome) ([]int, *queue.WaitError) {
	start := time.Now()
	res := r.byName[name].t.Send(ctx, m, to)
	if lw := noSession(res); lw != nil {
		r.refund(ctx, name, len(to), a)
		w := r.wait(name, lw.a, p)
		for _, i := range left {
			out[i] = queue.Outcome{Err: w, Upstream: name}
		}
		return nil, nil
	}
	took := time.Since(start)
	sent, failed := 0, 0
	var retry []int
	var throttle *ThrottleRule
	var reply error
	for j, i := range left {
		o := res[j]
		if o.Err != nil {
			o.Err = fmt.Errorf("upstream %s: %w", name, o.Err)
		}
		o.Upstream, o.Took = name, took
		if o.Reply == "" {
			o.Reply = replyOf(o.Err) // a refusal before the transaction (AUTH)
		}
		out[i] = o
		err := o.Err
		if r.shaping != nil {
			if rule, ok := throttleRule(r.shaping.rules[name], err); ok {
				throttle, reply = &rule, err
				retry = append(retry, i)
				continue
			}
		}
		switch c, _ := classify(err); {
		case err == nil:
			sent++
		case queue.IsPermanent(err):
			failed++
		case c == unsupported:
			retry = append(retry, i)
		default:
			transient[i] = out[i]
			retry = append(retry, i)
		}
	}
	r.cfg.Metrics.observe(name, took, sent, len(retry), failed)
	if len(retry) > 0 {
		r.log.Info("upstream deferred", "msg_id", m.ID, "upstream", name, "recipients", len(retry), "err", out[retry[0]].Err)
	}
	return retry, r.afterSend(ctx, name, a, throttle, reply, p)
}
