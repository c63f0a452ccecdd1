package main

// The README's commands, run as they stand: each block is read from the
// README (by the <!-- snippet: NAME --> line before it), so the page and
// what CI runs cannot drift apart.

import (
	"bufio"
	"context"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"strings"
	"testing"
	"time"

	"github.com/smarthost/smarthost/configs"
)

// docSnippet is the fenced block that follows <!-- snippet: name --> in
// the file at path (relative to the repository root).
func docSnippet(t *testing.T, path, name string) string {
	t.Helper()
	b, err := os.ReadFile(filepath.Join("../..", path))
	if err != nil {
		t.Fatal(err)
	}
	sc := bufio.NewScanner(strings.NewReader(string(b)))
	var out strings.Builder
	state := 0 // 0: looking for the marker, 1: for the fence, 2: inside
	for sc.Scan() {
		line := sc.Text()
		switch {
		case state == 0 && strings.TrimSpace(line) == "<!-- snippet: "+name+" -->":
			state = 1
		case state == 1 && strings.HasPrefix(line, "```"):
			state = 2
		case state == 1:
			t.Fatalf("%s: snippet %s: the marker is not followed by a fenced block", path, name)
		case state == 2 && strings.HasPrefix(line, "```"):
			return out.String()
		case state == 2:
			out.WriteString(line + "\n")
		}
	}
	t.Fatalf("%s has no snippet %s", path, name)
	return ""
}

// shellCommands splits a shell block into its commands: continued lines
// joined, comments and blank lines dropped. (The blocks quote no #.)
func shellCommands(block string) []string {
	var cmds []string
	var cur string
	for _, line := range strings.Split(block, "\n") {
		if strings.HasSuffix(line, "\\") {
			cur += strings.TrimSuffix(line, "\\") + " "
			continue
		}
		line = shellComment.ReplaceAllString(cur+line, "")
		if strings.TrimSpace(line) != "" {
			cmds = append(cmds, strings.TrimSpace(line))
		}
		cur = ""
	}
	return cmds
}

var shellComment = regexp.MustCompile(`(^|\s+)#.*$`)

// privateNetwork runs script in a network namespace of its own (and, with
// mount, a mount namespace), so that the quickstart's fixed ports cannot
// meet anything else on the machine, and in a PID namespace, so that
// nothing it starts outlives it. It needs root, as CI has.
func privateNetwork(t *testing.T, script string, mount bool) *exec.Cmd {
	t.Helper()
	if os.Geteuid() != 0 {
		if os.Getenv("CI") == "true" {
			t.Fatal("a private network namespace needs root, which CI runs as")
		}
		t.Skip("a private network namespace needs root")
	}
	need(t, "/usr/bin/unshare")
	need(t, "/usr/sbin/ip")
	args := []string{"--net", "--pid", "--fork", "--kill-child"}
	if mount {
		args = append(args, "--mount", "--propagation", "private")
	}
	ctx, cancel := context.WithTimeout(context.Background(), 3*time.Minute)
	t.Cleanup(cancel)
	return exec.CommandContext(ctx, "unshare", append(args, "bash", "-c", "set -em\nip link set lo up\n"+script)...)
}

// quickstartFlow is the README's quick start as a reader runs it: serve
// (in the background: the reader's first terminal), then the send and
// read blocks, each command's output after a "@@@ command" line.
func quickstartFlow(t *testing.T, serve []string) string {
	t.Helper()
	var b strings.Builder
	for _, c := range serve {
		if strings.HasSuffix(c, " serve") {
			c += ` >"$SERVE_LOG" 2>&1 &` + "\nSERVE_PID=$!"
		}
		b.WriteString(c + "\n")
	}
	// The second terminal waits until the relay listens; the reader waits
	// "a moment" for the outbox. Both with a deadline.
	b.WriteString(`for i in $(seq 400); do (exec 3<>/dev/tcp/127.0.0.1/2587) 2>/dev/null && break; sleep 0.05; done` + "\n")
	for _, c := range shellCommands(docSnippet(t, "README.md", "quickstart-send")) {
		b.WriteString("echo '@@@ send'\n" + c + "\n")
	}
	b.WriteString(`for i in $(seq 400); do ls var/outbox/*.eml >/dev/null 2>&1 && break; sleep 0.05; done` + "\n")
	for i, c := range shellCommands(docSnippet(t, "README.md", "quickstart-read")) {
		b.WriteString("echo '@@@ read " + string(rune('0'+i)) + "'\n" + c + "\n")
	}
	// "Operate it": the queue commands, in the same folder, with no flag.
	for i, c := range shellCommands(docSnippet(t, "README.md", "operate-queue")) {
		b.WriteString("echo '@@@ operate " + string(rune('0'+i)) + "'\n" + c + "\n")
	}
	// Job control (set -m) gave serve a process group: go run's and its
	// child's.
	b.WriteString("kill -TERM -- -$SERVE_PID\nwait\n")
	return b.String()
}

