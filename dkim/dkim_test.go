package dkim

import (
	"bytes"
	"errors"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"

	msgdkim "github.com/emersion/go-msgauth/dkim"
)

const msg = "From: Alice <alice@example.com>\r\nTo: bob@example.org\r\nSubject: hello\r\nDate: Mon, 02 Jan 2006 15:04:05 -0700\r\nMessage-ID: <1@example.com>\r\n\r\nHello,\r\n\r\n.dotted line\r\n\r\n\r\n"

func fields(m string) []string {
	head, _, _ := strings.Cut(m, "\r\n\r\n")
	var f []string
	for _, l := range strings.Split(head, "\r\n") {
		if k, _, ok := strings.Cut(l, ":"); ok && l[0] != ' ' && l[0] != '\t' {
			f = append(f, k)
		}
	}
	return f
}

func sign(t *testing.T, s *Signer, m string) string {
	t.Helper()
	sg, err := s.Begin("Example.COM", fields(m))
	if err != nil {
		t.Fatal(err)
	}
	sg.Write([]byte(m))
	sigs, err := sg.Finish()
	if err != nil {
		t.Fatal(err)
	}
	return string(sigs) + m
}

type keyset struct {
	signer  *Signer
	records map[string]string
}

func keys(t *testing.T) keyset {
	t.Helper()
	ks := keyset{records: map[string]string{}}
	var dk []Key
	for _, k := range []struct{ sel, algo string }{{"rsa", "rsa2048"}, {"ed", "ed25519"}} {
		signer, pemText, err := GenerateKey(k.algo)
		if err != nil {
			t.Fatal(err)
		}
		// Through PEM and back, as serve loads them.
		parsed, err := ParseKey(pemText)
		if err != nil {
			t.Fatal(err)
		}
		name, value, err := DNSRecord("example.com", k.sel, signer.Public())
		if err != nil {
			t.Fatal(err)
		}
		ks.records[name] = value
		dk = append(dk, Key{Selector: k.sel, Signer: parsed})
	}
	ks.signer = New(Config{Domains: map[string][]Key{"example.com": dk}, Oversign: []string{"from", "subject", "to"}})
	return ks
}

func (ks keyset) verify(t *testing.T, signed string) []*msgdkim.Verification {
	t.Helper()
	vs, err := msgdkim.VerifyWithOptions(strings.NewReader(signed), &msgdkim.VerifyOptions{
		LookupTXT: func(name string) ([]string, error) {
			if v, ok := ks.records[name]; ok {
				return []string{v}, nil
			}
			return nil, errors.New("no record")
		},
	})
	if err != nil {
		t.Fatal(err)
	}
	return vs
}

func TestSignRSAAndEd25519(t *testing.T) {
	ks := keys(t)
	signed := sign(t, ks.signer, msg)
	vs := ks.verify(t, signed)
	if len(vs) != 2 {
		t.Fatalf("%d signatures, want 2", len(vs))
	}
	for _, v := range vs {
		if v.Err != nil || v.Domain != "example.com" {
			t.Errorf("signature %s: %v", v.Domain, v.Err)
		}
	}
	if !strings.Contains(signed, "h=from:from:subject:subject:date:to:to:message-id") {
		t.Errorf("unexpected signed field list:\n%s", signed)
	}
}

// Oversigning: a From: added after signing breaks the signature.
func TestOversignedFieldCannotBeAdded(t *testing.T) {
	ks := keys(t)
	signed := sign(t, ks.signer, msg)
	forged := strings.Replace(signed, "From: Alice", "From: Mallory <m@evil.org>\r\nFrom: Alice", 1)
	for _, v := range ks.verify(t, forged) {
		if v.Err == nil {
			t.Fatalf("signature %s still verifies after a From: was added", v.Domain)
		}
	}
}

func TestNoKey(t *testing.T) {
	ks := keys(t)
	if _, err := ks.signer.Begin("other.org", fields(msg)); !errors.Is(err, ErrNoKey) {
		t.Fatalf("got %v, want ErrNoKey", err)
	}
}

func TestKeyFiles(t *testing.T) {
	dir := t.TempDir()
	_, pemText, _ := GenerateKey("ed25519")
	p := filepath.Join(dir, "sub", "k.key")
	if err := WriteKey(p, pemText); err != nil {
		t.Fatal(err)
	}
	if st, _ := os.Stat(p); st.Mode().Perm() != 0o600 {
		t.Errorf("key mode %v, want 0600", st.Mode().Perm())
	}
	if err := WriteKey(p, pemText); err == nil {
		t.Error("WriteKey replaced an existing key")
	}
	if _, err := LoadKey(p); err != nil {
		t.Fatal(err)
	}
	os.WriteFile(filepath.Join(dir, "bad"), []byte("not a key"), 0o600)
	if _, err := LoadKey(filepath.Join(dir, "bad")); err == nil {
		t.Error("loaded garbage as a key")
	}
	if _, _, err := GenerateKey("dsa"); err == nil {
		t.Error("made a key of an unknown algorithm")
	}
}

// dkimpy, the verifier Debian ships, must accept both signatures.
func TestVerifiedByDkimpy(t *testing.T) {
	py := "/usr/bin/python3"
	if err := exec.Command(py, "-c", "import dkim").Run(); err != nil {
		if os.Getenv("CI") == "true" {
			t.Fatalf("python3-dkim missing under CI: %v", err)
		}
		t.Skip("python3-dkim not installed")
	}
	ks := keys(t)
	dir := t.TempDir()
	os.WriteFile(filepath.Join(dir, "m.eml"), []byte(sign(t, ks.signer, msg)), 0o600)
	var rec bytes.Buffer
	for n, v := range ks.records {
		rec.WriteString(n + " " + v + "\n")
	}
	os.WriteFile(filepath.Join(dir, "records"), rec.Bytes(), 0o600)
	out, err := exec.Command(py, "../scripts/dkimverify.py", filepath.Join(dir, "m.eml"), filepath.Join(dir, "records")).CombinedOutput()
	if err != nil || strings.Count(string(out), "pass") != 2 {
		t.Fatalf("dkimpy: %v\n%s", err, out)
	}
}
