package main

// End-to-end tests: the real binary (built once with -race), real clients
// (swaks, Python's smtplib), a real upstream on loopback (relaytest.Sink) and
// the file:// outbox. A missing client is a skip locally and a failure
// under CI.

import (
	"bytes"
	"context"
	"fmt"
	"math/rand/v2"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"

	"golang.org/x/crypto/bcrypt"

	"github.com/smarthost/smarthost/dkim"
	"github.com/smarthost/smarthost/relay/relaytest"
)

var binary string

// plainBinary is a smarthost built without the race detector, for tests
// that measure memory: the e2e binary itself, unless that one has it.
func plainBinary(t *testing.T) string {
	t.Helper()
	if !raceEnabled || os.Getenv("SMARTHOST_BIN") != "" {
		return binary
	}
	plainOnce.Do(func() {
		plainPath = filepath.Join(filepath.Dir(binary), "smarthost-norace")
		if out, err := exec.Command("go", "build", "-o", plainPath, ".").CombinedOutput(); err != nil {
			plainErr = fmt.Errorf("%v\n%s", err, out)
		}
	})
	if plainErr != nil {
		t.Fatalf("building smarthost without -race: %v", plainErr)
	}
	return plainPath
}

var (
	plainOnce sync.Once
	plainPath string
	plainErr  error
)

func TestMain(m *testing.M) {
	// SMARTHOST_BIN: test that binary (scripts/test.sh passes the release
	// build of scripts/build.sh) instead of building one.
	if bin := os.Getenv("SMARTHOST_BIN"); bin != "" {
		binary, _ = filepath.Abs(bin)
		os.Setenv("GORACE", "atexit_sleep_ms=0")
		os.Exit(m.Run())
	}
	dir, err := os.MkdirTemp("", "smarthost-e2e-")
	if err != nil {
		panic(err)
	}
	binary = filepath.Join(dir, "smarthost")
	args := []string{"build", "-o", binary}
	if raceEnabled {
		args = append(args, "-race")
	}
	if strings.HasPrefix(dkim.RSABackend, "OpenSSL") { // go test -tags openssl: the binary too
		args = append(args, "-tags", "openssl")
	}
	if out, err := exec.Command("go", append(args, ".")...).CombinedOutput(); err != nil {
		fmt.Fprintf(os.Stderr, "building smarthost: %v\n%s", err, out)
		os.Exit(1)
	}
	// The race runtime sleeps a second at every exit by default; the CLI
	// runs many times here.
	os.Setenv("GORACE", "atexit_sleep_ms=0")
	code := m.Run()
	os.RemoveAll(dir)
	os.Exit(code)
}

// need finds an external program, or skips (fails under CI).
func need(t *testing.T, path string, check ...string) {
	t.Helper()
	_, err := os.Stat(path)
	if err == nil && len(check) > 0 {
		err = exec.Command(path, check...).Run()
	}
	if err == nil {
		return
	}
	if os.Getenv("CI") == "true" {
		t.Fatalf("%s is missing under CI", path)
	}
	t.Skipf("%s not installed", path)
}

const python = "/usr/bin/python3"

// freePort picks a loopback port for a relay to bind later. It draws from
// below the kernel's usual ephemeral range (32768-60999), so that no
// outgoing connection can take the port between now and the bind, and
// never hands out the same port twice in one test run.
func freePort(t *testing.T) string {
	t.Helper()
	portsMu.Lock()
	defer portsMu.Unlock()
	for i := 0; i < 1000; i++ {
		p := 20000 + rand.IntN(12000)
		if portsUsed[p] {
			continue
		}
		l, err := net.Listen("tcp", fmt.Sprintf("127.0.0.1:%d", p))
		if err != nil {
			continue
		}
		l.Close()
		portsUsed[p] = true
		return l.Addr().String()
	}
	t.Fatal("no free port")
	return ""
}

var (
	portsMu   sync.Mutex
	portsUsed = map[int]bool{}
)

type relayEnv struct {
	dir      string
	config   string
	starttls string
	implicit string
	outbox   string
	records  string   // DKIM DNS records, "name value" lines
	chroot   bool     // serve from a copy of the binary with dir as its root
	bin      string   // serve with this binary instead (plainBinary)
	wrap     []string // run serve under this command (strace and its options)
	plain    string   // the plain listener's address, with envOpts.plain
}

