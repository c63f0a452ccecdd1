package configs

import (
	"os"
	"reflect"
	"slices"
	"strings"
	"testing"

	"gopkg.in/yaml.v3"
)

// example.yaml is the reference operators copy from: it must hold every key
// the parser accepts (and, as TestExampleDecodes shows, nothing it does
// not). Map keys that operators choose (class names, domains) are "*".
func TestExampleHoldsEveryKey(t *testing.T) {
	want := map[string]bool{}
	schemaKeys(reflect.TypeOf(File{}), "", want)
	text, err := os.ReadFile("example.yaml")
	if err != nil {
		t.Fatal(err)
	}
	var doc yaml.Node
	if err := yaml.Unmarshal(text, &doc); err != nil {
		t.Fatal(err)
	}
	have := map[string]bool{}
	exampleKeys(doc.Content[0], "", reflect.TypeOf(File{}), have)
	var missing []string
	for k := range want {
		if !have[k] {
			missing = append(missing, k)
		}
	}
	slices.Sort(missing)
	if len(missing) > 0 {
		t.Errorf("configs/example.yaml lacks %d keys the parser accepts:\n  %s", len(missing), strings.Join(missing, "\n  "))
	}
	if len(want) < 100 {
		t.Fatalf("only %d keys found in the schema: the walk is broken", len(want))
	}
}

// schemaKeys lists the YAML paths of t's fields: a.b for structs, a[].b
// for lists, a.*.b for maps.
func schemaKeys(t reflect.Type, prefix string, out map[string]bool) {
	for t.Kind() == reflect.Pointer {
		t = t.Elem()
	}
	switch t.Kind() {
	case reflect.Slice:
		schemaKeys(t.Elem(), prefix+"[]", out)
	case reflect.Map:
		schemaKeys(t.Elem(), prefix+".*", out)
	case reflect.Struct:
		if reflect.PointerTo(t).Implements(reflect.TypeOf((*yaml.Unmarshaler)(nil)).Elem()) {
			return // a scalar syntax (Duration, Size, Rate)
		}
		for i := 0; i < t.NumField(); i++ {
			f := t.Field(i)
			name, _, _ := strings.Cut(f.Tag.Get("yaml"), ",")
			if name == "" || name == "-" || !f.IsExported() {
				continue
			}
			p := strings.TrimPrefix(prefix+"."+name, ".")
			out[p] = true
			schemaKeys(f.Type, p, out)
		}
	}
}

// exampleKeys lists the same paths as they occur in the document, using t
// to tell maps (whose keys become "*") from structs.
func exampleKeys(n *yaml.Node, prefix string, t reflect.Type, out map[string]bool) {
	for t != nil && t.Kind() == reflect.Pointer {
		t = t.Elem()
	}
	switch n.Kind {
	case yaml.SequenceNode:
		var elem reflect.Type
		if t != nil && t.Kind() == reflect.Slice {
			elem = t.Elem()
		}
		for _, c := range n.Content {
			exampleKeys(c, prefix+"[]", elem, out)
		}
	case yaml.MappingNode:
		for i := 0; i+1 < len(n.Content); i += 2 {
			key, val := n.Content[i].Value, n.Content[i+1]
			if t != nil && t.Kind() == reflect.Map {
				exampleKeys(val, prefix+".*", t.Elem(), out)
				continue
			}
			p := strings.TrimPrefix(prefix+"."+key, ".")
			out[p] = true
			var ft reflect.Type
			if t != nil && t.Kind() == reflect.Struct {
				for j := 0; j < t.NumField(); j++ {
					if name, _, _ := strings.Cut(t.Field(j).Tag.Get("yaml"), ","); name == key {
						ft = t.Field(j).Type
					}
				}
			}
			exampleKeys(val, p, ft, out)
		}
	}
}
