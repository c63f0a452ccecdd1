package docs

import (
	"bytes"
	"os"
	"path/filepath"
	"strings"
	"testing"
)

// maxCommandLines is the most lines cmd/smarthost's non-test Go files may
// have together, comments and blank lines included (as wc -l counts them).
const maxCommandLines = 800

// TestCommandLineOnly fails when cmd/smarthost grows to maxCommandLines:
// it is the command line only, a file per command that parses its flags,
// calls a package and prints. What a command does (reading, rendering,
// deciding) belongs in the package that owns the data, where a unit test
// reaches it; here it can only be tested end to end, through the binary.
func TestCommandLineOnly(t *testing.T) {
	files, err := filepath.Glob("../cmd/smarthost/*.go")
	if err != nil {
		t.Fatal(err)
	}
	lines, read := 0, 0
	for _, f := range files {
		if strings.HasSuffix(f, "_test.go") {
			continue
		}
		b, err := os.ReadFile(f)
		if err != nil {
			t.Fatal(err)
		}
		lines += bytes.Count(b, []byte("\n"))
		read++
	}
	if read < 5 {
		t.Fatalf("read %d files of cmd/smarthost: not the command", read)
	}
	if lines >= maxCommandLines {
		t.Errorf("cmd/smarthost has %d lines of non-test Go (%d at most): it is the command line only, "+
			"a file per command that parses its flags, calls a package and prints; "+
			"move what the command does (reading, rendering, deciding) into the package that owns the data, and test it there",
			lines, maxCommandLines-1)
	}
	t.Logf("cmd/smarthost: %d lines of non-test Go in %d files", lines, read)
}
