//go:build release

// The release's artifacts as a user gets them (scripts/release-check.sh
// makes them with scripts/release.sh and runs these tests):
//
//	SMARTHOST_DIST=dist SMARTHOST_DIST_OLD=old-dist SMARTHOST_VERSION=0.3.0 \
//	  go test -tags release ./deploy/packaging/
//
// SMARTHOST_DIST_OLD holds the .deb of an earlier version, built from the
// same tree, for the upgrade test.
package packaging

import (
	"encoding/json"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"strings"
	"testing"
)

func env(t *testing.T, name string) string {
	t.Helper()
	v := os.Getenv(name)
	if v == "" {
		t.Fatalf("%s is not set: run scripts/release-check.sh", name)
	}
	return v
}

// run runs a command and returns its output; any failure ends the test.
func run(t *testing.T, name string, args ...string) string {
	t.Helper()
	out, err := exec.Command(name, args...).CombinedOutput()
	if err != nil {
		t.Fatalf("%s %s: %v\n%s", name, strings.Join(args, " "), err, out)
	}
	return string(out)
}

func artifact(t *testing.T, name string) string {
	t.Helper()
	p := filepath.Join(env(t, "SMARTHOST_DIST"), name)
	if _, err := os.Stat(p); err != nil {
		t.Fatalf("the release lacks %s", name)
	}
	return p
}

// Every artifact is there and SHA256SUMS holds for each.
func TestChecksums(t *testing.T) {
	v := env(t, "SMARTHOST_VERSION")
	dist := env(t, "SMARTHOST_DIST")
	sums, err := os.ReadFile(filepath.Join(dist, "SHA256SUMS"))
	if err != nil {
		t.Fatal(err)
	}
	for _, name := range []string{
		"smarthost_V_linux_amd64", "smarthost_V_linux_arm64", "smarthost-openssl_V_linux_amd64",
		"smarthost_V_linux_amd64.tar.gz", "smarthost_V_linux_arm64.tar.gz", "smarthost-openssl_V_linux_amd64.tar.gz",
		"smarthost_V_amd64.deb", "smarthost_V_arm64.deb", "smarthost_V.cdx.json", "smarthost_V_source.cdx.json",
		"smarthost_V_linux_amd64.image.tar", "smarthost_V_linux_arm64.image.tar",
	} {
		name = strings.ReplaceAll(name, "V", v)
		if !regexp.MustCompile(`(?m)^[0-9a-f]{64}  ` + regexp.QuoteMeta(name) + `$`).Match(sums) {
			t.Errorf("SHA256SUMS does not list %s", name)
		}
	}
	cmd := exec.Command("sha256sum", "--check", "--strict", "SHA256SUMS")
	cmd.Dir = dist
	if out, err := cmd.CombinedOutput(); err != nil {
		t.Errorf("sha256sum --check: %v\n%s", err, out)
	}
}

// The SBOMs name the libraries the relay is made of, with the versions
// go.mod requires: the source's every one of them; the binary's those that
// `go list -deps` says are linked into it, and only those (the others are
// the tests').
func TestSBOM(t *testing.T) {
	v := env(t, "SMARTHOST_VERSION")
	mods := []string{"github.com/emersion/go-smtp", "github.com/go-ldap/ldap/v3", "github.com/redis/go-redis/v9",
		"github.com/emersion/go-msgauth", "gopkg.in/yaml.v3"}
	cmd := exec.Command("go", "list", "-deps", "-f", "{{with .Module}}{{.Path}}{{end}}", "../../cmd/smarthost")
	cmd.Env = append(os.Environ(), "GOOS=linux", "GOARCH=amd64", "CGO_ENABLED=0")
	deps, err := cmd.Output()
	if err != nil {
		t.Fatal(err)
	}
	var linked []string
	for _, m := range mods {
		if regexp.MustCompile(`(?m)^` + regexp.QuoteMeta(m) + `$`).Match(deps) {
			linked = append(linked, m)
		}
	}
	if len(linked) < 3 {
		t.Fatalf("go list -deps finds only %v linked: the look-up is broken", linked)
	}
	checkSBOM(t, "smarthost_"+v+".cdx.json", linked)
	checkSBOM(t, "smarthost_"+v+"_source.cdx.json", mods)
}

func checkSBOM(t *testing.T, name string, mods []string) {
	var bom struct {
		BOMFormat  string `json:"bomFormat"`
		Components []struct {
			Version string `json:"version"`
			PURL    string `json:"purl"`
		} `json:"components"`
	}
	b, _ := os.ReadFile(artifact(t, name))
	if err := json.Unmarshal(b, &bom); err != nil || bom.BOMFormat != "CycloneDX" {
		t.Fatalf("%s is not a CycloneDX document: %v", name, err)
	}
	gomod, _ := os.ReadFile("../../go.mod")
	for _, mod := range mods {
		m := regexp.MustCompile(`(?m)^\s*` + regexp.QuoteMeta(mod) + ` (v\S+)`).FindSubmatch(gomod)
		if m == nil {
			t.Errorf("go.mod does not require %s", mod)
			continue
		}
		found := false
		for _, c := range bom.Components {
			if strings.HasPrefix(c.PURL, "pkg:golang/"+mod+"@") && c.Version == string(m[1]) {
				found = true
			}
		}
		if !found {
			t.Errorf("%s does not list %s %s", name, mod, m[1])
		}
	}
}

