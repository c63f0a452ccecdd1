// Package docs holds the user documentation; its tests keep the pages true
// to the code and written for the people who run smarthost.
package docs

import (
	"io/fs"
	"os"
	"path/filepath"
	"regexp"
	"strings"
	"testing"
)

// Words from the way the project is run that mean nothing to a user: the
// team's working agreement ("the contract"), its work periods ("round 2")
// and its issue numbers ("#21"). A network round trip is fine.
var processWords = regexp.MustCompile(`(?i)\bcontract\b|\brounds?\b(?:[^-\s]|\s+[^t\s]|\s+t[^r]|$)|(?:^|[\s(\[])#[0-9]+\b`)

// userFacing lists README.md, CHANGELOG.md and every file below docs/ and
// configs/ that a user reads: text, YAML, unit files, and the Go files of
// configs/ too, which users see through go doc.
func userFacing(t *testing.T) []string {
	files := []string{"../README.md", "../CHANGELOG.md"}
	for _, dir := range []string{".", "../configs"} {
		err := filepath.WalkDir(dir, func(path string, d fs.DirEntry, err error) error {
			if err != nil || d.IsDir() {
				return err
			}
			switch filepath.Ext(path) {
			case ".md", ".yaml", ".yml", ".service", ".json", ".go":
				if !strings.HasSuffix(path, "words_test.go") {
					files = append(files, path)
				}
			}
			return nil
		})
		if err != nil {
			t.Fatal(err)
		}
	}
	return files
}

func TestNoProcessWords(t *testing.T) {
	for _, path := range userFacing(t) {
		b, err := os.ReadFile(path)
		if err != nil {
			t.Fatal(err)
		}
		for i, line := range strings.Split(string(b), "\n") {
			if m := processWords.FindString(line); m != "" {
				t.Errorf("%s:%d: %q speaks of how the project is run, not to users: %s", path, i+1, strings.TrimSpace(m), line)
			}
		}
	}
}

func TestProcessWordsPattern(t *testing.T) {
	for s, want := range map[string]bool{
		"Unreleased (round 2)":             true,
		"Fifty rounds of":                  true,
		"beyond the contract":              true,
		"Speed (#21)":                      true,
		"see #16":                          true,
		"one Redis round trip":             false,
		"three round trips":                false,
		"a round-trip time":                false,
		"PKCS#8 PEM":                       false,
		"docs/install.md#binary":           false,
		"[Compose](deployment.md#compose)": false,
	} {
		if got := processWords.MatchString(s); got != want {
			t.Errorf("%q: matched %v, want %v", s, got, want)
		}
	}
}
