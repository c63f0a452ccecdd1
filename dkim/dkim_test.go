package dkim

import (
	"bytes"
	"crypto/rand"
	"crypto/rsa"
	"crypto/x509"
	"encoding/pem"
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
	ks.signer = New(Config{Domains: map[string][]Key{"example.com": dk}, Oversign: []string{"from", "to", "cc", "subject", "date", "reply-to", "message-id"}})
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
	if !strings.Contains(strings.ReplaceAll(signed, "\r\n ", ""), "h=from:from:reply-to:subject:subject:date:date:to:to:cc:message-id:message-id") {
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
	if _, err := LoadKey("testdata/rsa512.pem"); err == nil {
		t.Error("a 512-bit RSA key was accepted")
	}
	for bits, want := range map[int]string{1024: "warned", 2048: "fine"} {
		k, _ := rsa.GenerateKey(rand.Reader, bits)
		der := x509.MarshalPKCS1PrivateKey(k)
		got, err := ParseKey(pem.EncodeToMemory(&pem.Block{Type: "RSA PRIVATE KEY", Bytes: der}))
		switch {
		case want == "refused" && err == nil, want != "refused" && err != nil:
			t.Errorf("%d bits: %v", bits, err)
		case want == "warned" && KeyWarning(got) == "", want == "fine" && KeyWarning(got) != "":
			t.Errorf("%d bits: warning %q", bits, KeyWarning(got))
		}
	}
	if _, _, err := GenerateKey("dsa"); err == nil {
		t.Error("made a key of an unknown algorithm")
	}
}

// verifiers are the independent implementations every signature must pass:
// dkimpy (python3-dkim) and Mail::DKIM (libmail-dkim-perl), each reading
// keys from a local table instead of DNS.
var verifiers = []struct{ name, prog, script, check string }{
	{"dkimpy", "/usr/bin/python3", "../scripts/dkimverify.py", "import dkim"},
	{"Mail::DKIM", "/usr/bin/perl", "../scripts/dkimverify.pl", "use Mail::DKIM::Verifier; use Crypt::PK::Ed25519;"},
}

func requireVerifier(t *testing.T, prog, check string) {
	flag := "-c"
	if strings.HasSuffix(prog, "perl") {
		flag = "-e"
	}
	if err := exec.Command(prog, flag, check).Run(); err != nil {
		if os.Getenv("CI") == "true" {
			t.Fatalf("%s cannot %q under CI: %v", prog, check, err)
		}
		t.Skipf("%s cannot %q", prog, check)
	}
}

// runVerifiers returns each verifier's output and whether it passed.
func runVerifiers(t *testing.T, ks keyset, signed []byte) map[string]string {
	t.Helper()
	dir := t.TempDir()
	os.WriteFile(filepath.Join(dir, "m.eml"), signed, 0o600)
	var rec bytes.Buffer
	for n, v := range ks.records {
		rec.WriteString(n + " " + v + "\n")
	}
	os.WriteFile(filepath.Join(dir, "records"), rec.Bytes(), 0o600)
	out := map[string]string{}
	for _, v := range verifiers {
		requireVerifier(t, v.prog, v.check)
		o, err := exec.Command(v.prog, v.script, filepath.Join(dir, "m.eml"), filepath.Join(dir, "records")).CombinedOutput()
		res := string(o)
		if err != nil {
			res = "FAILED " + res
		}
		out[v.name] = res
	}
	return out
}

// The awkward messages real mail is made of.
func awkwardMessages() map[string]string {
	hdr := "From: Alice <alice@example.com>\r\nTo: bob@example.org\r\nDate: Mon, 02 Jan 2006 15:04:05 -0700\r\nMessage-ID: <1@example.com>\r\n"
	attachment := strings.Repeat(strings.Repeat("QUJDREVGR0hJSktMTU5PUFFSU1RVVldYWVo=", 2)+"\r\n", 10<<20/74)
	return map[string]string{
		"utf-8 body":       hdr + "Subject: =?UTF-8?Q?Gr=C3=BC=C3=9Fe?=\r\nContent-Type: text/plain; charset=utf-8\r\nContent-Transfer-Encoding: 8bit\r\n\r\nGrüße aus Köln – 東京 🚀\r\n",
		"folded header":    hdr + "Subject: a very long subject that goes on and on\r\n and is folded over\r\n\tseveral lines with tabs   and  spaces\r\n\r\nbody\r\n",
		"dot lines":        hdr + "Subject: dots\r\n\r\n.\r\n..\r\n.leading dot\r\n",
		"trailing ws":      hdr + "Subject: ws   \r\n\r\nline with trailing spaces   \r\n\tand tabs\t\r\n\r\n\r\n\r\n",
		"empty body":       hdr + "Subject: empty\r\n\r\n",
		"10 MB attachment": hdr + "Subject: big\r\nMIME-Version: 1.0\r\nContent-Type: multipart/mixed; boundary=b\r\n\r\n--b\r\nContent-Type: text/plain\r\n\r\nsee attached\r\n--b\r\nContent-Type: application/octet-stream\r\nContent-Transfer-Encoding: base64\r\n\r\n" + attachment + "--b--\r\n",
	}
}

// verified: both signatures pass. Debian 12's Mail::DKIM (1.20230212)
// predates its Ed25519 support and reports that signature as unsupported,
// which RFC 8463 says a verifier ignores; its RSA signature must pass.
func verified(verifier, out string) bool {
	if verifier == "Mail::DKIM" && strings.Contains(out, "unsupported algorithm ed25519-sha256") {
		return strings.Contains(out, "a=rsa-sha256: pass")
	}
	return !strings.HasPrefix(out, "FAILED") && strings.Count(out, "pass") == 2
}

func TestIndependentVerifiersAccept(t *testing.T) {
	ks := keys(t)
	for name, m := range awkwardMessages() {
		t.Run(strings.ReplaceAll(name, " ", "_"), func(t *testing.T) {
			for v, out := range runVerifiers(t, ks, []byte(sign(t, ks.signer, m))) {
				if !verified(v, out) {
					t.Errorf("%s: %s", v, out)
				}
			}
		})
	}
}

func TestIndependentVerifiersRefuseTampering(t *testing.T) {
	ks := keys(t)
	signed := sign(t, ks.signer, msg)
	for name, forged := range map[string]string{
		"second From":    strings.Replace(signed, "From: Alice", "From: Mallory <m@evil.org>\r\nFrom: Alice", 1),
		"second Subject": strings.Replace(signed, "Subject: hello", "Subject: urgent: pay now\r\nSubject: hello", 1),
		"added Reply-To": strings.Replace(signed, "Subject: hello", "Reply-To: m@evil.org\r\nSubject: hello", 1),
		"changed body":   strings.Replace(signed, "Hello,", "Hullo,", 1),
	} {
		for v, out := range runVerifiers(t, ks, []byte(forged)) {
			if !strings.HasPrefix(out, "FAILED") || strings.Contains(out, ": pass") {
				t.Errorf("%s: %s accepted it: %s", name, v, out)
			}
		}
	}
}

func benchSign(b *testing.B, algo string, size int) {
	_, pemText, err := GenerateKey(algo)
	if err != nil {
		b.Fatal(err)
	}
	signer, err := ParseKey(pemText) // as serve loads keys, so -tags openssl counts
	if err != nil {
		b.Fatal(err)
	}
	s := New(Config{Domains: map[string][]Key{"example.com": {{Selector: "s", Signer: signer}}}, Oversign: []string{"from", "subject"}})
	m := []byte("From: alice@example.com\r\nSubject: bench\r\nTo: b@example.org\r\n\r\n" + strings.Repeat(strings.Repeat("x", 76)+"\r\n", size/78))
	f := fields(string(m))
	b.SetBytes(int64(len(m)))
	b.ResetTimer()
	for i := 0; i < b.N; i++ {
		sg, err := s.Begin("example.com", f)
		if err != nil {
			b.Fatal(err)
		}
		sg.Write(m)
		if _, err := sg.Finish(); err != nil {
			b.Fatal(err)
		}
	}
}

func BenchmarkSignRSA2048_10KB(b *testing.B) { benchSign(b, "rsa2048", 10<<10) }
func BenchmarkSignRSA2048_1MB(b *testing.B)  { benchSign(b, "rsa2048", 1<<20) }
func BenchmarkSignEd25519_10KB(b *testing.B) { benchSign(b, "ed25519", 10<<10) }
func BenchmarkSignEd25519_1MB(b *testing.B)  { benchSign(b, "ed25519", 1<<20) }
