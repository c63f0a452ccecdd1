package configs

import (
	"fmt"
	"os"
	"reflect"
	"regexp"
	"sort"
	"strconv"
	"strings"

	"gopkg.in/yaml.v3"
)

// Load reads and checks the file at path. A nil error means the File is
// valid as far as can be told without touching the disk or the network
// beyond the *_file secrets; the caller adds the checks that need other
// packages (see File.Problem).
func Load(path string) (*File, error) {
	text, err := os.ReadFile(path)
	if err != nil {
		return nil, Problems{{Msg: fmt.Sprintf("cannot read config: %v", err)}}
	}
	f, err := Parse(text)
	if f != nil {
		f.Path = path
	}
	return f, err
}

var lineRe = regexp.MustCompile(`^line (\d+)(?: column (\d+))?: (.*)$`)

// Parse decodes and validates YAML text. On problems it still returns the
// File as far as it could be decoded, with a Problems error.
func Parse(text []byte) (*File, error) { return parse(text, os.ReadFile) }

// parse is Parse reading the files that *_file keys name through read:
// FuzzParse reads none, so that an input naming /dev/zero costs nothing.
func parse(text []byte, read func(string) ([]byte, error)) (*File, error) {
	var root yaml.Node
	if err := yaml.Unmarshal(text, &root); err != nil {
		return nil, Problems{problemFromYAML(err.Error(), nil, nil)}
	}
	f := &File{lines: map[string]int{}, values: map[string][2]int{}, read: read}
	var probs Problems
	add := func(path string, line int, msg string) { probs = append(probs, Problem{path, line, msg}) }
	if len(root.Content) == 0 {
		add("", 0, "the file is empty")
		return f, probs
	}
	doc := root.Content[0]
	index(doc, "", f.lines, f.values)
	checkKeys(doc, reflect.TypeOf(*f), "", add)
	expandEnv(doc, "", add)

	if err := doc.Decode(f); err != nil {
		if te, ok := err.(*yaml.TypeError); ok {
			for _, e := range te.Errors {
				probs = append(probs, problemFromYAML(e, f.lines, f.values))
			}
		} else {
			probs = append(probs, problemFromYAML(err.Error(), f.lines, f.values))
		}
	}
	readSecrets(f, add)
	applyDefaults(f)
	validate(f, add)
	sort.SliceStable(probs, func(i, j int) bool { return sortLine(probs[i]) < sortLine(probs[j]) })
	if len(probs) > 0 {
		return f, probs
	}
	return f, nil
}

// sortLine puts problems in file order, those without a line last.
func sortLine(p Problem) int {
	if p.Line == 0 {
		return 1 << 30
	}
	return p.Line
}

func problemFromYAML(msg string, lines map[string]int, values map[string][2]int) Problem {
	m := lineRe.FindStringSubmatch(strings.TrimPrefix(msg, "yaml: "))
	if m == nil {
		return Problem{Msg: strings.TrimPrefix(msg, "yaml: ")}
	}
	line, _ := strconv.Atoi(m[1])
	p := Problem{Line: line, Msg: m[3]}
	if m[2] != "" {
		col, _ := strconv.Atoi(m[2])
		for path, pos := range values {
			if pos == [2]int{line, col} && len(path) > len(p.Path) {
				p.Path = path
			}
		}
		if p.Path != "" {
			return p
		}
	}
	// Without a column, the deepest path that starts on this line.
	for path, l := range lines {
		if l == line && len(path) > len(p.Path) {
			p.Path = path
		}
	}
	return p
}

// index records the line of every path in the document.
func index(n *yaml.Node, path string, lines map[string]int, values map[string][2]int) {
	if _, ok := lines[path]; !ok && path != "" {
		lines[path] = n.Line
	}
	values[path] = [2]int{n.Line, n.Column}
	switch n.Kind {
	case yaml.MappingNode:
		for i := 0; i+1 < len(n.Content); i += 2 {
			k, v := n.Content[i], n.Content[i+1]
			p := join(path, k.Value)
			lines[p] = k.Line
			index(v, p, lines, values)
		}
	case yaml.SequenceNode:
		for i, c := range n.Content {
			index(c, fmt.Sprintf("%s[%d]", path, i), lines, values)
		}
	}
}

func join(path, key string) string {
	if path == "" {
		return key
	}
	return path + "." + key
}