// Each tarball holds the binary and what goes with it, with fixed owners
// and times.
func TestTarballs(t *testing.T) {
	v := env(t, "SMARTHOST_VERSION")
	for _, b := range []string{"smarthost_" + v + "_linux_amd64", "smarthost_" + v + "_linux_arm64", "smarthost-openssl_" + v + "_linux_amd64"} {
		list := run(t, "tar", "-tvzf", artifact(t, b+".tar.gz"), "--numeric-owner")
		for _, f := range []string{"smarthost", "LICENSE", "NOTICE", "README.md", "smarthost.service", "configs/minimal.yaml", "configs/example.yaml"} {
			if !strings.Contains(list, " "+b+"/"+f+"\n") {
				t.Errorf("%s.tar.gz lacks %s:\n%s", b, f, list)
			}
		}
		if strings.Contains(list, "/"+"root") || regexp.MustCompile(`(?m)^\S+ [1-9]`).MatchString(list) {
			t.Errorf("%s.tar.gz has files not owned by 0/0:\n%s", b, list)
		}
	}
	out := run(t, artifact(t, "smarthost_"+v+"_linux_amd64"), "version")
	if !strings.Contains(out, "smarthost "+v+"\n") || !regexp.MustCompile(`commit [0-9a-f]{40}\nbuilt \d{4}-`).MatchString(out) {
		t.Errorf("version of the release binary:\n%s", out)
	}
	if out := run(t, "readelf", "-h", artifact(t, "smarthost_"+v+"_linux_arm64")); !strings.Contains(out, "AArch64") {
		t.Errorf("the arm64 binary is not for arm64:\n%s", out)
	}
	out = run(t, artifact(t, "smarthost-openssl_"+v+"_linux_amd64"), "version")
	if !strings.Contains(out, "DKIM RSA signatures: OpenSSL") {
		t.Errorf("the OpenSSL variant does not sign with OpenSSL:\n%s", out)
	}
}

// minimalEtc puts what configs/minimal.yaml names into etc (what becomes
// /etc/smarthost), made as the install guide says: a certificate signed by
// a test CA (the full chain in fullchain.pem), a users file from
// `smarthost passwd`, a DKIM key from `smarthost dkim keygen` and the
// upstream's password. Everything is readable by all, for the image's
// unprivileged user.
func minimalEtc(t *testing.T, etc, bin string) {
	t.Helper()
	tls := filepath.Join(etc, "tls")
	for _, d := range []string{tls, filepath.Join(etc, "dkim")} {
		if err := os.MkdirAll(d, 0o755); err != nil {
			t.Fatal(err)
		}
	}
	tmp := t.TempDir()
	run(t, "openssl", "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "2", "-subj", "/CN=smarthost test CA",
		"-keyout", filepath.Join(tmp, "ca.key"), "-out", filepath.Join(tmp, "ca.pem"))
	run(t, "openssl", "req", "-newkey", "rsa:2048", "-nodes", "-subj", "/CN=relay.example.com",
		"-keyout", filepath.Join(tls, "privkey.pem"), "-out", filepath.Join(tmp, "leaf.csr"))
	os.WriteFile(filepath.Join(tmp, "ext"), []byte("subjectAltName=DNS:relay.example.com,DNS:localhost\nextendedKeyUsage=serverAuth\n"), 0o644)
	run(t, "openssl", "x509", "-req", "-days", "2", "-in", filepath.Join(tmp, "leaf.csr"), "-CA", filepath.Join(tmp, "ca.pem"),
		"-CAkey", filepath.Join(tmp, "ca.key"), "-CAcreateserial", "-extfile", filepath.Join(tmp, "ext"), "-out", filepath.Join(tmp, "leaf.pem"))
	leaf, _ := os.ReadFile(filepath.Join(tmp, "leaf.pem"))
	ca, _ := os.ReadFile(filepath.Join(tmp, "ca.pem"))
	os.WriteFile(filepath.Join(tls, "fullchain.pem"), append(leaf, ca...), 0o644)
	os.Chmod(filepath.Join(tls, "privkey.pem"), 0o644)

	cmd := exec.Command(bin, "passwd")
	cmd.Stdin = strings.NewReader("app1-password\n")
	hash, err := cmd.Output()
	if err != nil {
		t.Fatalf("smarthost passwd: %v", err)
	}
	users := fmt.Sprintf("users:\n  app1:\n    password_hash: %q\n    addresses: [\"*@example.com\"]\n", strings.TrimSpace(string(hash)))
	os.WriteFile(filepath.Join(etc, "users.yaml"), []byte(users), 0o644)
	run(t, bin, "dkim", "keygen", "--domain", "example.com", "--selector", "s1", "--out", filepath.Join(etc, "dkim"))
	os.Chmod(filepath.Join(etc, "dkim", "example.com.s1.key"), 0o644)
	os.WriteFile(filepath.Join(etc, "upstream_password"), []byte("upstream-secret\n"), 0o644)
	min, err := os.ReadFile("../../configs/minimal.yaml")
	if err != nil {
		t.Fatal(err)
	}
	if _, err := os.Stat(filepath.Join(etc, "smarthost.yaml")); err != nil {
		os.WriteFile(filepath.Join(etc, "smarthost.yaml"), min, 0o644)
	}
}
