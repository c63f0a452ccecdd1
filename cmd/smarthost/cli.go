package main

import (
	"errors"
	"flag"
	"fmt"
	"io"
	"os"
	"sort"

	"github.com/smarthost/smarthost/configs"
	"github.com/smarthost/smarthost/relay/daemon"
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

// defaultConfig is where every command looks for its configuration when
// neither --config nor $SMARTHOST_CONFIG names one.
const defaultConfig = "/etc/smarthost/smarthost.yaml"

// configSource is the one way every command finds its configuration: the
// --config flag, then $SMARTHOST_CONFIG, then defaultConfig if it exists.
// "" means none was found: the embedded quickstart.
func (c cmdIO) configSource(flagValue string) string {
	if flagValue != "" {
		return flagValue
	}
	if env := c.getenv("SMARTHOST_CONFIG"); env != "" {
		return env
	}
	if _, err := os.Stat(defaultConfig); err == nil {
		return defaultConfig
	}
	return ""
}

// quickstartNote says why a command runs on the embedded quickstart.
const quickstartNote = "no --config, no $SMARTHOST_CONFIG and no " + defaultConfig + ": using the embedded quickstart (configs/quickstart.yaml), with its state under ./var"

// config finds and loads the command's configuration (configSource); on a
// problem it says so and returns the exit code.
func (f flags) config(flagValue string) (*configs.File, string, int) {
	source := f.io.configSource(flagValue)
	if source == "" {
		fmt.Fprintf(f.io.stderr, "%s: %s\n", f.Name(), quickstartNote)
	}
	file, err := loadConfig(source)
	if err != nil {
		printProblems(f.io.stderr, source, err)
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

// dispatch runs the verb args[0] of command name; none, "help", -h or
// --help list the verbs (on standard output and with exit code 0 when
// asked for).
func dispatch(c cmdIO, name string, verbs map[string]verb, args []string) int {
	list := func(w io.Writer) {
		fmt.Fprintf(w, "usage: smarthost %s VERB [flags]\n\nverbs:\n", name)
		names := make([]string, 0, len(verbs))
		for n := range verbs {
			names = append(names, n)
		}
		sort.Strings(names)
		for _, n := range names {
			fmt.Fprintf(w, "  %s %s\n      %s\n", n, verbs[n].usage, verbs[n].about)
		}
		fmt.Fprintf(w, "\nsmarthost %s VERB --help tells more.\n", name)
	}
	if len(args) == 0 {
		list(c.stderr)
		return exitBadConfig
	}
	switch args[0] {
	case "help", "-h", "--help", "-help":
		list(c.stdout)
		return exitOK
	}
	v, ok := verbs[args[0]]
	if !ok {
		errorf(c.stderr, "%s: unknown verb %q", name, args[0])
		list(c.stderr)
		return exitBadConfig
	}
	return v.run(c, args[1:])
}

func loadConfig(path string) (*configs.File, error) {
	if path == "" {
		return configs.LoadQuickstart()
	}
	return configs.Load(path)
}

// sourceName names a configuration source for messages.
func sourceName(path string) string {
	if path == "" {
		return "embedded quickstart"
	}
	return path
}

func printProblems(w io.Writer, path string, err error) {
	path = sourceName(path)
	var probs configs.Problems
	if errors.As(err, &probs) {
		fmt.Fprintf(w, "%s: %d problem(s):\n", path, len(probs))
		for _, p := range probs {
			fmt.Fprintf(w, "  %s\n", p)
		}
		return
	}
	fmt.Fprintf(w, "%s: %v\n", path, err)
}

// fail says what went wrong with the configuration at path, or with the
// command (what, if not ""), and returns the exit code: exitBadConfig for a
// mistake in the configuration, exitRuntime for anything else.
func fail(c cmdIO, path, what string, err error) int {
	var probs configs.Problems
	var bad *daemon.ConfigError
	switch {
	case errors.As(err, &probs):
		printProblems(c.stderr, path, err)
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

// printFindings prints what probes found, a line each, and returns
// exitOK, exitRuntime when one failed, or exitBadConfig when a key file
// cannot be read (said on stderr).
func printFindings(stdout, stderr io.Writer, findings []daemon.Finding) int {
	code := exitOK
	for _, f := range findings {
		switch {
		case f.Unreadable:
			errorf(stderr, "%s", f)
			code = exitBadConfig
		case f.Failed:
			fmt.Fprintln(stdout, f)
			code = max(code, exitRuntime)
		default:
			fmt.Fprintln(stdout, f)
		}
	}
	return code
}