type envOpts struct {
	upstream string // URL; default the file:// outbox
	// upstreams, when set, is the whole upstreams: section (and routes:,
	// if any) instead of one upstream at upstream.
	upstreams string
	users     string // more users, in users.yaml's form
	queue     string // more queue: keys, each line indented by two spaces
	workers   int
	policy    string // more policy: keys, each line indented by two spaces
	queueDir  string // default: queue/ in the test's folder
	maxSize   string // policy.max_message_size; default 64KiB
	plain     bool   // also a plain listener (relayEnv.plain)
	extra     string // more YAML
}

var bcryptOnce sync.Once
var aliceHash, zoeHash string

// Keys are made once: RSA key generation in a -race binary takes seconds,
// and every relay of these tests would otherwise make its own.
var keysOnce sync.Once
var edPEM, rsaPEM []byte

func newRelayEnv(t *testing.T, o envOpts) *relayEnv {
	t.Helper()
	bcryptOnce.Do(func() {
		h, _ := bcrypt.GenerateFromPassword([]byte("alice-pw"), bcrypt.MinCost)
		aliceHash = string(h)
		h, _ = bcrypt.GenerateFromPassword([]byte("zoe-pw"), bcrypt.MinCost)
		zoeHash = string(h)
	})
	keysOnce.Do(func() {
		_, edPEM, _ = dkim.GenerateKey("ed25519")
		_, rsaPEM, _ = dkim.GenerateKey("rsa2048")
	})
	e := &relayEnv{dir: t.TempDir(), starttls: freePort(t), implicit: freePort(t)}
	os.MkdirAll(filepath.Join(e.dir, "dkim"), 0o700)
	os.WriteFile(filepath.Join(e.dir, "dkim", "e2e.key"), edPEM, 0o600)
	os.WriteFile(filepath.Join(e.dir, "dkim", "e2ersa.key"), rsaPEM, 0o600)
	e.config = filepath.Join(e.dir, "smarthost.yaml")
	e.outbox = filepath.Join(e.dir, "outbox")
	if o.upstream == "" {
		o.upstream = "file://" + e.outbox
	}
	if o.workers == 0 {
		o.workers = 4
	}
	if o.maxSize == "" {
		o.maxSize = "64KiB"
	}
	if o.queueDir == "" {
		o.queueDir = filepath.Join(e.dir, "queue")
	}
	// The admin listener is on by default, at one fixed port: off here
	// unless a test asks, so that relays of this and other suites on the
	// machine do not take it from each other.
	if !strings.Contains(o.extra, "metrics:") {
		o.extra += "metrics: {listen: \"\"}\n"
	}
	ups := o.upstreams
	if ups == "" {
		ups = fmt.Sprintf("upstreams:\n  - {name: up, url: %q, tls: none, timeout: 5s}", o.upstream)
	}
	listeners := ""
	if o.plain {
		e.plain = freePort(t)
		listeners = fmt.Sprintf("  - {address: %q, mode: plain}\n", e.plain)
	}
	users := fmt.Sprintf("users:\n  alice:\n    password_hash: %q\n    addresses: [alice@example.com, \"*@app.example.com\"]\n"+
		"  zoe:\n    password_hash: %q\n    addresses: [zoë@example.com]\n%s", aliceHash, zoeHash, o.users)
	os.WriteFile(filepath.Join(e.dir, "users.yaml"), []byte(users), 0o600)
	cfg := fmt.Sprintf(`hostname: relay.test
listeners:
  - {address: %q, mode: starttls}
  - {address: %q, mode: implicit}
%stls: {self_signed: true}
auth:
  backend: static
  static: {users_file: %q}
policy:
  max_recipients: 3
  max_message_size: %s
%s
dkim:
  domains:
    example.com:
      - {selector: e2e, key_file: %q, create_if_missing: true, algo: ed25519}
      - {selector: e2ersa, key_file: %q, create_if_missing: true}
%s
queue:
  dir: %q
  workers: %d
  retry: [200ms]
  max_age: 1h
%s
log: {format: text, level: debug}
%s`, e.starttls, e.implicit, listeners, filepath.Join(e.dir, "users.yaml"), o.maxSize, o.policy, filepath.Join(e.dir, "dkim", "e2e.key"),
		filepath.Join(e.dir, "dkim", "e2ersa.key"), ups, o.queueDir, o.workers, o.queue, o.extra)
	if err := os.WriteFile(e.config, []byte(cfg), 0o600); err != nil {
		t.Fatal(err)
	}
	return e
}

