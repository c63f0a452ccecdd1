package configs

import (
	"errors"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"
)

func TestQuickstartIsValid(t *testing.T) {
	f, err := Parse(Quickstart)
	if err != nil {
		t.Fatal(err)
	}
	if f.Listeners[0].Address != "127.0.0.1:2587" || f.Listeners[0].Mode != "starttls" || !f.TLS.SelfSigned {
		t.Errorf("quickstart listener %+v tls %+v", f.Listeners[0], f.TLS)
	}
	if f.RateLimit.Backend != "memory" || f.Upstreams[0].URL != "file://./var/outbox" {
		t.Errorf("quickstart ratelimit %q upstream %q", f.RateLimit.Backend, f.Upstreams[0].URL)
	}
}

// configs/example.yaml, with its ${ENV} secrets set, decodes without
// a problem and every value lands where it should.
func TestExampleDecodes(t *testing.T) {
	t.Setenv("LDAP_BIND_PASSWORD", "ldap-pw")
	t.Setenv("REDIS_PASSWORD", "redis-pw")
	t.Setenv("UPSTREAM_PASSWORD", "up-pw")
	t.Setenv("M365_CLIENT_SECRET", "m365-secret")
	t.Setenv("WEBHOOK_SECRET", "webhook-secret-of-app1")
	f, err := Load("example.yaml")
	if err != nil {
		t.Fatal(err)
	}
	if f.Auth.LDAP.BindPassword != "ldap-pw" || f.RateLimit.Redis.Password != "redis-pw" || f.Upstreams[0].Password != "up-pw" {
		t.Error("secrets not expanded")
	}
	if got := f.RateLimit.Classes["default"].Messages; got == nil || got.N != 200 || got.Per != time.Hour {
		t.Errorf("default messages rate %+v", got)
	}
	if got := f.RateLimit.Classes["default"].Bytes; got == nil || got.N != 1<<30 || got.Per != 24*time.Hour {
		t.Errorf("default bytes rate %+v", got)
	}
	if f.Policy.MaxMessageSize != 25<<20 || time.Duration(f.Queue.MaxAge) != 120*time.Hour || len(f.Queue.Retry) != 4 {
		t.Errorf("policy %+v queue %+v", f.Policy, f.Queue)
	}
	if u := f.Upstreams[0]; time.Duration(u.ConnectTimeout) != 30*time.Second || time.Duration(u.Timeout) != 5*time.Minute {
		t.Errorf("upstream timeouts %v, connect %v", u.Timeout, u.ConnectTimeout)
	}
	if u := f.Upstreams[1]; time.Duration(u.ConnectTimeout) != 30*time.Second {
		t.Errorf("connect_timeout defaults to %v, want Postfix's 30s", u.ConnectTimeout)
	}
	if len(f.DKIM.Domains["example.com"]) != 2 || !f.DKIM.Domains["quickstart.test"][0].CreateIfMissing {
		t.Errorf("dkim %+v", f.DKIM)
	}
}

func TestBadConfigs(t *testing.T) {
	files, _ := filepath.Glob("testdata/bad/*.yaml")
	if len(files) < 10 {
		t.Fatalf("only %d bad configs", len(files))
	}
	for _, file := range files {
		t.Run(filepath.Base(file), func(t *testing.T) {
			text, _ := os.ReadFile(file)
			first, _, _ := strings.Cut(string(text), "\n")
			want := strings.TrimPrefix(first, "# want: ")
			_, err := Parse(text)
			var probs Problems
			if !errors.As(err, &probs) {
				t.Fatalf("got %v, want problem %q", err, want)
			}
			for _, p := range probs {
				if strings.HasPrefix(p.String(), want) {
					return
				}
			}
			t.Fatalf("problems:\n%v\nwant one starting %q", err, want)
		})
	}
}

