package main

import (
	"os"
	"os/exec"
	"reflect"
	"regexp"
	"strings"
	"testing"
	"time"

	"gopkg.in/yaml.v3"

	"github.com/smarthost/smarthost/relay/relaytest"
)

// The Microsoft 365 connector path, as docs/gateway.md gives it: the
// upstream entry is read from the page, and only its host and port (a
// Postfix on loopback for the tenant's endpoint), its file names and the
// CA that vouches for that Postfix change. The Postfix requires STARTTLS
// and a client certificate its CA signed, as a connector that trusts a
// certificate does, and offers AUTH, which the relay must not use.
func TestM365ConnectorUpstream(t *testing.T) {
	dir, err := os.MkdirTemp("", "m365-") // Postfix's smtpd reads the CA
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { os.RemoveAll(dir) })
	os.Chmod(dir, 0o755)
	openssl := func(args ...string) {
		if out, err := exec.Command("openssl", args...).CombinedOutput(); err != nil {
			t.Fatalf("openssl %v: %v\n%s", args, err, out)
		}
	}
	openssl("req", "-x509", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:P-256", "-nodes", "-days", "2",
		"-subj", "/CN=Public CA", "-keyout", dir+"/ca.key", "-out", dir+"/ca.pem")
	openssl("req", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:P-256", "-nodes", "-subj", "/CN=relay.example.com",
		"-keyout", dir+"/relay.key", "-out", dir+"/relay.csr")
	os.WriteFile(dir+"/ext", []byte("subjectAltName=DNS:relay.example.com\nextendedKeyUsage=serverAuth,clientAuth\n"), 0o644)
	openssl("x509", "-req", "-in", dir+"/relay.csr", "-CA", dir+"/ca.pem", "-CAkey", dir+"/ca.key", "-CAcreateserial",
		"-days", "2", "-extfile", dir+"/ext", "-out", dir+"/relay.crt")
	tenant := relaytest.StartPostfix(t, relaytest.PostfixOptions{
		Listen: true, TLS: true, Mailboxes: []string{"example.org"},
		SASLUsers: map[string]string{"someone": "never-used"},
		Main: []string{"myhostname = example-com.mail.protection.outlook.test", "smtpd_tls_security_level = encrypt",
			"smtpd_tls_ask_ccert = yes", "smtpd_tls_req_ccert = yes", "smtpd_tls_CAfile = " + dir + "/ca.pem",
			"smtpd_tls_loglevel = 1", "smtpd_relay_restrictions = permit_tls_all_clientcerts, reject"},
	})

	var doc, readme struct {
		Upstreams []map[string]any `yaml:"upstreams"`
	}
	if err := yaml.Unmarshal([]byte(docSnippet(t, "docs/gateway.md", "m365-connector")), &doc); err != nil || len(doc.Upstreams) != 1 {
		t.Fatalf("the m365-connector snippet: %v (%d upstreams)", err, len(doc.Upstreams))
	}
	// The README shows the same entry.
	if err := yaml.Unmarshal([]byte(docSnippet(t, "README.md", "m365-connector")), &readme); err != nil || !reflect.DeepEqual(readme, doc) {
		t.Fatalf("the README's m365-connector snippet differs from docs/gateway.md's: %v\n%v\n%v", err, readme, doc)
	}
	up := doc.Upstreams[0]
	if up["url"] != "smtp://example-com.mail.protection.outlook.com:25" || up["tls"] != "required" || up["username"] != nil {
		t.Fatalf("the snippet is not an SMTP upstream on port 25, TLS required, without a login: %v", up)
	}
	up["url"] = "smtp://" + tenant.Addr
	up["ca_file"] = tenant.Dir + "/conf/cert.pem"
	// Only the file names the snippet gives are changed.
	for key, file := range map[string]string{"client_cert_file": "/relay.crt", "client_key_file": "/relay.key"} {
		if up[key] != nil {
			up[key] = dir + file
		}
	}
	up["timeout"] = "10s"
	section, err := yaml.Marshal(map[string]any{"upstreams": doc.Upstreams})
	if err != nil {
		t.Fatal(err)
	}
	e := newRelayEnv(t, envOpts{upstreams: string(section)})
	e.start(t)
	sendAlice(t, e, "through the connector")
	relaytest.Eventually(t, "the message in the tenant's mailbox", 30*time.Second, func() bool { return len(tenant.Mailbox()) == 1 })
	log := tenant.Log()
	if !strings.Contains(log, "Trusted TLS connection established from localhost") || !strings.Contains(log, "Relaying allowed for all verified client certificates") {
		t.Errorf("the tenant did not verify the relay's certificate:\n%s", log)
	}
	if !regexp.MustCompile(`< localhost\[127\.0\.0\.1\]: STARTTLS`).MatchString(log) {
		t.Errorf("no STARTTLS in the tenant's log")
	}
	if !strings.Contains(log, "250-AUTH") {
		t.Errorf("the tenant did not offer AUTH, so the test proves nothing about it:\n%s", log)
	}
	if regexp.MustCompile(`< localhost\[127\.0\.0\.1\]: AUTH`).MatchString(log) {
		t.Errorf("the relay logged in, though the connector trusts its certificate")
	}
	msg := string(tenant.Mailbox()[0])
	if !strings.Contains(msg, "Subject: through the connector") {
		t.Errorf("the tenant got:\n%s", msg)
	}
}
