package main

import (
	"fmt"
	"io"
	"strings"
	"text/tabwriter"
	"time"

	"github.com/smarthost/smarthost/relay/queue"
)

var queueVerbs = map[string]verb{
	"handoff": {handoffUsage[:strings.Index(handoffUsage, "\n")], "hand every message of a stopped relay's spool to its peers (queue.handoff)", queueHandoff},
	"list":    queueVerb("list", 0, "every queued message: ID, age, size, attempts, next attempt, sender, each recipient's state, last reply", queueList),
	"show":    queueVerb("show", 1, "one message's state and its content as it will be sent", queueShow),
	"retry": queueVerb("retry", idOrAll, "ask the running relay to try a message, or with --all every message, now (it notices within 10 s)",
		func(sp *queue.Spool, id string, w io.Writer) error {
			if id == "" {
				n, err := sp.RetryAll()
				if err != nil {
					return err
				}
				fmt.Fprintf(w, "retry requested for %d message(s)\n", n)
				return nil
			}
			if err := sp.Retry(id); err != nil {
				return err
			}
			fmt.Fprintf(w, "%s: retry requested\n", id)
			return nil
		}),
	"delete": queueVerb("delete", 1, "delete a message without a bounce (one awaiting its first attempt is dropped by the relay at its next scan)",
		func(sp *queue.Spool, id string, w io.Writer) error {
			if err := sp.Delete(id); err != nil {
				return err
			}
			fmt.Fprintf(w, "%s: deleted\n", id)
			return nil
		}),
}

// idOrAll, as a queue verb's number of arguments: an ID, or --all (act
// gets the ID "").
const idOrAll = -1

// queueVerb makes a queue verb that takes n arguments (none, an ID, or
// idOrAll) and works on the spool of --config's queue.dir, whether or not a
// relay runs.
func queueVerb(name string, n int, about string, act func(sp *queue.Spool, id string, w io.Writer) error) verb {
	usage := map[int]string{0: "[--config FILE]", 1: "ID [--config FILE]", idOrAll: "ID|--all [--config FILE]"}[n]
	return verb{usage: usage, about: about, run: func(c cmdIO, args []string) int {
		fs := c.flags("queue "+name, usage+"\n\n"+about)
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

func queueList(sp *queue.Spool, _ string, w io.Writer) error {
	ms, err := sp.List()
	if err != nil {
		return err
	}
	tw := tabwriter.NewWriter(w, 0, 4, 2, ' ', 0)
	fmt.Fprintln(tw, "ID\tAGE\tSIZE\tATTEMPTS\tNEXT\tFROM\tRECIPIENTS\tLAST REPLY")
	for _, m := range ms {
		next := time.Until(m.NextAttempt).Round(time.Second)
		var rcpts []string
		for _, r := range m.Recipients {
			rcpts = append(rcpts, r.Addr+"="+r.Status)
		}
		fmt.Fprintf(tw, "%s\t%s\t%d\t%d\t%s\t<%s>\t%s\t%s\n", m.ID, time.Since(m.Created).Round(time.Second),
			m.Size, m.Attempts, max(next, 0), m.From, strings.Join(rcpts, ","), m.LastError)
	}
	tw.Flush()
	fmt.Fprintf(w, "%d message(s)\n", len(ms))
	return nil
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
