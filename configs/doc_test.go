package configs

import (
	"os"
	"reflect"
	"regexp"
	"slices"
	"strings"
	"testing"

	"gopkg.in/yaml.v3"
)

// docs/configuration.md is the reference of every key: its tables must
// name every key the parser accepts, and none it does not, in the paths
// schemaKeys makes (a.b, a[].b, a.*.b).
func TestConfigurationPageHoldsEveryKey(t *testing.T) {
	want := map[string]bool{}
	schemaKeys(reflect.TypeOf(File{}), "", want)
	text, err := os.ReadFile("../docs/configuration.md")
	if err != nil {
		t.Fatal(err)
	}
	have := map[string]bool{}
	row := regexp.MustCompile("^\\| `([a-z0-9_.*\\[\\]]+)` \\|")
	for _, line := range strings.Split(string(text), "\n") {
		if m := row.FindStringSubmatch(line); m != nil {
			if have[m[1]] {
				t.Errorf("docs/configuration.md has two rows for %s", m[1])
			}
			have[m[1]] = true
		}
	}
	var missing, unknown []string
	for k := range want {
		if !have[k] {
			missing = append(missing, k)
		}
	}
	for k := range have {
		if !want[k] {
			unknown = append(unknown, k)
		}
	}
	slices.Sort(missing)
	slices.Sort(unknown)
	if len(missing) > 0 {
		t.Errorf("docs/configuration.md lacks %d keys the parser accepts (add a row to its tables):\n  %s", len(missing), strings.Join(missing, "\n  "))
	}
	if len(unknown) > 0 {
		t.Errorf("docs/configuration.md names %d keys the parser does not accept:\n  %s", len(unknown), strings.Join(unknown, "\n  "))
	}
	if len(have) < 100 {
		t.Fatalf("only %d rows found on the page: the reading is broken", len(have))
	}
}

// The defaults docs/configuration.md gives are the parser's: every row
// whose default is one literal (`...`) is read as YAML into the key's type
// and compared with what a configuration that leaves the key out gets.
// Keys under a map (*) are left out; under a list ([]), the first entry is
// compared.
func TestConfigurationPageDefaults(t *testing.T) {
	f, err := Parse([]byte(`
listeners: [{address: "127.0.0.1:2587", mode: plain}]
auth: {backend: static, static: {users_file: users.yaml}}
upstreams: [{name: a, url: "smtp://127.0.0.1:25"}]
policy: {rewrite: [{sender: a@example.com}]}
`))
	if err != nil {
		t.Fatal(err)
	}
	text, err := os.ReadFile("../docs/configuration.md")
	if err != nil {
		t.Fatal(err)
	}
	row := regexp.MustCompile("^\\| `([a-z0-9_.\\[\\]]+)` \\| [^|]* \\| `([^`|]+)` \\|")
	checked := 0
	for _, line := range strings.Split(string(text), "\n") {
		m := row.FindStringSubmatch(line)
		if m == nil {
			continue
		}
		got, ok := valueAt(reflect.ValueOf(*f), m[1])
		if ok && got.Kind() == reflect.Pointer && got.IsNil() && got.Type().Elem().Kind() == reflect.Bool {
			// An unset switch the code reads as x == nil || *x.
			got = reflect.ValueOf(true)
		}
		if !ok {
			t.Errorf("%s: no such key to compare its default with", m[1])
			continue
		}
		want := reflect.New(got.Type())
		if err := yaml.Unmarshal([]byte(m[2]), want.Interface()); err != nil {
			t.Errorf("%s: the default %q does not read as its type: %v", m[1], m[2], err)
			continue
		}
		if !reflect.DeepEqual(got.Interface(), want.Elem().Interface()) {
			t.Errorf("%s: the page says the default is %s; it is %v", m[1], m[2], got)
		}
		checked++
	}
	if checked < 30 {
		t.Fatalf("only %d defaults compared: the reading is broken", checked)
	}
}

// valueAt follows a schema path (a.b, a[].b) through v by the yaml tags.
func valueAt(v reflect.Value, path string) (reflect.Value, bool) {
	for _, part := range strings.Split(path, ".") {
		name, list := strings.CutSuffix(part, "[]")
		for v.Kind() == reflect.Pointer {
			if v.IsNil() {
				return v, false
			}
			v = v.Elem()
		}
		if v.Kind() != reflect.Struct {
			return v, false
		}
		found := false
		for i := 0; i < v.NumField(); i++ {
			if tag, _, _ := strings.Cut(v.Type().Field(i).Tag.Get("yaml"), ","); tag == name {
				v, found = v.Field(i), true
				break
			}
		}
		if !found {
			return v, false
		}
		if list {
			if v.Len() == 0 {
				return v, false
			}
			v = v.Index(0)
		}
	}
	return v, true
}