// sections splits a flow's output at its "@@@ name" lines.
func sections(out string) map[string]string {
	m := map[string]string{}
	name := ""
	for _, line := range strings.SplitAfter(out, "\n") {
		if strings.HasPrefix(line, "@@@ ") {
			name = strings.TrimSpace(strings.TrimPrefix(line, "@@@ "))
			continue
		}
		m[name] += line
	}
	return m
}

// checkQuickstart asserts what the reader is told to expect: the 250 with a
// queue ID, the message in the outbox, signed, and a signature that
// verifies against the record `smarthost dkim dns` prints.
func checkQuickstart(t *testing.T, out, log string) {
	t.Helper()
	s := sections(out)
	if !queuedRe.MatchString(s["send"]) {
		t.Fatalf("swaks as the README has it was not answered 250 ... queued:\n%s\nrelay log:\n%s", out, log)
	}
	eml, zone := s["read 0"], s["read 1"]
	if !strings.Contains(eml, "\nDKIM-Signature: v=1; a=rsa-sha256; c=relaxed/relaxed; d=quickstart.test;") {
		t.Fatalf("the outbox message is not signed for quickstart.test:\n%s", eml)
	}
	if !regexp.MustCompile(`^dev\._domainkey\.quickstart\.test\. `).MatchString(zone) {
		t.Fatalf("smarthost dkim dns printed:\n%s", zone)
	}
	// cat printed the file as it is; the outbox keeps CRLF line endings.
	dkimVerify(t, zoneToRecords(zone), []byte(eml))
	// The message may still be marked done a moment after the outbox has it.
	if !regexp.MustCompile(`\b[01] message\(s\)`).MatchString(s["operate 0"]) {
		t.Errorf("smarthost queue list, in the quickstart's folder, printed:\n%s", s["operate 0"])
	}
}

// The quick start from an empty folder: no configuration anywhere, the
// users file built in, the state under ./var, a message signed.
func TestReadmeQuickStart(t *testing.T) {
	need(t, "/usr/bin/swaks")
	if _, err := os.Stat(configs.DefaultPath); err == nil {
		t.Skipf("%s exists on this machine: serve would read it", configs.DefaultPath)
	}
	tmp := t.TempDir()
	script := quickstartFlow(t, shellCommands(docSnippet(t, "README.md", "quickstart-serve")))
	cmd := privateNetwork(t, script, false)
	cmd.Dir = tmp
	logPath := filepath.Join(tmp, "serve.log")
	cmd.Env = append(withoutEnv("SMARTHOST_CONFIG"), "PATH="+filepath.Dir(binary)+":"+os.Getenv("PATH"),
		"TMPDIR="+tmp, "SERVE_LOG="+logPath)
	var stderr strings.Builder
	cmd.Stderr = &stderr
	out, err := cmd.Output()
	log, _ := os.ReadFile(logPath)
	if err != nil {
		t.Fatalf("the quick start failed: %v\n%s%s\nrelay log:\n%s", err, out, stderr.String(), log)
	}
	checkQuickstart(t, string(out), string(log))
	if !strings.Contains(string(log), "embedded quickstart") || !strings.Contains(string(log), "var/tls/cert.pem") {
		t.Errorf("serve did not say it runs the quickstart and where its certificate is:\n%s", log)
	}
}

