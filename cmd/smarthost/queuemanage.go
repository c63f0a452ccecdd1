package main

import (
	"bufio"
	"context"
	"encoding/json"
	"fmt"
	"io"
	"net/url"
	"os/user"
	"strings"
	"time"

	"github.com/smarthost/smarthost/configs"
	"github.com/smarthost/smarthost/relay/daemon"
	"github.com/smarthost/smarthost/relay/inspect"
	"github.com/smarthost/smarthost/relay/queue"
)

// filterFlags are the flags that pick queued messages, as the admin API's
// query parameters (inspect.ParseFilter) name them.
type filterFlags struct {
	from, to, upstream, state *string
	olderThan                 *time.Duration
}

func addFilterFlags(fs flags) filterFlags {
	return filterFlags{
		from:      fs.String("from", "", "the sender: an address, @domain, or a pattern with * (<> for bounces)"),
		to:        fs.String("to", "", "a recipient: an address, @domain, or a pattern with *"),
		upstream:  fs.String("upstream", "", "a pending recipient was last tried at this upstream"),
		state:     fs.String("state", "", "deferred, held or active (awaiting its first attempt, or being delivered)"),
		olderThan: fs.Duration("older-than", 0, "arrived at least this long ago (1h, 30m)"),
	}
}

// filter is the queue.Filter of the flags and the IDs given, checked as
// the admin API checks it.
func (ff filterFlags) filter(ids []string) (queue.Filter, error) {
	v := url.Values{"id": ids}
	for k, s := range map[string]string{"from": *ff.from, "to": *ff.to, "upstream": *ff.upstream, "state": *ff.state} {
		if s != "" {
			v.Set(k, s)
		}
	}
	if *ff.olderThan != 0 {
		v.Set("older_than", ff.olderThan.String())
	}
	return inspect.ParseFilter(v)
}

const listUsage = "[--json] [--from A] [--to A] [--older-than D] [--upstream NAME] [--state deferred|held|active] [--config FILE]"

// queueListCmd is `smarthost queue list`: the spool's messages, read from
// its files, whether or not a relay runs (as Postfix's mailq).
func queueListCmd(c cmdIO, args []string) int {
	fs := c.flags("queue list", listUsage+"\n\nEvery queued message the filters pick (all without one), oldest first:\n"+
		"ID, age, size, attempts, next attempt, sender, each recipient's state, last reply.\n"+
		"--json: one JSON object per message per line, as postqueue -j.")
	path := fs.String("config", "", "configuration file")
	asJSON := fs.Bool("json", false, "one JSON object per message per line")
	ff := addFilterFlags(fs)
	pos, code, done := fs.parse(args)
	if done {
		return code
	}
	filter, err := ff.filter(nil)
	if len(pos) != 0 || err != nil {
		if err != nil {
			errorf(c.stderr, "queue list: %v", err)
		}
		return exitBadConfig
	}
	f, _, code := fs.config(*path)
	if f == nil {
		return code
	}
	sp, err := queue.OpenSpool(f.Queue.Dir)
	if err == nil {
		err = listSpool(sp, filter, *asJSON, c.stdout)
	}
	if err != nil {
		errorf(c.stderr, "%v", err)
		return exitRuntime
	}
	return exitOK
}

// listSpool prints the spool's messages that filter picks.
func listSpool(sp *queue.Spool, filter queue.Filter, asJSON bool, w io.Writer) error {
	ms, err := sp.List()
	if err != nil {
		return err
	}
	// What the running relay has waiting for an upstream's limits.
	waiting, err := sp.Waiting()
	if err != nil {
		return err
	}
	now := time.Now()
	var picked []queue.Queued
	for _, m := range ms {
		state := m.State(false)
		if filter.Match(m, state, now) {
			q := queue.Queued{Message: *m, State: state}
			if w, ok := waiting[m.ID]; ok {
				q.Waiting = w.State()
			}
			picked = append(picked, q)
		}
	}
	if !asJSON {
		printQueue(w, picked, now)
		return nil
	}
	enc := json.NewEncoder(w)
	enc.SetEscapeHTML(false)
	for _, m := range picked {
		if err := enc.Encode(m); err != nil {
			return err
		}
	}
	return nil
}

