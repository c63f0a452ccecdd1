// Package configs is the YAML schema of smarthost: it reads a file, expands
// ${ENV} and *_file secrets, decodes strictly and reports every problem with
// its YAML path and line. It knows nothing about the packages that use it;
// cmd/smarthost translates a File into their own Config structs.
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

// File mirrors the contract's YAML section by section.
type File struct {
	Hostname  string     `yaml:"hostname"`
	Listeners []Listener `yaml:"listeners"`
	TLS       TLS        `yaml:"tls"`
	Auth      Auth       `yaml:"auth"`
	Policy    Policy     `yaml:"policy"`
	RateLimit RateLimit  `yaml:"ratelimit"`
	DKIM      DKIM       `yaml:"dkim"`
	Upstreams []Upstream `yaml:"upstreams"`
	Routes    []Route    `yaml:"routes"`
	Queue     Queue      `yaml:"queue"`
	Headers   Headers    `yaml:"headers"`
	Metrics   Metrics    `yaml:"metrics"`
	Log       Log        `yaml:"log"`

	// Path is the file this was read from ("" for embedded text).
	Path string `yaml:"-"`
	// lines maps a YAML path to the line it starts on, for Problems found
	// after decoding.
	lines map[string]int
	// values maps a YAML path to the position of its value node.
	values map[string][2]int
}

type Listener struct {
	Address       string `yaml:"address"`
	Mode          string `yaml:"mode"`
	ProxyProtocol bool   `yaml:"proxy_protocol"`
}

type TLS struct {
	CertFile   string `yaml:"cert_file"`
	KeyFile    string `yaml:"key_file"`
	SelfSigned bool   `yaml:"self_signed"`
	MinVersion string `yaml:"min_version"`
}

type Auth struct {
	Backend           string `yaml:"backend"`
	AllowInsecureAuth bool   `yaml:"allow_insecure_auth"`
	Static            Static `yaml:"static"`
	LDAP              LDAP   `yaml:"ldap"`
}

type Static struct {
	UsersFile string   `yaml:"users_file"`
	CacheTTL  Duration `yaml:"cache_ttl"`
}

type LDAP struct {
	URLs              []string `yaml:"urls"`
	StartTLS          *bool    `yaml:"start_tls"`
	TLSVerify         *bool    `yaml:"tls_verify"`
	CAFile            string   `yaml:"ca_file"`
	BindDN            string   `yaml:"bind_dn"`
	BindPassword      string   `yaml:"bind_password"`
	BindPasswordFile  string   `yaml:"bind_password_file"`
	BaseDN            string   `yaml:"base_dn"`
	UserFilter        string   `yaml:"user_filter"`
	AddressAttributes []string `yaml:"address_attributes"`
	ClassAttribute    string   `yaml:"class_attribute"`
	RequiredGroup     string   `yaml:"required_group"`
	Timeout           Duration `yaml:"timeout"`
	CacheTTL          Duration `yaml:"cache_ttl"`
}

type Policy struct {
	TrustedNetworks         []string `yaml:"trusted_networks"`
	TrustedSenders          []string `yaml:"trusted_senders"`
	ProxyNetworks           []string `yaml:"proxy_networks"`
	EnforceHeaderFrom       *bool    `yaml:"enforce_header_from"`
	MaxRecipients           int      `yaml:"max_recipients"`
	MaxMessageSize          Size     `yaml:"max_message_size"`
	AllowedRecipientDomains []string `yaml:"allowed_recipient_domains"`
	// BareNewline: a bare LF in message content is made CRLF
	// ("normalize", as Postfix 3.9+ does) or refused ("reject").
	BareNewline string `yaml:"bare_newline"`
}

type RateLimit struct {
	Backend          string           `yaml:"backend"`
	Redis            Redis            `yaml:"redis"`
	OnBackendError   string           `yaml:"on_backend_error"`
	Classes          map[string]Class `yaml:"classes"`
	AuthFailures     *Rate            `yaml:"auth_failures"`
	ConnectionsPerIP int              `yaml:"connections_per_ip"`
	MaxConnections   int              `yaml:"max_connections"`
	Timeout          Duration         `yaml:"timeout"`
}

type Redis struct {
	Addrs        []string `yaml:"addrs"`
	MasterName   string   `yaml:"master_name"`
	Username     string   `yaml:"username"`
	Password     string   `yaml:"password"`
	PasswordFile string   `yaml:"password_file"`
	DB           int      `yaml:"db"`
	TLS          bool     `yaml:"tls"`
}

