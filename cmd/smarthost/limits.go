package main

import (
	"context"
	"fmt"
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
	fmt.Fprint(c.stdout, v)
	return exitOK
}