// checkKeys reports every mapping key that names no field, with its path:
// yaml.v3's own KnownFields only works on a Decoder, not on a Node.
func checkKeys(n *yaml.Node, t reflect.Type, path string, add func(string, int, string)) {
	for t.Kind() == reflect.Pointer {
		t = t.Elem()
	}
	if n.Kind == yaml.AliasNode {
		return // checked where its anchor is; following it could loop forever
	}
	if reflect.PointerTo(t).Implements(reflect.TypeOf((*yaml.Unmarshaler)(nil)).Elem()) {
		return
	}
	switch {
	case t.Kind() == reflect.Struct && n.Kind == yaml.MappingNode:
		fields := map[string]reflect.Type{}
		for i := 0; i < t.NumField(); i++ {
			name, _, _ := strings.Cut(t.Field(i).Tag.Get("yaml"), ",")
			if name != "" && name != "-" {
				fields[name] = t.Field(i).Type
			}
		}
		for i := 0; i+1 < len(n.Content); i += 2 {
			k := n.Content[i]
			ft, ok := fields[k.Value]
			if !ok {
				add(join(path, k.Value), k.Line, fmt.Sprintf("unknown key %q", k.Value))
				continue
			}
			checkKeys(n.Content[i+1], ft, join(path, k.Value), add)
		}
	case t.Kind() == reflect.Map && n.Kind == yaml.MappingNode:
		for i := 0; i+1 < len(n.Content); i += 2 {
			checkKeys(n.Content[i+1], t.Elem(), join(path, n.Content[i].Value), add)
		}
	case t.Kind() == reflect.Slice && n.Kind == yaml.SequenceNode:
		for i, c := range n.Content {
			checkKeys(c, t.Elem(), fmt.Sprintf("%s[%d]", path, i), add)
		}
	}
}

var envRe = regexp.MustCompile(`\$\{([A-Za-z_][A-Za-z0-9_]*)\}`)

// expandEnv replaces ${NAME} in scalar values. Only the braced form is
// expanded: bcrypt hashes are full of bare '$'.
func expandEnv(n *yaml.Node, path string, add func(string, int, string)) {
	switch n.Kind {
	case yaml.ScalarNode:
		n.Value = envRe.ReplaceAllStringFunc(n.Value, func(m string) string {
			name := m[2 : len(m)-1]
			v, ok := os.LookupEnv(name)
			if !ok {
				add(path, n.Line, fmt.Sprintf("environment variable %s is not set", name))
			}
			return v
		})
	case yaml.MappingNode:
		for i := 0; i+1 < len(n.Content); i += 2 {
			expandEnv(n.Content[i+1], join(path, n.Content[i].Value), add)
		}
	case yaml.SequenceNode, yaml.DocumentNode:
		for i, c := range n.Content {
			expandEnv(c, fmt.Sprintf("%s[%d]", path, i), add)
		}
	}
}

// readSecrets fills each secret from its *_file form (Docker secrets).
func readSecrets(f *File, add func(string, int, string)) {
	read := func(path string, file string, dst *string) {
		if file == "" {
			return
		}
		if *dst != "" {
			add(path, f.lineOf(path), "set either the secret or its _file form, not both")
			return
		}
		b, err := f.read(file)
		if err != nil {
			add(path, f.lineOf(path), fmt.Sprintf("cannot read secret: %v", err))
			return
		}
		*dst = strings.TrimRight(string(b), "\r\n")
	}
	read("auth.ldap.bind_password_file", f.Auth.LDAP.BindPasswordFile, &f.Auth.LDAP.BindPassword)
	read("ratelimit.redis.password_file", f.RateLimit.Redis.PasswordFile, &f.RateLimit.Redis.Password)
	for i := range f.Upstreams {
		read(fmt.Sprintf("upstreams[%d].password_file", i), f.Upstreams[i].PasswordFile, &f.Upstreams[i].Password)
		if o := f.Upstreams[i].OAuth2; o != nil {
			read(fmt.Sprintf("upstreams[%d].oauth2.client_secret_file", i), o.ClientSecretFile, &o.ClientSecret)
		}
	}
	for i := range f.Webhooks {
		read(fmt.Sprintf("webhooks[%d].secret_file", i), f.Webhooks[i].SecretFile, &f.Webhooks[i].Secret)
	}
}
