//go:build release

package packaging

import (
	"encoding/json"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/smarthost/smarthost/relay/relaytest"
)

func docker(t *testing.T, args ...string) string {
	t.Helper()
	return strings.TrimSpace(run(t, "docker", args...))
}

// Each image archive loads, is for its architecture and names the
// version, commit and build in its labels; the amd64 image answers
// `version`; /var/lib/smarthost belongs to the image's user. The amd64
// archive is loaded last, so that smarthost:VERSION is amd64 afterwards.
func TestImageArchives(t *testing.T) {
	v := env(t, "SMARTHOST_VERSION")
	commit := strings.TrimSpace(run(t, "git", "rev-parse", "HEAD"))
	for _, arch := range []string{"arm64", "amd64"} {
		out := docker(t, "load", "-i", artifact(t, "smarthost_"+v+"_linux_"+arch+".image.tar"))
		if !strings.Contains(out, "smarthost:"+v) {
			t.Fatalf("docker load: %s", out)
		}
		got := docker(t, "image", "inspect", "--format",
			`{{.Architecture}} {{index .Config.Labels "org.opencontainers.image.version"}} {{index .Config.Labels "org.opencontainers.image.revision"}} {{index .Config.Labels "org.opencontainers.image.created"}}`,
			"smarthost:"+v)
		if !regexp.MustCompile(`^` + arch + ` ` + regexp.QuoteMeta(v) + ` ` + commit + ` \d{4}-\d\d-\d\dT`).MatchString(got) {
			t.Errorf("%s image: architecture and labels %q", arch, got)
		}
	}
	out := docker(t, "run", "--rm", "smarthost:"+v, "version")
	if !strings.Contains(out, "smarthost "+v+"\ncommit "+commit) {
		t.Errorf("docker run smarthost:%s version:\n%s", v, out)
	}
	id := docker(t, "create", "smarthost:"+v)
	defer docker(t, "rm", id)
	cmd := exec.Command("sh", "-c", "docker export "+id+" | tar -tvf - --numeric-owner var/lib/smarthost")
	list, err := cmd.CombinedOutput()
	if err != nil {
		t.Fatalf("docker export: %v\n%s", err, list)
	}
	if !regexp.MustCompile(`(?m)^d\S+ 65532/65532 .* var/lib/smarthost/?$`).Match(list) {
		t.Errorf("/var/lib/smarthost does not belong to the image's user:\n%s", list)
	}
}

// readmeDockerRun is the `docker run` command of the README's install
// section, continuation lines joined.
func readmeDockerRun(t *testing.T) string {
	t.Helper()
	text, err := os.ReadFile("../../README.md")
	if err != nil {
		t.Fatal(err)
	}
	m := regexp.MustCompile("(?s)```sh\n([^`]*?docker run [^`]*?)```").FindSubmatch(text)
	if m == nil {
		t.Fatal("README.md has no sh block with docker run")
	}
	joined := strings.ReplaceAll(string(m[1]), "\\\n", " ")
	for _, line := range strings.Split(joined, "\n") {
		if strings.HasPrefix(strings.TrimSpace(line), "docker run ") {
			return strings.Join(strings.Fields(line), " ")
		}
	}
	t.Fatal("no docker run line in README.md's block")
	return ""
}

// The README's `docker run`, as written but for what is this machine's
// (the host folder, host ports, container and volume names), with the
// files configs/minimal.yaml names: the container becomes healthy, and
// testssl.sh finds both listeners as docs/security.md says.
func TestReadmeDockerRun(t *testing.T) {
	v := env(t, "SMARTHOST_VERSION")
	line := readmeDockerRun(t)
	if !strings.Contains(line, " smarthost:"+v) {
		t.Errorf("the README's docker run does not run smarthost:%s: %s", v, line)
	}
	etc := t.TempDir()
	os.Chmod(etc, 0o755)
	minimalEtc(t, etc, artifact(t, "smarthost_"+v+"_linux_amd64"))
	p587, p465 := freePort(t), freePort(t)
	name := fmt.Sprintf("ship-readme-%d", os.Getpid())
	cmdline := strings.NewReplacer(
		"-p 587:587", "-p "+p587+":587",
		"-p 465:465", "-p "+p465+":465",
		"-v /etc/smarthost:", "-v "+etc+":",
		"--name smarthost ", "--name "+name+" ",
		"smarthost-data:", name+"-data:",
	).Replace(line)
	if cmdline == line || !strings.Contains(cmdline, name+"-data:") {
		t.Fatalf("the README's docker run changed shape: %s", line)
	}
	args := strings.Fields(cmdline)[1:]
	docker(t, args...)
	defer func() {
		exec.Command("docker", "rm", "-f", name).Run()
		exec.Command("docker", "volume", "rm", name+"-data").Run()
	}()

	status := ""
	relaytest.WithinEvery(120*time.Second, time.Second, func() bool { // Docker's health state
		status = docker(t, "inspect", "--format", "{{.State.Status}} {{.State.Health.Status}}", name)
		if strings.HasPrefix(status, "exited") {
			t.Fatalf("the container exited:\n%s", docker(t, "logs", name))
		}
		status = strings.TrimPrefix(status, "running ")
		return status == "healthy"
	})
	if status != "healthy" {
		t.Fatalf("the container is %q after 120 s:\n%s", status, docker(t, "logs", name))
	}
	if err := sendMail(p587, "app1", "app1-password", "app1@example.com", "someone@example.org", "Subject: docker run\r\n"); err != nil {
		t.Errorf("submitting to the container: %v", err)
	}
	testSSL(t, p587, p465)
}

