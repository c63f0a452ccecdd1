package main

import (
	"context"
	"fmt"
	"io"
	"log/slog"
	"strings"
	"time"

	"github.com/smarthost/smarthost/configs"
	"github.com/smarthost/smarthost/ratelimit"
	"github.com/smarthost/smarthost/relay/upstream"
)

func checkConfigCmd(c cmdIO, args []string) int {
	fs := c.flags("check-config", "[--config FILE] [--probe [--resolver HOST[:PORT]]]\n\nChecks everything that can be checked offline and prints every problem with its\nYAML path and line (exit 2); --probe also connects to LDAP, Redis and each upstream,\nand checks each DKIM key's published record as smarthost dkim check does\n(exit 1 if one fails).")
	path := fs.String("config", "", "configuration file")
	probe := fs.Bool("probe", false, "also connect to LDAP, Redis and each upstream, check the DKIM records, and report")
	resolver := resolverFlag(fs)
	if _, code, done := fs.parse(args); done {
		return code
	}
	stdout := c.stdout
	source := c.configSource(*path)
	if source == "" {
		fmt.Fprintf(c.stderr, "smarthost check-config: %s\n", quickstartNote)
	}
	f, err := loadConfig(source)
	if err != nil {
		printProblems(stdout, source, err)
		return exitBadConfig
	}
	log := slog.New(slog.NewTextHandler(io.Discard, nil))
	p, probs := compose(f, false, log, nil)
	if len(probs) > 0 {
		printProblems(stdout, source, probs)
		return exitBadConfig
	}
	for _, w := range p.warnings {
		fmt.Fprintf(stdout, "warning: %s\n", w)
	}
	fmt.Fprintf(stdout, "%s: configuration is valid\n", sourceName(source))
	if !*probe {
		return exitOK
	}
	return probeAll(stdout, f, p, log, *resolver)
}

// probeAll connects to LDAP, Redis and each upstream and checks the DKIM
// records, a line for each; exitRuntime when one fails.
func probeAll(stdout io.Writer, f *configs.File, p *parts, log *slog.Logger, resolver string) int {
	code := exitOK
	if p.ldap != nil {
		for _, r := range p.ldap.Probe() {
			if r.Err != nil {
				fmt.Fprintf(stdout, "ldap %s: FAILED: %v\n", r.URL, r.Err)
				code = exitRuntime
			} else {
				fmt.Fprintf(stdout, "ldap %s: ok (service bind): %s\n", r.URL, strings.Join(r.Notes, ", "))
			}
		}
	}
	if f.RateLimit.Backend == "redis" {
		limiter, closeLimiter := newLimiter(f)
		pctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
		if err := limiter.(*ratelimit.Redis).Ping(pctx); err != nil {
			fmt.Fprintf(stdout, "redis %s: FAILED: %v\n", strings.Join(f.RateLimit.Redis.Addrs, ","), err)
			code = exitRuntime
		} else {
			fmt.Fprintf(stdout, "redis %s: ok\n", strings.Join(f.RateLimit.Redis.Addrs, ","))
		}
		cancel()
		closeLimiter()
	}
	if checkPublished(stdout, stdout, f, resolver) != exitOK {
		code = exitRuntime
	}
	router, err := upstream.NewRouter(p.upstream, log)
	if err != nil {
		fmt.Fprintf(stdout, "upstreams: %v\n", err)
		return exitRuntime
	}
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	for _, r := range router.Probe(ctx) {
		if r.Err != nil {
			fmt.Fprintf(stdout, "upstream %s: FAILED: %v\n", r.Name, r.Err)
			code = exitRuntime
		} else {
			fmt.Fprintf(stdout, "upstream %s: ok\n", r.Name)
		}
	}
	return code
}
