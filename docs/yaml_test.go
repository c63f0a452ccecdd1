package docs

import (
	"os"
	"path/filepath"
	"regexp"
	"strconv"
	"strings"
	"testing"

	"gopkg.in/yaml.v3"

	"github.com/smarthost/smarthost/configs"
	"github.com/smarthost/smarthost/policy"
)

// yamlBlock is a ```yaml block of a page, and the line it starts on.
type yamlBlock struct {
	page string
	line int
	text string
}

func yamlBlocks(t *testing.T) []yamlBlock {
	pages, _ := filepath.Glob("*.md")
	pages = append(pages, "../README.md")
	var out []yamlBlock
	for _, p := range pages {
		b, err := os.ReadFile(p)
		if err != nil {
			t.Fatal(err)
		}
		var cur *yamlBlock
		for i, line := range strings.Split(string(b), "\n") {
			switch {
			case cur == nil && strings.TrimSpace(line) == "```yaml":
				cur = &yamlBlock{page: p, line: i + 1}
			case cur != nil && strings.TrimSpace(line) == "```":
				out = append(out, *cur)
				cur = nil
			case cur != nil:
				cur.text += line + "\n"
			}
		}
	}
	return out
}

// base is what a configuration block is laid over: a relay complete
// enough to pass the checks, so that a block that shows one section is
// checked for what it shows.
const base = `
listeners: [{address: "127.0.0.1:2587", mode: starttls}]
tls: {self_signed: true}
auth: {backend: static, static: {users_file: users.yaml}}
upstreams: [{name: provider, url: "smtp://smtp.example.net:587"}, {name: internal, url: "smtp://mx.corp.example.com:25"}]
`

// Every YAML block on these pages is a configuration the parser accepts
// (laid over base, whose sections it replaces), or a users file the
// static backend accepts. Blocks of other programs' files (Compose, Helm
// values) have none of the configuration's sections and are left alone.
func TestYAMLBlocksParse(t *testing.T) {
	sections := map[string]bool{}
	for _, s := range strings.Fields("hostname listeners tls auth policy ratelimit dkim upstreams routes queue archive headers metrics log") {
		sections[s] = true
	}
	// The secret files a block names must exist to be read.
	secret := filepath.Join(t.TempDir(), "secret")
	os.WriteFile(secret, []byte("a-secret-value\n"), 0o600)
	secretFile := regexp.MustCompile(`((?:bind_password|password|client_secret)_file):\s*\S+`)
	checked := 0
	for _, b := range yamlBlocks(t) {
		b.text = secretFile.ReplaceAllString(b.text, "${1}: "+secret)
		where := b.page + ":" + itoa(b.line)
		var doc map[string]any
		if err := yaml.Unmarshal([]byte(b.text), &doc); err != nil {
			t.Errorf("%s: not YAML: %v", where, err)
			continue
		}
		if _, ok := doc["users"]; ok && len(doc) == 1 {
			if _, err := policy.ParseStatic([]byte(strings.ReplaceAll(b.text, "$2a$10$...", testHash))); err != nil {
				t.Errorf("%s: users file: %v", where, err)
			}
			checked++
			continue
		}
		ours := 0
		for k := range doc {
			if sections[k] {
				ours++
			}
		}
		if ours == 0 {
			continue
		}
		if ours != len(doc) {
			t.Errorf("%s: mixes configuration sections with other keys: %v", where, keys(doc))
			continue
		}
		var merged map[string]any
		yaml.Unmarshal([]byte(base), &merged)
		for k, v := range doc {
			merged[k] = v
		}
		text, _ := yaml.Marshal(merged)
		if _, err := configs.Parse(text); err != nil {
			t.Errorf("%s: the parser refuses the block:\n%v\n%s", where, err, b.text)
		}
		checked++
	}
	if checked < 15 {
		t.Fatalf("only %d blocks checked: the reading is broken", checked)
	}
}

// testHash is a bcrypt hash, for blocks that write "$2a$10$...".
const testHash = "$2a$10$h.4JaKrNbuY.UmNrd8aHmOvB2xAcZsOatQBNJY0Ri1iI6w33U0BRK"

func keys(m map[string]any) []string {
	var out []string
	for k := range m {
		out = append(out, k)
	}
	return out
}

func itoa(n int) string { return strconv.Itoa(n) }
