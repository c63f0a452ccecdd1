package docs

import (
	"os"
	"path/filepath"
	"regexp"
	"strings"
	"testing"
)

// Every link between the README and these pages leads somewhere: the file
// exists, and a #fragment names one of its headings (as GitHub makes
// anchors: lower case, punctuation dropped, spaces as hyphens).
func TestLinksResolve(t *testing.T) {
	pages, _ := filepath.Glob("*.md")
	pages = append(pages, "../README.md", "../CHANGELOG.md")
	link := regexp.MustCompile(`\]\(([^)\s]+)\)`)
	n := 0
	for _, p := range pages {
		b, err := os.ReadFile(p)
		if err != nil {
			t.Fatal(err)
		}
		for _, m := range link.FindAllStringSubmatch(stripCode(string(b)), -1) {
			target := m[1]
			if strings.Contains(target, "://") || strings.HasPrefix(target, "mailto:") {
				continue
			}
			file, frag, _ := strings.Cut(target, "#")
			path := p
			if file != "" {
				path = filepath.Join(filepath.Dir(p), file)
			}
			if _, err := os.Stat(path); err != nil {
				t.Errorf("%s links to %s, which does not exist", p, target)
				continue
			}
			if frag != "" && !anchors(t, path)[frag] {
				t.Errorf("%s links to %s: %s has no heading with that anchor", p, target, path)
			}
			n++
		}
	}
	if n < 50 {
		t.Fatalf("only %d links found: the reading is broken", n)
	}
}

// stripCode drops fenced blocks, where ](...) is code, not a link.
func stripCode(s string) string {
	var b strings.Builder
	in := false
	for _, line := range strings.Split(s, "\n") {
		if strings.HasPrefix(strings.TrimSpace(line), "```") {
			in = !in
			continue
		}
		if !in {
			b.WriteString(line + "\n")
		}
	}
	return b.String()
}

// anchors are the fragments GitHub makes of a Markdown file's headings.
func anchors(t *testing.T, path string) map[string]bool {
	out := map[string]bool{}
	if !strings.HasSuffix(path, ".md") {
		return out
	}
	b, err := os.ReadFile(path)
	if err != nil {
		t.Fatal(err)
	}
	drop := regexp.MustCompile(`[^\p{L}\p{N} _-]`)
	for _, line := range strings.Split(stripCode(string(b)), "\n") {
		h := strings.TrimLeft(line, "#")
		if len(h) == len(line) || !strings.HasPrefix(h, " ") {
			continue
		}
		slug := strings.ReplaceAll(drop.ReplaceAllString(strings.ToLower(strings.TrimSpace(h)), ""), " ", "-")
		out[slug] = true
	}
	return out
}