// manageVerb makes `smarthost queue hold|release|delete|bounce`: op on
// the messages given by ID or picked by the filters, through the running
// relay (or on the spool when none runs); with confirm, asking first
// unless --yes.
func manageVerb(op, about string, confirm bool) verb {
	synopsis := "ID...|FILTERS [--config FILE]"
	if confirm {
		synopsis = "ID...|FILTERS [--yes] [--config FILE]"
	}
	return verb{synopsis, about, func(c cmdIO, args []string) int {
		fs := c.flags("queue "+op, synopsis+"\n\n"+about+
			"\nFILTERS: --from, --to, --older-than, --upstream, --state (as queue list); every one given must match.")
		path := fs.String("config", "", "configuration file")
		yes := new(bool)
		if confirm {
			yes = fs.Bool("yes", false, "do not ask first")
		}
		ff := addFilterFlags(fs)
		ids, code, done := fs.parse(args)
		if done {
			return code
		}
		filter, err := ff.filter(ids)
		if err != nil || filter.Empty() {
			if err == nil {
				err = fmt.Errorf("name a queue ID or a filter (--from, --to, --older-than, --upstream, --state)")
			}
			errorf(c.stderr, "queue %s: %v", op, err)
			return exitBadConfig
		}
		f, _, code := fs.config(*path)
		if f == nil {
			return code
		}
		// By ID, the messages are named one by one; by filter, how many
		// it picks is worth a look first.
		byFilter := filter
		byFilter.IDs = nil
		return manage(c, f, op, filter, confirm && !*yes && !byFilter.Empty())
	}}
}

// manage does op to what filter picks; ask: say how many first and go on
// only on a yes.
func manage(c cmdIO, f *configs.File, op string, filter queue.Filter, ask bool) int {
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	ctl, err := daemon.OpenQueueControl(f, daemon.NewLogger(configs.Log{Format: "text", Level: "warn"}, c.stderr))
	if err != nil {
		errorf(c.stderr, "queue %s: %v", op, err)
		return exitRuntime
	}
	defer ctl.Close()
	if ask {
		ms, err := ctl.List(ctx, filter)
		if err != nil {
			errorf(c.stderr, "queue %s: %v", op, err)
			return exitRuntime
		}
		if len(ms) == 0 {
			fmt.Fprintln(c.stdout, "no message matches")
			return exitOK
		}
		filter.IDs = nil
		for _, m := range ms {
			filter.IDs = append(filter.IDs, m.ID)
		}
		if !confirmed(c, fmt.Sprintf("%s %d message(s)? [y/N] ", op, len(ms))) {
			fmt.Fprintln(c.stdout, "nothing done")
			return exitRuntime
		}
	}
	ids, err := ctl.Manage(ctx, op, filter, by(op))
	for _, id := range ids {
		fmt.Fprintf(c.stdout, "%s: %s\n", id, pastTense[op])
	}
	fmt.Fprintf(c.stdout, "%d message(s) %s\n", len(ids), pastTense[op])
	if err != nil {
		errorf(c.stderr, "queue %s: %v", op, err)
		return exitRuntime
	}
	return exitOK
}

var pastTense = map[string]string{queue.OpHold: "held", queue.OpRelease: "released", queue.OpDelete: "deleted", queue.OpBounce: "bounced"}

// confirmed asks question on stdout and reads the answer from stdin.
func confirmed(c cmdIO, question string) bool {
	fmt.Fprint(c.stdout, question)
	line, _ := bufio.NewReader(c.stdin).ReadString('\n')
	answer := strings.ToLower(strings.TrimSpace(line))
	return answer == "y" || answer == "yes"
}

// by is who asked, for the history: the command and the system user.
func by(op string) string {
	s := "smarthost queue " + op
	if u, err := user.Current(); err == nil {
		s += " (" + u.Username + ")"
	}
	return s
}
