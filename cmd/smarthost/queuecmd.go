package main

import (
	"fmt"
	"io"
	"strings"
	"text/tabwriter"
	"time"

	"github.com/smarthost/smarthost/relay/queue"
)

func queueCmd(args []string, stdout, stderr io.Writer) int {
	fs := newFlags("queue", stderr)
	path := fs.String("config", "", "configuration file")
	pos, err := parseFlags(fs, args)
	if err != nil {
		return exitBadConfig
	}
	if len(pos) == 0 || *path == "" {
		errorf(stderr, "usage: smarthost queue list|show ID|retry ID|delete ID --config FILE")
		return exitBadConfig
	}
	f, err := loadConfig(*path)
	if err != nil {
		printProblems(stderr, *path, err)
		return exitBadConfig
	}
	sp, err := queue.OpenSpool(f.Queue.Dir)
	if err != nil {
		errorf(stderr, "%v", err)
		return exitRuntime
	}
	needID := func() (string, bool) {
		if len(pos) != 2 {
			errorf(stderr, "queue %s needs one queue ID", pos[0])
			return "", false
		}
		return pos[1], true
	}
	switch pos[0] {
	case "list":
		ms, err := sp.List()
		if err != nil {
			errorf(stderr, "%v", err)
			return exitRuntime
		}
		tw := tabwriter.NewWriter(stdout, 0, 4, 2, ' ', 0)
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
		fmt.Fprintf(stdout, "%d message(s)\n", len(ms))
	case "show":
		id, ok := needID()
		if !ok {
			return exitBadConfig
		}
		m, body, err := sp.Show(id)
		if err != nil {
			errorf(stderr, "%v", err)
			return exitRuntime
		}
		fmt.Fprintf(stdout, "ID: %s\nFrom: <%s>\nCreated: %s\nAttempts: %d\nNext attempt: %s\n",
			m.ID, m.From, m.Created.Format(time.RFC3339), m.Attempts, m.NextAttempt.Format(time.RFC3339))
		for _, r := range m.Recipients {
			fmt.Fprintf(stdout, "Recipient: <%s> %s %s\n", r.Addr, r.Status, r.Error)
		}
		fmt.Fprintf(stdout, "\n%s", body)
	case "retry":
		id, ok := needID()
		if !ok {
			return exitBadConfig
		}
		if err := sp.Retry(id); err != nil {
			errorf(stderr, "%v", err)
			return exitRuntime
		}
		fmt.Fprintf(stdout, "%s: retry requested\n", id)
	case "delete":
		id, ok := needID()
		if !ok {
			return exitBadConfig
		}
		if err := sp.Delete(id); err != nil {
			errorf(stderr, "%v", err)
			return exitRuntime
		}
		fmt.Fprintf(stdout, "%s: deleted\n", id)
	default:
		errorf(stderr, "queue: unknown command %q", pos[0])
		return exitBadConfig
	}
	return exitOK
}