type proc struct {
	cmd  *exec.Cmd
	log  *bytes.Buffer
	done chan struct{}
	mu   *sync.Mutex
}

type lockedBuffer struct {
	mu *sync.Mutex
	b  *bytes.Buffer
}

func (l lockedBuffer) Write(p []byte) (int, error) {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.b.Write(p)
}

func (p *proc) logText() string {
	p.mu.Lock()
	defer p.mu.Unlock()
	return p.log.String()
}

// start runs `smarthost serve` and waits until it accepts connections.
func (e *relayEnv) start(t *testing.T) *proc {
	t.Helper()
	p := &proc{log: &bytes.Buffer{}, done: make(chan struct{}), mu: &sync.Mutex{}}
	bin := binary
	if e.bin != "" {
		bin = e.bin
	}
	p.cmd = exec.Command(bin, "serve", "--config", e.config)
	if e.chroot {
		p.cmd = e.chrootCommand(t)
	}
	if len(e.wrap) > 0 {
		p.cmd = exec.Command(e.wrap[0], append(e.wrap[1:], p.cmd.Args...)...)
	}
	p.cmd.Stderr = lockedBuffer{p.mu, p.log}
	p.cmd.Stdout = p.cmd.Stderr
	if err := p.cmd.Start(); err != nil {
		t.Fatal(err)
	}
	go func() { p.cmd.Wait(); close(p.done) }()
	t.Cleanup(func() {
		p.cmd.Process.Kill()
		<-p.done
		if strings.Contains(p.logText(), "DATA RACE") {
			t.Error("the race detector found a data race in smarthost")
		}
		// Every line the relay logged, JSON or text, has each key once.
		if err := relaytest.CheckLog([]byte(p.logText())); err != nil {
			t.Error(err)
		}
		if t.Failed() {
			t.Logf("smarthost log:\n%s", p.logText())
		}
	})
	started := relaytest.Within(20*time.Second, func() bool {
		if c, err := net.Dial("tcp", e.implicit); err == nil {
			c.Close()
			return true
		}
		select {
		case <-p.done:
			t.Fatalf("smarthost exited: %v\n%s", p.cmd.ProcessState, p.logText())
		default:
		}
		return false
	})
	if !started {
		t.Fatalf("smarthost did not start:\n%s", p.logText())
	}
	if e.records == "" {
		out, err := exec.Command(binary, "dkim", "dns", "--config", e.config).Output()
		if err != nil {
			t.Fatalf("dkim dns: %v", err)
		}
		e.records = zoneToRecords(string(out))
	}
	return p
}

// zoneToRecords turns `name. IN TXT ( "a" "b" )` lines into "name value".
func zoneToRecords(zone string) string {
	var b strings.Builder
	re := regexp.MustCompile(`"([^"]*)"`)
	for _, line := range strings.Split(strings.TrimSpace(zone), "\n") {
		name, _, _ := strings.Cut(line, " ")
		var v strings.Builder
		for _, m := range re.FindAllStringSubmatch(line, -1) {
			v.WriteString(m[1])
		}
		fmt.Fprintf(&b, "%s %s\n", name, v.String())
	}
	return b.String()
}

func (p *proc) signal(t *testing.T, s os.Signal) {
	t.Helper()
	if err := p.cmd.Process.Signal(s); err != nil {
		t.Fatal(err)
	}
}

func (p *proc) wait(t *testing.T, d time.Duration) int {
	t.Helper()
	select {
	case <-p.done:
		return p.cmd.ProcessState.ExitCode()
	case <-time.After(d):
		t.Fatalf("smarthost did not exit within %s", d)
	}
	return -1
}

func sink(t *testing.T, addr string) *relaytest.Sink {
	t.Helper()
	s, err := relaytest.NewSink(relaytest.SinkOptions{Addr: addr})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(s.Close)
	return s
}