func TestAllProblemsAtOnce(t *testing.T) {
	_, err := Parse([]byte(`listeners:
  - address: "nope"
    mode: weird
    extra: 1
auth: {backend: static}
upstreams: [{name: a, url: "gopher://x"}]
queue: {max_age: soon, workers: -1}
log: {level: loud}
`))
	var probs Problems
	if !errors.As(err, &probs) {
		t.Fatal(err)
	}
	for _, want := range []string{
		`listeners[0].extra (line 4): unknown key "extra"`,
		`listeners[0].address (line 2): bad address "nope"`,
		`listeners[0].mode (line 3): "weird" is not one of`,
		`auth.static.users_file`,
		`upstreams[0].url (line 6): scheme of "gopher://x"`,
		`queue.max_age (line 7): bad duration "soon"`,
		`queue.workers (line 7): must be positive`,
		`log.level (line 8): "loud"`,
	} {
		found := false
		for _, p := range probs {
			found = found || strings.HasPrefix(p.String(), want)
		}
		if !found {
			t.Errorf("missing problem %q in:\n%v", want, err)
		}
	}
}

func TestSecretFiles(t *testing.T) {
	dir := t.TempDir()
	os.WriteFile(filepath.Join(dir, "pw"), []byte("s3cret\n"), 0o600)
	f, err := Parse([]byte(`listeners: [{address: "127.0.0.1:587"}]
tls: {self_signed: true}
auth: {backend: static, static: {users_file: u}}
upstreams:
  - {name: a, url: "smtp://h:587", username: u, password_file: "` + filepath.Join(dir, "pw") + `"}
  - {name: b, url: "smtp://h:587", username: u, password: x, password_file: "` + filepath.Join(dir, "pw") + `"}
`))
	if f.Upstreams[0].Password != "s3cret" {
		t.Errorf("password_file gave %q", f.Upstreams[0].Password)
	}
	if err == nil || !strings.Contains(err.Error(), "upstreams[1].password_file (line 6): set either") {
		t.Errorf("both forms: %v", err)
	}
}

func TestEnvDoesNotTouchBcrypt(t *testing.T) {
	_, err := Parse([]byte(`hostname: "$2a$10$abc${SMARTHOST_TEST_HOST}"
listeners: [{address: "127.0.0.1:587"}]
tls: {self_signed: true}
auth: {backend: static, static: {users_file: u}}
upstreams: [{name: a, url: "file:///o"}]
`))
	if err == nil {
		t.Fatal("unset variable not reported")
	}
	t.Setenv("SMARTHOST_TEST_HOST", "-x")
	f, err := Parse([]byte(`hostname: "$2a$10$abc${SMARTHOST_TEST_HOST}"
listeners: [{address: "127.0.0.1:587"}]
tls: {self_signed: true}
auth: {backend: static, static: {users_file: u}}
upstreams: [{name: a, url: "file:///o"}]
`))
	if err != nil || f.Hostname != "$2a$10$abc-x" {
		t.Fatalf("%v %q", err, f.Hostname)
	}
}

func TestParseSizeAndRate(t *testing.T) {
	for in, want := range map[string]int64{"0": 0, "1024": 1024, "64KiB": 64 << 10, "25MiB": 25 << 20, "1GiB": 1 << 30, " 2 MiB ": 2 << 20} {
		if got, err := ParseSize(in); err != nil || got != want {
			t.Errorf("ParseSize(%q) = %d, %v; want %d", in, got, err, want)
		}
	}
	for _, in := range []string{"", "-1", "1.5MiB", "10TiB", "MiB", "99999999999999999999"} {
		if _, err := ParseSize(in); err == nil {
			t.Errorf("ParseSize(%q) accepted", in)
		}
	}
	for in, want := range map[string]Rate{"200/h": {200, time.Hour}, "10/s": {10, time.Second}, "1GiB/d": {1 << 30, 24 * time.Hour}, "5/m": {5, time.Minute}, "10/10m": {10, 10 * time.Minute}, "1/366d": {1, 366 * 24 * time.Hour}} {
		if got, err := ParseRate(in); err != nil || got != want {
			t.Errorf("ParseRate(%q) = %v, %v; want %v", in, got, err, want)
		}
	}
	for _, in := range []string{"200", "200/hr", "0/h", "/h", "-5/h", "x/h", "5/0m", "5/10", "1/367d", "1/107000d", "1/2147483647s"} {
		if _, err := ParseRate(in); err == nil {
			t.Errorf("ParseRate(%q) accepted", in)
		}
	}
}

