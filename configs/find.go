package configs

import (
	"errors"
	"fmt"
	"io"
	"os"
)

// DefaultPath is where every command looks for its configuration when
// neither --config nor $SMARTHOST_CONFIG names one.
const DefaultPath = "/etc/smarthost/smarthost.yaml"

// QuickstartNote says why a command runs on the embedded quickstart.
const QuickstartNote = "no --config, no $SMARTHOST_CONFIG and no " + DefaultPath + ": using the embedded quickstart (configs/quickstart.yaml), with its state under ./var"

// Find is the one way every command finds its configuration: flagValue
// (its --config), then $SMARTHOST_CONFIG, then DefaultPath if it exists.
// "" means none was found: the embedded quickstart.
func Find(flagValue string, getenv func(string) string) string {
	if flagValue != "" {
		return flagValue
	}
	if env := getenv("SMARTHOST_CONFIG"); env != "" {
		return env
	}
	if _, err := os.Stat(DefaultPath); err == nil {
		return DefaultPath
	}
	return ""
}

// LoadFound loads what Find found: the file at source, or for "" the
// embedded quickstart.
func LoadFound(source string) (*File, error) {
	if source == "" {
		return LoadQuickstart()
	}
	return Load(source)
}

// SourceName names what Find found, for messages.
func SourceName(source string) string {
	if source == "" {
		return "embedded quickstart"
	}
	return source
}

// Print writes err, about the configuration from source (what Find found):
// each problem on a line of its own when err holds Problems.
func Print(w io.Writer, source string, err error) {
	source = SourceName(source)
	var probs Problems
	if errors.As(err, &probs) {
		fmt.Fprintf(w, "%s: %d problem(s):\n", source, len(probs))
		for _, p := range probs {
			fmt.Fprintf(w, "  %s\n", p)
		}
		return
	}
	fmt.Fprintf(w, "%s: %v\n", source, err)
}