// outboxMessage waits for the file:// upstream's copy of message id.
func (e *relayEnv) outboxMessage(t *testing.T, id string) []byte {
	t.Helper()
	var eml []byte
	relaytest.Eventually(t, "the outbox file", 10*time.Second, func() bool {
		var err error
		eml, err = os.ReadFile(filepath.Join(e.outbox, id+".eml"))
		return err == nil
	})
	return eml
}

func swaks(t *testing.T, args ...string) (string, int) {
	t.Helper()
	need(t, "/usr/bin/swaks")
	cmd := exec.Command("/usr/bin/swaks", append([]string{"--timeout", "20"}, args...)...)
	out, _ := cmd.CombinedOutput()
	return string(out), cmd.ProcessState.ExitCode()
}

// pySMTP runs a Python smtplib script with HOST, PORT and CTX (a TLS
// context that trusts the self-signed certificate) defined.
func pySMTP(t *testing.T, addr, script string, args ...string) string {
	t.Helper()
	need(t, python, "-c", "import smtplib, ssl")
	host, port, _ := net.SplitHostPort(addr)
	prelude := fmt.Sprintf("import smtplib, ssl, sys\nHOST=%q\nPORT=%s\nCTX=ssl.create_default_context()\nCTX.check_hostname=False\nCTX.verify_mode=ssl.CERT_NONE\n", host, port)
	ctx, cancel := context.WithTimeout(context.Background(), 120*time.Second)
	defer cancel()
	out, err := exec.CommandContext(ctx, python, append([]string{"-c", prelude + script}, args...)...).CombinedOutput()
	if err != nil {
		t.Fatalf("python: %v\n%s", err, out)
	}
	return string(out)
}

// counts reads the numbers of the one line of out that pattern matches
// whole (it is anchored at both ends of a line; each number is a group):
// a count read whole, where a substring match would take 10 for 0.
func counts(t *testing.T, out, pattern string) []int {
	t.Helper()
	m := regexp.MustCompile(`(?m)^`+pattern+`\r?$`).FindAllStringSubmatch(out, -1)
	if len(m) != 1 {
		t.Fatalf("%d lines match %q in:\n%s", len(m), pattern, out)
	}
	var n []int
	for _, g := range m[0][1:] {
		v, err := strconv.Atoi(g)
		if err != nil {
			t.Fatalf("%q in %q: %v", g, m[0][0], err)
		}
		n = append(n, v)
	}
	return n
}

// queueCount is the number of messages `smarthost queue list` finds in
// e's spool, from its count line ("N message(s)").
func queueCount(t *testing.T, e *relayEnv) int {
	t.Helper()
	out, _ := runCLI("queue", "list", "--config", e.config)
	return counts(t, out, `(\d+) message\(s\)`)[0]
}

// dkimVerify checks msg with dkimpy and Mail::DKIM. Debian 12's Mail::DKIM
// predates Ed25519 and calls that signature unsupported, which a verifier
// ignores (RFC 8463); its RSA signature must pass.
func dkimVerify(t *testing.T, records string, msg []byte) {
	t.Helper()
	need(t, python, "-c", "import dkim")
	need(t, "/usr/bin/perl", "-e", "use Mail::DKIM::Verifier;")
	dir := t.TempDir()
	os.WriteFile(filepath.Join(dir, "m.eml"), msg, 0o600)
	os.WriteFile(filepath.Join(dir, "records"), []byte(records), 0o600)
	for _, v := range [][2]string{{python, "../../scripts/dkimverify.py"}, {"/usr/bin/perl", "../../scripts/dkimverify.pl"}} {
		out, err := exec.Command(v[0], v[1], filepath.Join(dir, "m.eml"), filepath.Join(dir, "records")).CombinedOutput()
		o := string(out)
		ok := err == nil && strings.Count(o, "pass") == strings.Count(string(msg), "DKIM-Signature:")
		if strings.Contains(o, "unsupported algorithm ed25519-sha256") {
			ok = strings.Contains(o, "a=rsa-sha256: pass")
		}
		if !ok {
			t.Fatalf("%s does not verify the signatures: %v\n%s\n%s", v[1], err, o, msg)
		}
	}
}
