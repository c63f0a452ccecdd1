package main

import (
	"context"
	"fmt"
	"time"

	"github.com/smarthost/smarthost/cmd/internal/cmdline"
	"github.com/smarthost/smarthost/relay/daemon"
)

const limitsShowUsage = "USER | --upstream NAME [--config FILE]"

var limitsVerbs = map[string]cmdline.Verb{
	"show": {Usage: limitsShowUsage, About: "the user's class, each limit, what is left and when it is full again; " +
		"with --upstream, the upstream's budget shared by every node, its sessions and whether it is on hold", Run: limitsShow},
}

func limitsShow(c cmdline.IO, args []string) int {
	fs := c.Flags("limits show", limitsShowUsage)
	path := fs.String("config", "", "configuration file")
	up := fs.String("upstream", "", "show this upstream's budget instead of a user's")
	pos, code, done := fs.ParseArgs(args)
	if done || len(pos) != 1 && !(*up != "" && len(pos) == 0) {
		return fs.BadArgs(code, done)
	}
	f, source, code := fs.Config(*path)
	if f == nil {
		return code
	}
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	var v fmt.Stringer
	var err error
	if *up != "" {
		v, err = daemon.UpstreamLimits(ctx, f, *up)
	} else {
		v, err = daemon.Limits(ctx, f, pos[0])
	}
	if err != nil {
		return fail(c, source, "limits", err)
	}
	fmt.Fprint(c.Stdout, v)
	return cmdline.OK
}
