// Package cmdline is the grammar of smarthost's command line, which every
// command of cmd/smarthost shares: a flag set per command whose -h and
// --help print its usage on standard output, flags before or after the
// arguments, the configuration found as every command finds it, commands
// made of verbs (dkim, queue, limits), the exit codes and how an error is
// said. cmd/smarthost keeps only the commands: each parses its flags with
// this package, calls the package that does the work, and prints.
package cmdline

import (
	"bufio"
	"errors"
	"flag"
	"fmt"
	"io"
	"maps"
	"slices"
	"strings"

	"github.com/smarthost/smarthost/configs"
)

// Exit codes, as docs/cli.md lists them.
const (
	OK        = 0 // done
	Runtime   = 1 // the command could not do it
	BadConfig = 2 // a mistake in the configuration or the command line
)

// IO is what every command reads and writes, and its environment.
type IO struct {
	Stdin          io.Reader
	Stdout, Stderr io.Writer
	Getenv         func(string) string
}

// Flags is one command's flag set: -h and --help print its usage (what it
// does, its arguments, its flags) on standard output.
type Flags struct {
	*flag.FlagSet
	IO IO
}

// Flags makes the flag set of the command name ("queue show"), whose
// usage (its arguments, a blank line, what it does) --help prints.
func (c IO) Flags(name, usage string) Flags {
	fs := flag.NewFlagSet("smarthost "+name, flag.ContinueOnError)
	fs.SetOutput(c.Stderr)
	fs.Usage = func() {
		fmt.Fprintf(c.Stdout, "usage: smarthost %s %s\n", name, usage)
		n := 0
		fs.VisitAll(func(*flag.Flag) { n++ })
		if n > 0 {
			fmt.Fprintln(c.Stdout, "\nflags:")
			fs.SetOutput(c.Stdout)
			fs.PrintDefaults()
			fs.SetOutput(c.Stderr)
		}
	}
	return Flags{fs, c}
}

// ParseArgs parses flags that may come before or after positional
// arguments ("queue show ID --config F"), which the flag package alone
// does not allow, and returns the arguments. done is set when the command
// is to end with code: after --help (OK) or a bad flag (BadConfig).
func (f Flags) ParseArgs(args []string) (pos []string, code int, done bool) {
	for {
		err := f.Parse(args)
		if errors.Is(err, flag.ErrHelp) {
			return nil, OK, true
		}
		if err != nil {
			return nil, BadConfig, true
		}
		args = f.Args()
		if len(args) == 0 {
			return pos, OK, false
		}
		pos = append(pos, args[0])
		args = args[1:]
	}
}

// BadArgs ends a command after ParseArgs: with code when ParseArgs is
// done, else (the arguments are wrong) with the usage and BadConfig.
func (f Flags) BadArgs(code int, done bool) int {
	if done {
		return code
	}
	f.Usage()
	return BadConfig
}

// Config finds and loads the command's configuration (configs.Find:
// flagValue, then $SMARTHOST_CONFIG, ...); on a problem it says so and
// returns nil and the exit code.
func (f Flags) Config(flagValue string) (*configs.File, string, int) {
	return f.ConfigTo(f.IO.Stderr, flagValue)
}

// ConfigTo is Config, saying the configuration's problems on w.
func (f Flags) ConfigTo(w io.Writer, flagValue string) (*configs.File, string, int) {
	source := configs.Find(flagValue, f.IO.Getenv)
	if source == "" {
		fmt.Fprintf(f.IO.Stderr, "%s: %s\n", f.Name(), configs.QuickstartNote)
	}
	file, err := configs.LoadFound(source)
	if err != nil {
		configs.Print(w, source, err)
		return nil, source, BadConfig
	}
	return file, source, OK
}

// Verb is one of the verbs of a command such as dkim, queue or limits.
type Verb struct {
	Usage string // arguments and flags, for the help text
	About string
	Run   func(c IO, args []string) int
}

// Verbs is the command name, made of the verbs of table: it runs the verb
// args[0]; none, "help", -h or --help list the verbs (on standard output
// and with exit code OK when asked for).
func Verbs(name string, table map[string]Verb) func(c IO, args []string) int {
	list := func(w io.Writer) {
		fmt.Fprintf(w, "usage: smarthost %s VERB [flags]\n\nverbs:\n", name)
		for _, n := range slices.Sorted(maps.Keys(table)) {
			fmt.Fprintf(w, "  %s %s\n      %s\n", n, table[n].Usage, table[n].About)
		}
		fmt.Fprintf(w, "\nsmarthost %s VERB --help tells more.\n", name)
	}
	return func(c IO, args []string) int {
		if len(args) == 0 {
			list(c.Stderr)
			return BadConfig
		}
		switch args[0] {
		case "help", "-h", "--help", "-help":
			list(c.Stdout)
			return OK
		}
		v, ok := table[args[0]]
		if !ok {
			Errorf(c.Stderr, "%s: unknown verb %q", name, args[0])
			list(c.Stderr)
			return BadConfig
		}
		return v.Run(c, args[1:])
	}
}

// Confirmed asks question on standard output and reads the answer, a line
// of standard input: true for y or yes.
func (c IO) Confirmed(question string) bool {
	fmt.Fprint(c.Stdout, question)
	line, _ := bufio.NewReader(c.Stdin).ReadString('\n')
	answer := strings.ToLower(strings.TrimSpace(line))
	return answer == "y" || answer == "yes"
}

// Errorf says an error on w, as every command says one: "smarthost: ...".
func Errorf(w io.Writer, format string, args ...any) {
	fmt.Fprintf(w, "smarthost: "+strings.TrimSuffix(format, "\n")+"\n", args...)
}
