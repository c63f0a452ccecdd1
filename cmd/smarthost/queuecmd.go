package main

import (
	"context"
	"fmt"
	"strings"
	"time"

	"github.com/smarthost/smarthost/cmd/internal/cmdline"
	"github.com/smarthost/smarthost/configs"
	"github.com/smarthost/smarthost/relay/daemon"
	"github.com/smarthost/smarthost/relay/inspect"
	"github.com/smarthost/smarthost/relay/queue"
)

var queueVerbs = map[string]cmdline.Verb{
	"handoff": {Usage: handoffUsage[:strings.Index(handoffUsage, "\n")], About: "hand every message of a stopped relay's spool to its peers (queue.handoff)", Run: queueHandoff},
	"list":    {Usage: listUsage, About: "queued messages (all, or those the filters pick): ID, state, age, size, attempts, next attempt, sender, each recipient's state, last reply; --json as postqueue -j", Run: queueListCmd},
	"show":    {Usage: showUsage, About: showAbout, Run: queueShow},
	"retry":   {Usage: retryUsage, About: retryAbout, Run: queueRetry},
	"hold":    manageVerb(queue.OpHold, "put messages on hold, as postsuper -h: not attempted, and not ageing towards queue.max_age, until released", false),
	"release": manageVerb(queue.OpRelease, "release held messages, as postsuper -H: attempted again at once", false),
	"delete":  manageVerb(queue.OpDelete, "delete messages without a bounce, as postsuper -d; by filter, says how many and asks first", true),
	"bounce":  manageVerb(queue.OpBounce, "return messages to their senders now, each with a DSN (5.0.0) for its pending recipients; by filter, asks first", true),
}

// openSpool opens the spool (queue.dir) of the configuration --config
// names, whether or not a relay runs on it; nil and the exit code when it
// cannot.
func openSpool(fs cmdline.Flags, path string) (*queue.Spool, int) {
	f, _, code := fs.Config(path)
	if f == nil {
		return nil, code
	}
	sp, err := queue.OpenSpool(f.Queue.Dir)
	if err != nil {
		return nil, fail(fs.IO, "", "", err)
	}
	return sp, cmdline.OK
}

const (
	showUsage  = "ID [--config FILE]"
	showAbout  = "one message's state and its content as it will be sent"
	retryUsage = "ID|--all [--config FILE]"
	retryAbout = "ask the running relay to try a message, or with --all every message, now (it notices within 10 s)"
)

func queueShow(c cmdline.IO, args []string) int {
	fs := c.Flags("queue show", showUsage+"\n\n"+showAbout)
	path := fs.String("config", "", "configuration file")
	pos, code, done := fs.ParseArgs(args)
	if done || len(pos) != 1 {
		return fs.BadArgs(code, done)
	}
	sp, code := openSpool(fs, *path)
	if sp == nil {
		return code
	}
	return fail(c, "", "", sp.WriteShow(c.Stdout, pos[0]))
}

func queueRetry(c cmdline.IO, args []string) int {
	fs := c.Flags("queue retry", retryUsage+"\n\n"+retryAbout)
	path := fs.String("config", "", "configuration file")
	all := fs.Bool("all", false, "every message in the queue")
	pos, code, done := fs.ParseArgs(args)
	want := 1
	if *all {
		want = 0
	}
	if done || len(pos) != want {
		return fs.BadArgs(code, done)
	}
	sp, code := openSpool(fs, *path)
	if sp == nil {
		return code
	}
	if !*all {
		return fail(c, "", "", said(c, sp.Retry(pos[0]), "%s: retry requested", pos[0]))
	}
	n, err := sp.RetryAll()
	return fail(c, "", "", said(c, err, "retry requested for %d message(s)", n))
}

// said says what was done, unless err says it was not.
func said(c cmdline.IO, err error, format string, args ...any) error {
	if err == nil {
		fmt.Fprintf(c.Stdout, format+"\n", args...)
	}
	return err
}

const listUsage = "[--json] [--from A] [--to A] [--older-than D] [--upstream NAME] [--state deferred|held|active] [--config FILE]"

// queueListCmd is `smarthost queue list`: the spool's messages, read from
// its files, whether or not a relay runs (as Postfix's mailq).
func queueListCmd(c cmdline.IO, args []string) int {
	fs := c.Flags("queue list", listUsage+"\n\nEvery queued message the filters pick (all without one), oldest first:\n"+
		"ID, age, size, attempts, next attempt, sender, each recipient's state, last reply.\n"+
		"--json: one JSON object per message per line, as postqueue -j.")
	path := fs.String("config", "", "configuration file")
	asJSON := fs.Bool("json", false, "one JSON object per message per line")
	readFilter := inspect.FilterFlags(fs.FlagSet)
	pos, code, done := fs.ParseArgs(args)
	if done {
		return code
	}
	filter, err := readFilter(nil)
	if len(pos) != 0 || err != nil {
		if err != nil {
			cmdline.Errorf(c.Stderr, "queue list: %v", err)
		}
		return cmdline.BadConfig
	}
	sp, code := openSpool(fs, *path)
	if sp == nil {
		return code
	}
	now := time.Now()
	ms, err := sp.Select(filter, now)
	if err == nil {
		err = queue.WriteList(c.Stdout, ms, *asJSON, now)
	}
	return fail(c, "", "", err)
}