func FuzzParseRate(f *testing.F) {
	for _, s := range []string{"200/h", "1GiB/d", "0/s", "/", "9999999999999999999KiB/m"} {
		f.Add(s)
	}
	f.Fuzz(func(t *testing.T, s string) {
		r, err := ParseRate(s)
		if err == nil && (r.N <= 0 || r.Per <= 0) {
			t.Fatalf("ParseRate(%q) = %+v without error", s, r)
		}
	})
}

// FuzzParse: any text gives a File or problems, never a panic, and a File
// without problems is one the relay can start from.
//
// Each execution is cheap. The seeds are small: a minimal configuration
// with one section of example.yaml at a time, not the whole 10 KB file.
// The fuzzer minimizes every input that finds new code by cutting it
// byte by byte, and on 10 KB at 2.6 ms a parse that took the whole minute
// it allows, every time: FuzzParse made 5 executions in 45 s. And the
// files *_file keys name are not read (an input could name /dev/zero).
func FuzzParse(f *testing.F) {
	for _, seed := range parseSeeds(f) {
		f.Add(seed)
	}
	f.Add("a: &x [*x]\n")
	secret := func(string) ([]byte, error) { return []byte("a secret of some length"), nil }
	f.Fuzz(func(t *testing.T, text string) {
		file, err := parse([]byte(text), secret)
		if err != nil {
			return
		}
		if len(file.Listeners) == 0 || len(file.Upstreams) == 0 || file.Policy.MaxMessageSize <= 0 || file.Queue.Workers <= 0 {
			t.Fatalf("valid but unusable: %+v", file)
		}
	})
}

// parseSeeds is the quickstart, and a minimal configuration with each
// top-level section of example.yaml in turn (in place of its own, for
// the sections it has).
func parseSeeds(t testing.TB) []string {
	minimal := map[string]string{
		"listeners": "listeners: [{address: \"127.0.0.1:1\"}]\n",
		"tls":       "tls: {self_signed: true}\n",
		"auth":      "auth: {backend: static, static: {users_file: u}}\n",
		"upstreams": "upstreams: [{name: a, url: \"file:///o\"}]\n",
	}
	order := []string{"listeners", "tls", "auth", "upstreams"}
	b, err := os.ReadFile("example.yaml")
	if err != nil {
		t.Fatal(err)
	}
	seeds := []string{string(Quickstart)}
	sections := map[string]string{}
	var names []string
	name := ""
	for _, line := range strings.SplitAfter(string(b), "\n") {
		if k, _, ok := strings.Cut(line, ":"); ok && line[0] != ' ' && line[0] != '#' {
			name = k
			names = append(names, k)
		}
		if name != "" {
			sections[name] += line
		}
	}
	for _, n := range names {
		var seed strings.Builder
		for _, k := range order {
			if k != n {
				seed.WriteString(minimal[k])
			}
		}
		seed.WriteString(sections[n])
		seeds = append(seeds, seed.String())
	}
	if len(seeds) < 10 {
		t.Fatalf("%d seeds: example.yaml has changed shape", len(seeds))
	}
	return seeds
}

// The admin listener answers at 127.0.0.1:9587 unless the file says where,
// and is off only when set to "".
func TestMetricsListenDefault(t *testing.T) {
	base := "listeners: [{address: \"127.0.0.1:587\"}]\ntls: {self_signed: true}\nauth: {backend: static, static: {users_file: u}}\nupstreams: [{name: a, url: \"file:///o\"}]\n"
	for _, c := range []struct{ extra, want string }{
		{"", "127.0.0.1:9587"},
		{"metrics: {pprof: false}\n", "127.0.0.1:9587"},
		{"metrics: {listen: \"\"}\n", ""},
		{"metrics: {listen: \"[::1]:9000\"}\n", "[::1]:9000"},
	} {
		f, err := Parse([]byte(base + c.extra))
		if err != nil {
			t.Fatalf("%q: %v", c.extra, err)
		}
		if f.Metrics.Listen != c.want {
			t.Errorf("%q: metrics.listen %q, want %q", c.extra, f.Metrics.Listen, c.want)
		}
	}
}