// The README opens with two commands: the relay from a clone, on its
// built-in settings, and the whole test suite. The second is what CI runs
// (.ci/run calls it); the first runs here as written, from the repository
// root, with the clone's var/ on a scratch file system, and then the quick
// start goes on as the README has it. Once: the release pass (SMARTHOST_BIN)
// would build the same source again.
func TestReadmeOpeningCommands(t *testing.T) {
	cmds := shellCommands(docSnippet(t, "README.md", "opening"))
	if len(cmds) != 2 || cmds[0] != "go run ./cmd/smarthost serve" || cmds[1] != "scripts/test.sh" {
		t.Fatalf("the README's opening block is not `go run ./cmd/smarthost serve` and `scripts/test.sh`: %q", cmds)
	}
	if ci, err := os.ReadFile("../../.ci/run"); err != nil || !strings.Contains(string(ci), "scripts/test.sh") {
		t.Fatalf(".ci/run does not run scripts/test.sh: %v\n%s", err, ci)
	}
	if os.Getenv("SMARTHOST_BIN") != "" {
		t.Skip("go run builds from source: run once, in the pass that builds the binary")
	}
	need(t, "/usr/bin/swaks")
	root, err := filepath.Abs("../..")
	if err != nil {
		t.Fatal(err)
	}
	tmp := t.TempDir()
	if err := os.MkdirAll(filepath.Join(root, "var"), 0o755); err != nil {
		t.Fatal(err)
	}
	script := "mount -t tmpfs scratch var\n" + quickstartFlow(t, cmds[:1])
	cmd := privateNetwork(t, script, true)
	cmd.Dir = root
	logPath := filepath.Join(tmp, "serve.log")
	cmd.Env = append(withoutEnv("SMARTHOST_CONFIG"), "PATH="+filepath.Dir(binary)+":"+os.Getenv("PATH"), "SERVE_LOG="+logPath)
	var stderr strings.Builder
	cmd.Stderr = &stderr
	out, err := cmd.Output()
	log, _ := os.ReadFile(logPath)
	if err != nil {
		t.Fatalf("the opening command failed: %v\n%s%s\nrelay log:\n%s", err, out, stderr.String(), log)
	}
	checkQuickstart(t, string(out), string(log))
}

// The quickstart keeps its self-signed certificate in var/tls/cert.pem:
// docs/apps.md's snippet trusts that file, and still does after a restart.
func TestQuickstartCertificatePinned(t *testing.T) {
	need(t, python, "-c", "import smtplib, ssl")
	if _, err := os.Stat(configs.DefaultPath); err == nil {
		t.Skipf("%s exists on this machine: serve would read it", configs.DefaultPath)
	}
	tmp := t.TempDir()
	pin := docSnippet(t, "docs/apps.md", "quickstart-pin")
	os.WriteFile(filepath.Join(tmp, "pin.py"), []byte(pin), 0o600)
	// Start, send pinned, stop; again, in the same folder.
	once := `smarthost serve >>"$SERVE_LOG" 2>&1 &
SERVE_PID=$!
for i in $(seq 400); do (exec 3<>/dev/tcp/127.0.0.1/2587) 2>/dev/null && break; sleep 0.05; done
python3 "$PIN"
sha256sum var/tls/cert.pem
kill -TERM -- -$SERVE_PID
wait
`
	cmd := privateNetwork(t, "cd \"$(mktemp -d)\"\n"+once+once, false)
	logPath := filepath.Join(tmp, "serve.log")
	cmd.Env = append(withoutEnv("SMARTHOST_CONFIG"), "PATH="+filepath.Dir(binary)+":/usr/bin:/bin:"+os.Getenv("PATH"),
		"TMPDIR="+tmp, "SERVE_LOG="+logPath, "PIN="+filepath.Join(tmp, "pin.py"))
	out, err := cmd.CombinedOutput()
	log, _ := os.ReadFile(logPath)
	if err != nil {
		t.Fatalf("the pinned client failed: %v\n%s\nrelay log:\n%s", err, out, log)
	}
	sums := regexp.MustCompile(`(?m)^[0-9a-f]{64}  var/tls/cert.pem$`).FindAllString(string(out), -1)
	if len(sums) != 2 || sums[0] != sums[1] {
		t.Fatalf("the certificate changed across the restart, or was not there:\n%s", out)
	}
	if n := strings.Count(string(log), "queued"); n < 2 {
		t.Errorf("%d messages queued, want 2:\n%s", n, log)
	}
}