type Class struct {
	Messages   *Rate `yaml:"messages"`
	Recipients *Rate `yaml:"recipients"`
	Bytes      *Rate `yaml:"bytes"`
}

type DKIM struct {
	Domains      map[string][]DKIMKey `yaml:"domains"`
	Oversign     []string             `yaml:"oversign"`
	OnMissingKey string               `yaml:"on_missing_key"`
}

type DKIMKey struct {
	Selector        string `yaml:"selector"`
	KeyFile         string `yaml:"key_file"`
	CreateIfMissing bool   `yaml:"create_if_missing"`
	Algo            string `yaml:"algo"`
}

type Upstream struct {
	Name           string   `yaml:"name"`
	URL            string   `yaml:"url"`
	TLS            string   `yaml:"tls"`
	TLSVerify      *bool    `yaml:"tls_verify"`
	CAFile         string   `yaml:"ca_file"`
	Username       string   `yaml:"username"`
	Password       string   `yaml:"password"`
	PasswordFile   string   `yaml:"password_file"`
	MaxConnections int      `yaml:"max_connections"`
	Timeout        Duration `yaml:"timeout"`
	Weight         int      `yaml:"weight"`
}

type Route struct {
	Match     RouteMatch `yaml:"match"`
	Upstreams []string   `yaml:"upstreams"`
}

type RouteMatch struct {
	RecipientDomains []string `yaml:"recipient_domains"`
	SenderDomains    []string `yaml:"sender_domains"`
	Classes          []string `yaml:"classes"`
}

type Queue struct {
	Dir     string     `yaml:"dir"`
	Workers int        `yaml:"workers"`
	Retry   []Duration `yaml:"retry"`
	MaxAge  Duration   `yaml:"max_age"`
	// DelayWarning: one "still trying" notice to the sender after this long
	// (0: none).
	DelayWarning Duration `yaml:"delay_warning"`
}

// Headers is what the relay does to message header fields.
type Headers struct {
	// Received: "full" names the client (EHLO name and address) in our
	// Received: field; "anonymous" leaves both out.
	Received string `yaml:"received"`
}

type Metrics struct {
	Listen string `yaml:"listen"`
}

type Log struct {
	Format string `yaml:"format"`
	Level  string `yaml:"level"`
}

// Problem is one thing wrong with a configuration file.
type Problem struct {
	Path string // YAML path, e.g. "listeners[0].mode"
	Line int    // 0 when unknown
	Msg  string
}

func (p Problem) String() string {
	switch {
	case p.Path != "" && p.Line > 0:
		return fmt.Sprintf("%s (line %d): %s", p.Path, p.Line, p.Msg)
	case p.Path != "":
		return fmt.Sprintf("%s: %s", p.Path, p.Msg)
	case p.Line > 0:
		return fmt.Sprintf("line %d: %s", p.Line, p.Msg)
	}
	return p.Msg
}

// Problems is every problem found in one file; it is an error when not empty.
type Problems []Problem

func (ps Problems) Error() string {
	s := make([]string, len(ps))
	for i, p := range ps {
		s[i] = p.String()
	}
	return strings.Join(s, "\n")
}

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
func Parse(text []byte) (*File, error) {
	var root yaml.Node
	if err := yaml.Unmarshal(text, &root); err != nil {
		return nil, Problems{problemFromYAML(err.Error(), nil, nil)}
	}
	f := &File{lines: map[string]int{}, values: map[string][2]int{}}
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
	f.readSecrets(add)
	f.applyDefaults()
	f.validate(add)
	sort.SliceStable(probs, func(i, j int) bool { return sortLine(probs[i]) < sortLine(probs[j]) })
	if len(probs) > 0 {
		return f, probs
	}
	return f, nil
}

// Problem builds a Problem for path with the line it was found on, for checks
// made outside this package (unreadable key files and the like).
func (f *File) Problem(path string, format string, args ...any) Problem {
	return Problem{Path: path, Line: f.lineOf(path), Msg: fmt.Sprintf(format, args...)}
}

func (f *File) lineOf(path string) int {
	for p := path; p != ""; {
		if l, ok := f.lines[p]; ok {
			return l
		}
		i := strings.LastIndexAny(p, ".[")
		if i < 0 {
			break
		}
		p = p[:i]
	}
	return 0
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
func (f *File) readSecrets(add func(string, int, string)) {
	read := func(path string, file string, dst *string) {
		if file == "" {
			return
		}
		if *dst != "" {
			add(path, f.lineOf(path), "set either the secret or its _file form, not both")
			return
		}
		b, err := os.ReadFile(file)
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
	}
}