// manageVerb makes `smarthost queue hold|release|delete|bounce`: op on
// the messages given by ID or picked by the filters, through the running
// relay (or on the spool when none runs); with confirm, asking first
// unless --yes.
func manageVerb(op, about string, confirm bool) cmdline.Verb {
	synopsis := "ID...|FILTERS [--config FILE]"
	if confirm {
		synopsis = "ID...|FILTERS [--yes] [--config FILE]"
	}
	return cmdline.Verb{Usage: synopsis, About: about, Run: func(c cmdline.IO, args []string) int {
		fs := c.Flags("queue "+op, synopsis+"\n\n"+about+
			"\nFILTERS: --from, --to, --older-than, --upstream, --state (as queue list); every one given must match.")
		path := fs.String("config", "", "configuration file")
		yes := new(bool)
		if confirm {
			yes = fs.Bool("yes", false, "do not ask first")
		}
		readFilter := inspect.FilterFlags(fs.FlagSet)
		ids, code, done := fs.ParseArgs(args)
		if done {
			return code
		}
		filter, err := readFilter(ids)
		if err != nil || filter.Empty() {
			if err == nil {
				err = fmt.Errorf("name a queue ID or a filter (--from, --to, --older-than, --upstream, --state)")
			}
			cmdline.Errorf(c.Stderr, "queue %s: %v", op, err)
			return cmdline.BadConfig
		}
		f, _, code := fs.Config(*path)
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
func manage(c cmdline.IO, f *configs.File, op string, filter queue.Filter, ask bool) int {
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	ctl, err := daemon.OpenQueueControl(f, daemon.NewLogger(configs.Log{Format: "text", Level: "warn"}, c.Stderr))
	if err != nil {
		cmdline.Errorf(c.Stderr, "queue %s: %v", op, err)
		return cmdline.Runtime
	}
	defer ctl.Close()
	n := -1 // not counted
	if ask {
		if filter, n, err = ctl.Pick(ctx, filter); err != nil {
			return fail(c, "", "queue "+op, err)
		}
	}
	switch {
	case n == 0:
		fmt.Fprintln(c.Stdout, "no message matches")
		return cmdline.OK
	case n > 0 && !c.Confirmed(fmt.Sprintf("%s %d message(s)? [y/N] ", op, n)):
		fmt.Fprintln(c.Stdout, "nothing done")
		return cmdline.Runtime
	}
	ids, err := ctl.Manage(ctx, op, filter, daemon.AskedBy("smarthost queue "+op))
	done := map[string]string{queue.OpHold: "held", queue.OpRelease: "released", queue.OpDelete: "deleted", queue.OpBounce: "bounced"}[op]
	for _, id := range ids {
		fmt.Fprintf(c.Stdout, "%s: %s\n", id, done)
	}
	fmt.Fprintf(c.Stdout, "%d message(s) %s\n", len(ids), done)
	return fail(c, "", "queue "+op, err)
}

const handoffUsage = "[--config FILE] [--to NAME] [--timeout 5m]\n\n" +
	"Hands every message in the spool of a stopped relay (queue.dir) to the peers of\n" +
	"queue.handoff.upstreams, or to the upstream --to names; 0 when all are handed off,\n" +
	"1 when some are left (they stay in the spool)."

// queueHandoff is `smarthost queue handoff`: drain, for the spool of a node
// that is gone.
func queueHandoff(c cmdline.IO, args []string) int {
	fs := c.Flags("queue handoff", handoffUsage)
	path := fs.String("config", "", "configuration file")
	to := fs.String("to", "", "hand to this upstream only (default: queue.handoff.upstreams)")
	timeout := fs.Duration("timeout", 5*time.Minute, "how long to keep trying")
	if _, code, done := fs.ParseArgs(args); done {
		return code
	}
	f, source, code := fs.Config(*path)
	if f == nil {
		return code
	}
	ctx, cancel := context.WithTimeout(context.Background(), *timeout)
	defer cancel()
	log := daemon.NewLogger(configs.Log{Format: "text", Level: "info"}, c.Stderr)
	handed, left, err := daemon.Handoff(ctx, f, *to, log)
	if err != nil {
		return fail(c, source, "queue handoff", err)
	}
	fmt.Fprintf(c.Stdout, "%d message(s) handed off, %d left\n", handed, left)
	if left > 0 {
		return cmdline.Runtime
	}
	return cmdline.OK
}
