package main

import (
	"context"
	"fmt"
	"io"
	"strings"
	"text/tabwriter"
	"time"

	"github.com/smarthost/smarthost/configs"
	"github.com/smarthost/smarthost/relay/daemon"
	"github.com/smarthost/smarthost/relay/queue"
)

var queueVerbs = map[string]verb{
	"handoff": {handoffUsage[:strings.Index(handoffUsage, "\n")], "hand every message of a stopped relay's spool to its peers (queue.handoff)", queueHandoff},
	"list":    {listUsage, "queued messages (all, or those the filters pick): ID, state, age, size, attempts, next attempt, sender, each recipient's state, last reply; --json as postqueue -j", queueListCmd},
	"show":    queueVerb("show", 1, "one message's state and its content as it will be sent", queueShow),
	"retry": queueVerb("retry", idOrAll, "ask the running relay to try a message, or with --all every message, now (it notices within 10 s)",
		func(sp *queue.Spool, id string, w io.Writer) error {
			if id != "" {
				return said(w, sp.Retry(id), "%s: retry requested", id)
			}
			n, err := sp.RetryAll()
			return said(w, err, "retry requested for %d message(s)", n)
		}),
	"hold":    manageVerb(queue.OpHold, "put messages on hold, as postsuper -h: not attempted, and not ageing towards queue.max_age, until released", false),
	"release": manageVerb(queue.OpRelease, "release held messages, as postsuper -H: attempted again at once", false),
	"delete":  manageVerb(queue.OpDelete, "delete messages without a bounce, as postsuper -d; by filter, says how many and asks first", true),
	"bounce":  manageVerb(queue.OpBounce, "return messages to their senders now, each with a DSN (5.0.0) for its pending recipients; by filter, asks first", true),
}

// said says what was done, unless err says it was not.
func said(w io.Writer, err error, format string, args ...any) error {
	if err == nil {
		fmt.Fprintf(w, format+"\n", args...)
	}
	return err
}

// idOrAll, as a queue verb's number of arguments: an ID, or --all (act
// gets the ID "").
const idOrAll = -1

// queueVerb makes a queue verb that takes n arguments (none, an ID, or
// idOrAll) and works on the spool of --config's queue.dir, whether or not a
// relay runs.
func queueVerb(name string, n int, about string, act func(sp *queue.Spool, id string, w io.Writer) error) verb {
	synopsis := map[int]string{0: "[--config FILE]", 1: "ID [--config FILE]", idOrAll: "ID|--all [--config FILE]"}[n]
	return verb{synopsis, about, func(c cmdIO, args []string) int {
		fs := c.flags("queue "+name, synopsis+"\n\n"+about)
		path := fs.String("config", "", "configuration file")
		all := new(bool)
		if n == idOrAll {
			all = fs.Bool("all", false, "every message in the queue")
		}
		pos, code, done := fs.parse(args)
		if done {
			return code
		}
		want := n
		if n == idOrAll {
			want = 1
			if *all {
				want = 0
			}
		}
		if len(pos) != want {
			fs.Usage()
			return exitBadConfig
		}
		f, _, code := fs.config(*path)
		if f == nil {
			return code
		}
		sp, err := queue.OpenSpool(f.Queue.Dir)
		if err != nil {
			errorf(c.stderr, "%v", err)
			return exitRuntime
		}
		id := ""
		if want == 1 {
			id = pos[0]
		}
		if err := act(sp, id, c.stdout); err != nil {
			errorf(c.stderr, "%v", err)
			return exitRuntime
		}
		return exitOK
	}}
}

// printQueue prints messages as a table, and their count.
func printQueue(w io.Writer, ms []queue.Queued, now time.Time) {
	tw := tabwriter.NewWriter(w, 0, 4, 2, ' ', 0)
	fmt.Fprintln(tw, "ID\tSTATE\tAGE\tSIZE\tATTEMPTS\tNEXT\tFROM\tRECIPIENTS\tLAST REPLY")
	for _, m := range ms {
		next := m.NextAttempt.Sub(now).Round(time.Second)
		var rcpts []string
		for _, r := range m.Recipients {
			rcpts = append(rcpts, r.Addr+"="+r.Status)
		}
		state := m.State
		if m.Waiting != "" {
			state = m.Waiting
		}
		fmt.Fprintf(tw, "%s\t%s\t%s\t%d\t%d\t%s\t<%s>\t%s\t%s\n", m.ID, state, now.Sub(m.Created).Round(time.Second),
			m.Size, m.Attempts, max(next, 0), m.From, strings.Join(rcpts, ","), m.LastError)
	}
	tw.Flush()
	fmt.Fprintf(w, "%d message(s)\n", len(ms))
}

func queueShow(sp *queue.Spool, id string, w io.Writer) error {
	m, body, err := sp.Show(id)
	if err != nil {
		return err
	}
	fmt.Fprintf(w, "ID: %s\nFrom: <%s>\nCreated: %s\nAttempts: %d\nNext attempt: %s\n",
		m.ID, m.From, m.Created.Format(time.RFC3339), m.Attempts, m.NextAttempt.Format(time.RFC3339))
	for _, r := range m.Recipients {
		fmt.Fprintf(w, "Recipient: <%s> %s %s\n", r.Addr, r.Status, r.Error)
	}
	fmt.Fprintf(w, "\n%s", body)
	return nil
}

const handoffUsage = "[--config FILE] [--to NAME] [--timeout 5m]\n\n" +
	"Hands every message in the spool of a stopped relay (queue.dir) to the peers of\n" +
	"queue.handoff.upstreams, or to the upstream --to names; 0 when all are handed off,\n" +
	"1 when some are left (they stay in the spool)."

// queueHandoff is `smarthost queue handoff`: drain, for the spool of a node
// that is gone.
func queueHandoff(c cmdIO, args []string) int {
	fs := c.flags("queue handoff", handoffUsage)
	path := fs.String("config", "", "configuration file")
	to := fs.String("to", "", "hand to this upstream only (default: queue.handoff.upstreams)")
	timeout := fs.Duration("timeout", 5*time.Minute, "how long to keep trying")
	if _, code, done := fs.parse(args); done {
		return code
	}
	f, source, code := fs.config(*path)
	if f == nil {
		return code
	}
	ctx, cancel := context.WithTimeout(context.Background(), *timeout)
	defer cancel()
	log := daemon.NewLogger(configs.Log{Format: "text", Level: "info"}, c.stderr)
	handed, left, err := daemon.Handoff(ctx, f, *to, log)
	if err != nil {
		return fail(c, source, "queue handoff", err)
	}
	fmt.Fprintf(c.stdout, "%d message(s) handed off, %d left\n", handed, left)
	if left > 0 {
		return exitRuntime
	}
	return exitOK
}
