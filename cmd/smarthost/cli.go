package main

import (
	"errors"
	"flag"
	"fmt"
	"io"
	"maps"
	"slices"
	"strings"

	"github.com/smarthost/smarthost/configs"
	"github.com/smarthost/smarthost/relay/daemon"
)

// Exit codes, as docs/cli.md lists them.
const (
	exitOK        = 0
	exitRuntime   = 1
	exitBadConfig = 2
)

// Set by scripts/build.sh with -ldflags "-X main.version=... -X
// main.commit=... -X main.built=...". built is the commit's time, not the
// clock's, so that one commit always gives the same bytes.
var (
	version = "dev"
	commit  = ""
	built   = ""
)

// cmdIO is what every command reads and writes.
type cmdIO struct {
	stdin          io.Reader
	stdout, stderr io.Writer
	getenv         func(string) string
}

// flags is one command's flag set: -h and --help print its usage (what it
// does, its arguments, its flags) on standard output.
type flags struct {
	*flag.FlagSet
	io cmdIO
}

func (c cmdIO) flags(name, usage string) flags {
	fs := flag.NewFlagSet("smarthost "+name, flag.ContinueOnError)
	fs.SetOutput(c.stderr)
	fs.Usage = func() {
		fmt.Fprintf(c.stdout, "usage: smarthost %s %s\n", name, usage)
		n := 0
		fs.VisitAll(func(*flag.Flag) { n++ })
		if n > 0 {
			fmt.Fprintln(c.stdout, "\nflags:")
			fs.SetOutput(c.stdout)
			fs.PrintDefaults()
			fs.SetOutput(c.stderr)
		}
	}
	return flags{fs, c}
}

// parse parses flags that may come before or after positional arguments
// ("queue show ID --config F"), which the flag package alone does not
// allow. done is set when the command is to end with code: after --help
// (0) or a bad flag (2).
func (f flags) parse(args []string) (pos []string, code int, done bool) {
	for {
		err := f.Parse(args)
		if errors.Is(err, flag.ErrHelp) {
			return nil, exitOK, true
		}
		if err != nil {
			return nil, exitBadConfig, true
		}
		args = f.Args()
		if len(args) == 0 {
			return pos, exitOK, false
		}
		pos = append(pos, args[0])
		args = args[1:]
	}
}

// config finds and loads the command's configuration (configs.Find); on a
// problem it says so and returns the exit code.
func (f flags) config(flagValue string) (*configs.File, string, int) {
	return f.configTo(f.io.stderr, flagValue)
}

// configTo is config, saying the problems on w.
func (f flags) configTo(w io.Writer, flagValue string) (*configs.File, string, int) {
	source := configs.Find(flagValue, f.io.getenv)
	if source == "" {
		fmt.Fprintf(f.io.stderr, "%s: %s\n", f.Name(), configs.QuickstartNote)
	}
	file, err := configs.LoadFound(source)
	if err != nil {
		configs.Print(w, source, err)
		return nil, source, exitBadConfig
	}
	return file, source, exitOK
}

// verb is one of the subcommands of dkim, queue or limits.
type verb struct {
	usage string // arguments and flags, for the help text
	about string
	run   func(c cmdIO, args []string) int
}

// verbs is command name, whose verbs are listed: it runs the verb
// args[0]; none, "help", -h or --help list the verbs (on standard output
// and with exit code 0 when asked for).
func verbs(name string, table map[string]verb) func(c cmdIO, args []string) int {
	list := func(w io.Writer) {
		fmt.Fprintf(w, "usage: smarthost %s VERB [flags]\n\nverbs:\n", name)
		for _, n := range slices.Sorted(maps.Keys(table)) {
			fmt.Fprintf(w, "  %s %s\n      %s\n", n, table[n].usage, table[n].about)
		}
		fmt.Fprintf(w, "\nsmarthost %s VERB --help tells more.\n", name)
	}
	return func(c cmdIO, args []string) int {
		if len(args) == 0 {
			list(c.stderr)
			return exitBadConfig
		}
		switch args[0] {
		case "help", "-h", "--help", "-help":
			list(c.stdout)
			return exitOK
		}
		v, ok := table[args[0]]
		if !ok {
			errorf(c.stderr, "%s: unknown verb %q", name, args[0])
			list(c.stderr)
			return exitBadConfig
		}
		return v.run(c, args[1:])
	}
}

// usage ends a command after fs.parse: with code when parse is done, else
// (its arguments are wrong) with the usage and exitBadConfig.
func (f flags) usage(code int, done bool) int {
	if done {
		return code
	}
	f.Usage()
	return exitBadConfig
}

// fail says what went wrong with the configuration at path, or with the
// command (what, if not ""), and returns the exit code: exitOK when err is
// nil, exitBadConfig for a mistake in the configuration, exitRuntime for
// anything else.
func fail(c cmdIO, path, what string, err error) int {
	var probs configs.Problems
	var bad *daemon.ConfigError
	switch {
	case err == nil:
		return exitOK
	case errors.As(err, &probs):
		configs.Print(c.stderr, path, err)
		return exitBadConfig
	case what != "":
		err = fmt.Errorf("%s: %w", what, err)
	}
	errorf(c.stderr, "%v", err)
	if errors.As(err, &bad) {
		return exitBadConfig
	}
	return exitRuntime
}

// resolverFlag is --resolver, which dkim check and check-config take.
func resolverFlag(fs flags) *string {
	return fs.String("resolver", "", "DNS server to ask, HOST or HOST:PORT (default: the system's resolver)")
}

// printFindings prints what probes found, a line each, and returns
// exitOK, exitRuntime when one failed, or exitBadConfig when a key file
// cannot be read (said on stderr).
func printFindings(stdout, stderr io.Writer, findings []daemon.Finding) int {
	code := exitOK
	for _, f := range findings {
		if f.Unreadable {
			errorf(stderr, "%s", f)
			code = exitBadConfig
			continue
		}
		fmt.Fprintln(stdout, f)
		if f.Failed {
			code = max(code, exitRuntime)
		}
	}
	return code
}

func errorf(w io.Writer, format string, args ...any) {
	fmt.Fprintf(w, "smarthost: "+strings.TrimSuffix(format, "\n")+"\n", args...)
}