// testssl.sh (Debian's) against both listeners at once: TLS 1.2 and 1.3
// only, no cipher under 128 bits, no known vulnerability, the certificate
// and its chain served. The JSON reports go to $SMARTHOST_TESTSSL_OUT when
// set (docs/security.md's figures come from there).
func testSSL(t *testing.T, starttls, implicit string) {
	t.Helper()
	out := os.Getenv("SMARTHOST_TESTSSL_OUT")
	if out == "" {
		out = t.TempDir()
	}
	var wg sync.WaitGroup
	for _, l := range []struct{ name, addr string }{{"starttls", starttls}, {"implicit", implicit}} {
		wg.Add(1)
		go func() {
			defer wg.Done()
			report := filepath.Join(out, "testssl-"+l.name+".json")
			os.Remove(report)
			args := []string{"--quiet", "--warnings", "off", "--color", "0", "--ip", "one", "--jsonfile", report,
				"--protocols", "--std", "--vulnerable", "--server-defaults"}
			if l.name == "starttls" {
				args = append(args, "--starttls", "smtp")
			}
			cmd := exec.Command("testssl", append(args, l.addr)...)
			if text, err := cmd.CombinedOutput(); err != nil && !fileExists(report) {
				t.Errorf("testssl %s: %v\n%s", l.name, err, text)
				return
			}
			checkTestSSL(t, l.name, report)
		}()
	}
	wg.Wait()
}

func fileExists(p string) bool { _, err := os.Stat(p); return err == nil }

type finding struct {
	ID       string `json:"id"`
	Severity string `json:"severity"`
	Finding  string `json:"finding"`
}

func checkTestSSL(t *testing.T, name, report string) {
	b, err := os.ReadFile(report)
	if err != nil {
		t.Errorf("testssl %s: %v", name, err)
		return
	}
	var fs []finding
	if err := json.Unmarshal(b, &fs); err != nil {
		t.Errorf("testssl %s report: %v", name, err)
		return
	}
	by := map[string]finding{}
	for _, f := range fs {
		by[f.ID] = f
	}
	// Protocols, and cipher categories: nothing under 128 bits (NULL,
	// export, LOW, 3DES), no CBC ("AVERAGE"), AEAD only.
	want := map[string]string{"SSLv2": "not offered", "SSLv3": "not offered", "TLS1": "not offered", "TLS1_1": "not offered",
		"TLS1_2": "offered", "TLS1_3": "offered", "cipherlist_NULL": "not offered", "cipherlist_aNULL": "not offered",
		"cipherlist_EXPORT": "not offered", "cipherlist_LOW": "not offered", "cipherlist_3DES_IDEA": "not offered",
		"cipherlist_AVERAGE": "not offered", "cipherlist_STRONG": "offered", "LUCKY13": "not vulnerable", "heartbleed": "not vulnerable"}
	for id, w := range want {
		if got := by[id].Finding; !strings.HasPrefix(got, w) {
			t.Errorf("testssl %s: %s is %q, want %q", name, id, got, w)
		}
	}
	// Any finding rated LOW or worse fails, but those of a test
	// certificate (its CA, its name, its two days, no OCSP), and two that
	// docs/security.md explains: no DNS CAA record on 127.0.0.1, and
	// session tickets that announce 7 days.
	for _, f := range fs {
		switch {
		case strings.HasPrefix(f.ID, "cert_") || f.ID == "DNS_CAArecord" || f.ID == "TLS_session_ticket" || f.ID == "OCSP_stapling":
		case f.Severity == "LOW" || f.Severity == "MEDIUM" || f.Severity == "HIGH" || f.Severity == "CRITICAL":
			t.Errorf("testssl %s: %s %s: %s", name, f.Severity, f.ID, f.Finding)
		}
	}
	if by["cert"].Finding == "" || by["cert_commonName"].Finding != "relay.example.com" {
		t.Errorf("testssl %s: the certificate is not served (%q)", name, by["cert_commonName"].Finding)
	}
	if got := by["certs_countServer"].Finding; got != "2" {
		t.Errorf("testssl %s: %s certificates served, want the chain of 2", name, got)
	}
}
