package main

import (
	"context"
	"fmt"
	"io"
	"time"

	"github.com/smarthost/smarthost/relay/daemon"
)

const limitsShowUsage = "USER [--config FILE]"

var limitsVerbs = map[string]verb{
	"show": {limitsShowUsage, "the user's class, each limit, what is left and when it is full again", limitsShow},
}

func limitsShow(c cmdIO, args []string) int {
	fs := c.flags("limits show", limitsShowUsage)
	path := fs.String("config", "", "configuration file")
	pos, code, done := fs.parse(args)
	if done {
		return code
	}
	if len(pos) != 1 {
		fs.Usage()
		return exitBadConfig
	}
	f, source, code := fs.config(*path)
	if f == nil {
		return code
	}
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	v, err := daemon.Limits(ctx, f, pos[0])
	if err != nil {
		return fail(c, source, "limits", err)
	}
	printLimits(c.stdout, v)
	return exitOK
}

func printLimits(w io.Writer, v *daemon.LimitsView) {
	fmt.Fprintf(w, "user %s (limits kept as %q), class %s\n", v.User, v.Key, v.Class)
	if len(v.Limits) == 0 {
		fmt.Fprintln(w, "  no limits")
	}
	for _, l := range v.Limits {
		fmt.Fprintf(w, "  %-10s %-12s %d left, full again in %s\n", l.Limit, l.Rate, l.Remaining, l.FullIn)
	}
}
