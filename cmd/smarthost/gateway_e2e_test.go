package main

// A corporate gateway's upstreams and rules, against real parts: OAuth2
// tokens from ORY Hydra checked by Dovecot's submission service (its oauth2
// passdb introspects each one at Hydra), AUTH LOGIN and client certificates
// against private Postfix instances, and rewriting, recipient rules,
// archiving and header privacy asserted on what the upstreams received.

import (
	"bytes"
	"encoding/json"
	"fmt"
	"io"
	"net/http"
	"net/http/httptest"
	"net/http/httputil"
	"net/url"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/emersion/go-smtp"
	"golang.org/x/crypto/bcrypt"

	"github.com/smarthost/smarthost/relay/relaytest"
)

// tokenCounter stands between the relay and Hydra's token endpoint and
// keeps every access token Hydra grants, so that a test can tell a cached
// token from a fetched one.
type tokenCounter struct {
	URL    string
	mu     sync.Mutex
	tokens []string
}

func countTokens(t *testing.T, h *relaytest.Hydra) *tokenCounter {
	target, _ := url.Parse(h.Public)
	c := &tokenCounter{}
	proxy := httputil.NewSingleHostReverseProxy(target)
	proxy.ModifyResponse = func(r *http.Response) error {
		b, err := io.ReadAll(r.Body)
		if err != nil {
			return err
		}
		r.Body = io.NopCloser(bytes.NewReader(b))
		var tok struct {
			AccessToken string `json:"access_token"`
		}
		if json.Unmarshal(b, &tok) == nil && tok.AccessToken != "" {
			c.mu.Lock()
			c.tokens = append(c.tokens, tok.AccessToken)
			c.mu.Unlock()
		}
		return nil
	}
	s := httptest.NewServer(proxy)
	t.Cleanup(s.Close)
	c.URL = s.URL + "/oauth2/token"
	return c
}

func (c *tokenCounter) granted() []string {
	c.mu.Lock()
	defer c.mu.Unlock()
	return append([]string(nil), c.tokens...)
}

// oauthUpstream is Hydra, a client registered there, and Dovecot relaying
// what it accepts to a sink.
type oauthUpstream struct {
	hydra    *relaytest.Hydra
	dovecot  *relaytest.Dovecot
	sink     *relaytest.Sink
	tokens   *tokenCounter
	clientID string
	secret   string // its file
}

func startOAuthUpstream(t *testing.T, ttl time.Duration) *oauthUpstream {
	h := relaytest.StartHydra(t, ttl)
	id, secret := h.Client(t, "smtp")
	s := sink(t, freePort(t))
	o := &oauthUpstream{hydra: h, sink: s, tokens: countTokens(t, h), clientID: id,
		secret: filepath.Join(t.TempDir(), "client-secret")}
	os.WriteFile(o.secret, []byte(secret+"\n"), 0o600)
	o.dovecot = relaytest.StartDovecot(t, relaytest.DovecotOptions{Introspect: h.IntrospectionURL(), RelayTo: s.Addr})
	return o
}

// yaml is the upstream's entry; source is the oauth2 block's keys.
func (o *oauthUpstream) yaml(mech, source string) string {
	return fmt.Sprintf("upstreams:\n  - name: dovecot\n    url: \"smtp://%s\"\n    tls: required\n    ca_file: %q\n"+
		"    auth_mechanism: %s\n    username: %q\n    oauth2: {%s}\n    timeout: 10s\n",
		o.dovecot.Addr, o.dovecot.CertFile, mech, o.clientID, source)
}

func (o *oauthUpstream) clientCredentials() string {
	return fmt.Sprintf("token_url: %q, client_id: %q, client_secret_file: %q, scopes: [smtp]", o.tokens.URL, o.clientID, o.secret)
}

func sendAlice(t *testing.T, e *relayEnv, subject string) {
	t.Helper()
	out, code := swaks(t, "--server", e.implicit, "--tls-on-connect", "--auth", "PLAIN", "--auth-user", "alice", "--auth-password", "alice-pw",
		"--from", "alice@example.com", "--to", "bob@example.org", "--header", "Subject: "+subject)
	if code != 0 {
		t.Fatalf("swaks: %d\n%s", code, out)
	}
}

// XOAUTH2 and OAUTHBEARER with client credentials: check-config --probe
// obtains a token and logs in; messages go through; Dovecot saw the
// mechanism, and Hydra's token was fetched once for all of them.
func TestOAuth2Upstream(t *testing.T) {
	for _, mech := range []string{"xoauth2", "oauthbearer", "auto"} {
		t.Run(mech, func(t *testing.T) {
			o := startOAuthUpstream(t, time.Hour)
			e := newRelayEnv(t, envOpts{upstreams: o.yaml(mech, o.clientCredentials())})
			if out, err := probe(t, e.config); err != nil || !strings.Contains(out, "upstream dovecot: ok") {
				t.Fatalf("check-config --probe: %v\n%s", err, out)
			}
			e.start(t)
			for i := 0; i < 3; i++ {
				sendAlice(t, e, fmt.Sprint("oauth ", i))
			}
			got := o.sink.Wait(3, 20*time.Second)
			if len(got) != 3 || got[0].From != "alice@example.com" || !strings.Contains(string(got[0].Data), "DKIM-Signature:") {
				t.Fatalf("sink got %d messages: %+v", len(got), got)
			}
			want := strings.ToUpper(mech)
			if mech == "auto" {
				want = "XOAUTH2" // Dovecot offers both; XOAUTH2 is what Microsoft and Google speak
			}
			if o.dovecot.Logins(want) == 0 {
				t.Errorf("no %s login in Dovecot's log:\n%s", want, o.dovecot.Log())
			}
			// One token for the probe, one for the relay (a separate process).
			if n := len(o.tokens.granted()); n != 2 {
				t.Errorf("%d tokens granted, want 2 (one for the probe, one cached for every login)", n)
			}
		})
	}
	t.Run("probe fails on a bad secret", func(t *testing.T) {
		o := startOAuthUpstream(t, time.Hour)
		os.WriteFile(o.secret, []byte("wrong"), 0o600)
		e := newRelayEnv(t, envOpts{upstreams: o.yaml("xoauth2", o.clientCredentials())})
		out, err := probe(t, e.config)
		if exitCode(err) == 0 || !strings.Contains(out, "dovecot") || !strings.Contains(out, "invalid_client") {
			t.Fatalf("check-config --probe with a wrong secret: %v\n%s", err, out)
		}
	})
}

// A token that expires during a run is replaced before it lapses; one that
// the server stops honouring (revoked) is refused, fetched again once and
// the login retried. No message is lost, bounced or sent twice: counted
// once the relay's queue is empty and the sink has been quiet.
func TestOAuth2TokenExpiryAndRevocation(t *testing.T) {
	t.Run("expiry", func(t *testing.T) {
		o := startOAuthUpstream(t, 6*time.Second)
		e := newRelayEnv(t, envOpts{upstreams: o.yaml("xoauth2", o.clientCredentials())})
		e.start(t)
		for i := 0; i < 3; i++ {
			sendAlice(t, e, fmt.Sprint("before ", i))
		}
		o.sink.Wait(3, 20*time.Second)
		first := o.tokens.granted()
		if len(first) != 1 {
			t.Fatalf("%d tokens before expiry", len(first))
		}
		relaytest.Eventually(t, "the first token to expire at Hydra", 30*time.Second, func() bool { return !o.hydra.Active(t, first[0]) })
		// The upstream drops its sessions (as servers do), so the next
		// message needs a new login.
		o.dovecot.DropSessions(t)
		for i := 0; i < 3; i++ {
			sendAlice(t, e, fmt.Sprint("after ", i))
		}
		got := o.sink.Settled(t, relaytest.Quiet, 60*time.Second, func() bool { return queueCount(t, e) == 0 })
		relaytest.ExactlyOnce(t, got, relaytest.Header("Subject"),
			[]string{"before 0", "before 1", "before 2", "after 0", "after 1", "after 2"})
		if n := len(o.tokens.granted()); n != 2 {
			t.Errorf("%d tokens granted, want 2", n)
		}
		if o.dovecot.Refusals() != 0 {
			t.Errorf("an expired token was offered:\n%s", o.dovecot.Log())
		}
		for _, m := range got {
			if m.From == "" {
				t.Errorf("a bounce: %s", m.Data)
			}
		}
	})
	t.Run("revoked", func(t *testing.T) {
		o := startOAuthUpstream(t, time.Hour)
		e := newRelayEnv(t, envOpts{upstreams: o.yaml("xoauth2", o.clientCredentials())})
		p := e.start(t)
		sendAlice(t, e, "first")
		o.sink.Wait(1, 20*time.Second)
		o.hydra.Revoke(t, o.clientID)
		o.dovecot.DropSessions(t)
		sendAlice(t, e, "second")
		got := o.sink.Settled(t, relaytest.Quiet, 60*time.Second, func() bool { return queueCount(t, e) == 0 })
		relaytest.ExactlyOnce(t, got, relaytest.Header("Subject"), []string{"first", "second"})
		if n := len(o.tokens.granted()); n != 2 {
			t.Errorf("%d tokens granted, want 2 (the refused one replaced once)", n)
		}
		if o.dovecot.Refusals() != 1 || o.dovecot.Logins("XOAUTH2") != 2 {
			t.Errorf("Dovecot should have refused the revoked token once and taken its successor:\n%s", o.dovecot.Log())
		}
		if d := p.records().with("msg", "delivery deferred"); len(d) > 0 {
			t.Errorf("the refused token cost an attempt: %v", d)
		}
	})
	t.Run("token file", func(t *testing.T) {
		// A token that something else keeps fresh: while it holds a bad
		// one, messages wait in the queue (never bounced); once the file
		// holds a good one, they go.
		o := startOAuthUpstream(t, time.Hour)
		file := filepath.Join(t.TempDir(), "token")
		os.WriteFile(file, []byte("not-a-token\n"), 0o600)
		e := newRelayEnv(t, envOpts{upstreams: o.yaml("oauthbearer", fmt.Sprintf("token_file: %q", file))})
		p := e.start(t)
		sendAlice(t, e, "waits for a token")
		relaytest.Eventually(t, "a deferred attempt", 20*time.Second, func() bool { return len(p.records().with("msg", "delivery deferred")) > 0 })
		if n := len(o.sink.Messages()); n != 0 {
			t.Fatalf("%d messages passed with a bad token", n)
		}
		if k := queueCount(t, e); k != 1 {
			t.Fatalf("%d messages queued, want the 1 waiting for a token", k)
		}
		req, _ := http.NewRequest(http.MethodPost, o.hydra.TokenURL(),
			strings.NewReader(url.Values{"grant_type": {"client_credentials"}, "scope": {"smtp"}}.Encode()))
		req.Header.Set("Content-Type", "application/x-www-form-urlencoded")
		req.SetBasicAuth(o.clientID, strings.TrimSpace(readFile(t, o.secret)))
		resp, err := http.DefaultClient.Do(req)
		if err != nil {
			t.Fatal(err)
		}
		var tok struct {
			AccessToken string `json:"access_token"`
		}
		json.NewDecoder(resp.Body).Decode(&tok)
		resp.Body.Close()
		if tok.AccessToken == "" {
			t.Fatal("no token from Hydra")
		}
		os.WriteFile(file+".new", []byte(tok.AccessToken+"\n"), 0o600)
		os.Rename(file+".new", file)
		got := o.sink.Wait(1, 30*time.Second)
		if len(got) != 1 || got[0].From != "alice@example.com" {
			t.Fatalf("sink: %d messages", len(got))
		}
		if o.dovecot.Logins("OAUTHBEARER") == 0 {
			t.Errorf("no OAUTHBEARER login:\n%s", o.dovecot.Log())
		}
	})
}

func readFile(t *testing.T, path string) string {
	b, err := os.ReadFile(path)
	if err != nil {
		t.Fatal(err)
	}
	return string(b)
}

// Microsoft 365 offers LOGIN (and XOAUTH2) but not PLAIN: auto picks LOGIN;
// an upstream told to use PLAIN is deferred with the reason, and the
// message fails over to the next one.
func TestAuthLoginOnlyUpstream(t *testing.T) {
	up := relaytest.StartPostfix(t, relaytest.PostfixOptions{
		Listen: true, TLS: true, SASLUsers: map[string]string{"relay": "relay-pw"}, SASLMechs: "LOGIN",
		Mailboxes: []string{"example.org"},
		Main: []string{"myhostname = upstream.test", "smtpd_tls_security_level = encrypt", "smtpd_tls_auth_only = yes",
			"smtpd_relay_restrictions = permit_sasl_authenticated, reject"},
	})
	entry := func(name, mech string) string {
		return fmt.Sprintf("  - {name: %s, url: \"smtp://%s\", tls: required, ca_file: %q, auth_mechanism: %s, username: relay, password: relay-pw, timeout: 10s}\n",
			name, up.Addr, up.Dir+"/conf/cert.pem", mech)
	}
	e := newRelayEnv(t, envOpts{upstreams: "upstreams:\n" + entry("plain", "plain") + entry("auto", "auto")})
	p := e.start(t)
	sendAlice(t, e, "login only")
	relaytest.Eventually(t, "the message in the mailbox", 20*time.Second, func() bool { return len(up.Mailbox()) == 1 })
	if !regexp.MustCompile(`< localhost\[127\.0\.0\.1\]: AUTH LOGIN`).MatchString(up.Log()) {
		t.Errorf("no AUTH LOGIN in Postfix's log")
	}
	said := false
	for _, r := range p.records().with("msg", "upstream deferred").with("upstream", "plain") {
		said = said || strings.Contains(r["err"], "does not offer AUTH PLAIN")
	}
	if !said {
		t.Errorf("the PLAIN upstream's failure does not say why: %v", p.records().with("msg", "upstream deferred"))
	}
}

// An upstream that authenticates clients by certificate (Postfix with
// smtpd_tls_req_ccert, relaying for any certificate its CA signed): the
// relay without a certificate is turned away and fails over; with one,
// the message is delivered.
func TestClientCertificateUpstream(t *testing.T) {
	dir, err := os.MkdirTemp("", "ccert-") // Postfix's smtpd reads the CA
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
		"-subj", "/CN=Corp Relay CA", "-keyout", dir+"/ca.key", "-out", dir+"/ca.pem")
	openssl("req", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:P-256", "-nodes", "-subj", "/CN=relay.test",
		"-keyout", dir+"/client.key", "-out", dir+"/client.csr")
	os.WriteFile(dir+"/ext", []byte("extendedKeyUsage=clientAuth\n"), 0o644)
	openssl("x509", "-req", "-in", dir+"/client.csr", "-CA", dir+"/ca.pem", "-CAkey", dir+"/ca.key", "-CAcreateserial",
		"-days", "2", "-extfile", dir+"/ext", "-out", dir+"/client.crt")
	up := relaytest.StartPostfix(t, relaytest.PostfixOptions{
		Listen: true, TLS: true, Mailboxes: []string{"example.org"},
		Main: []string{"myhostname = upstream.test", "smtpd_tls_security_level = encrypt", "smtpd_tls_ask_ccert = yes",
			"smtpd_tls_req_ccert = yes", "smtpd_tls_CAfile = " + dir + "/ca.pem", "smtpd_tls_loglevel = 1",
			"smtpd_relay_restrictions = permit_tls_all_clientcerts, reject"},
	})
	entry := func(name, cert string) string {
		return fmt.Sprintf("  - {name: %s, url: \"smtp://%s\", tls: required, ca_file: %q, timeout: 10s%s}\n",
			name, up.Addr, up.Dir+"/conf/cert.pem", cert)
	}
	e := newRelayEnv(t, envOpts{upstreams: "upstreams:\n" + entry("nocert", "") +
		entry("cert", fmt.Sprintf(", client_cert_file: %q, client_key_file: %q", dir+"/client.crt", dir+"/client.key"))})
	p := e.start(t)
	sendAlice(t, e, "by certificate")
	relaytest.Eventually(t, "the message in the mailbox", 20*time.Second, func() bool { return len(up.Mailbox()) == 1 })
	if !strings.Contains(up.Log(), "Trusted TLS connection established from localhost") {
		t.Errorf("Postfix did not verify a client certificate:\n%s", up.Log())
	}
	if len(p.records().with("msg", "upstream deferred").with("upstream", "nocert")) == 0 {
		t.Errorf("the upstream without a certificate was not refused")
	}
}

// The rules of a corporate gateway, each asserted on what the upstreams
// received: app1 (class apps) sends as app1@web-03.corp.internal, which
// becomes noreply@example.com in the envelope, From: and Reply-To:; it may
// mail only example.org and partner.example (not the CEO); every message
// of the class is copied to the archive through its own upstream; internal
// Received: lines, X-Originating-IP and the X-Mailer's build host are gone
// before signing, and the signature verifies.
func TestGatewayRules(t *testing.T) {
	mainUp, archive := sink(t, freePort(t)), sink(t, freePort(t))
	web := freePort(t)
	h, _ := bcrypt.GenerateFromPassword([]byte("app1-pw"), bcrypt.MinCost)
	e := newRelayEnv(t, envOpts{
		users: fmt.Sprintf("  app1:\n    password_hash: %q\n    addresses: [app1@web-03.corp.internal]\n    class: apps\n", h),
		upstreams: fmt.Sprintf("upstreams:\n  - {name: main, url: \"smtp://%s\", tls: none, timeout: 5s}\n"+
			"  - {name: archive, url: \"smtp://%s\", tls: none, timeout: 5s}\nroutes:\n  - {upstreams: [main]}\n", mainUp.Addr, archive.Addr),
		policy: "  rewrite:\n    - {match: {users: [app1]}, sender: noreply@example.com, header_from: true, reply_to: true}\n" +
			"  recipients:\n    apps: {allow: [\"*@example.org\", partner.example], deny: [ceo@example.org]}\n",
		extra: fmt.Sprintf("archive:\n  - {match: {classes: [apps]}, address: archive@archive.example, upstreams: [archive]}\n"+
			"headers:\n  remove:\n    - {name: X-Originating-IP}\n    - {name: Received, matching: '\\.corp\\.internal'}\n"+
			"  replace:\n    - {name: X-Mailer, matching: '^(\\S+).*', with: '$1'}\n"+
			"metrics: {listen: %q}\n", web),
	})
	p := e.start(t)
	out := pySMTP(t, e.starttls, `
s = smtplib.SMTP(HOST, PORT)
s.starttls(context=CTX)
s.login("app1", "app1-pw")
print("own-name", s.mail("noreply@example.com")); s.rset()
s.mail("app1@web-03.corp.internal")
for r in ["bob@example.org", "x@other.example", "ceo@example.org", "p@partner.example"]:
    print(r, s.rcpt(r))
msg = ("Received: from web-03.corp.internal (web-03.corp.internal [10.1.2.3])\r\n\tby mx.corp.internal; Mon, 30 Nov 2026 10:00:00 +0000\r\n"
       "X-Originating-IP: [10.1.2.3]\r\n"
       "X-Mailer: InternalApp/1.2 (built on web-03.corp.internal)\r\n"
       "From: App One <app1@web-03.corp.internal>\r\n"
       "Reply-To: app1@web-03.corp.internal\r\n"
       "To: bob@example.org, p@partner.example\r\n"
       "Subject: invoice\r\n\r\nyour invoice\r\n")
print("data", s.data(msg.encode()))
s.quit()
`)
	for _, want := range []string{"own-name (553, b'5.7.1", "bob@example.org (250", "x@other.example (550, b'5.7.1 Recipient not allowed for this sender')",
		"ceo@example.org (550, b'5.7.1", "p@partner.example (250", "data (250"} {
		if !strings.Contains(out, want) {
			t.Errorf("smtplib lacks %q:\n%s", want, out)
		}
	}
	got := mainUp.Wait(1, 20*time.Second)
	arch := archive.Wait(1, 20*time.Second)
	if len(got) != 1 || len(arch) != 1 {
		t.Fatalf("main got %d, archive %d", len(got), len(arch))
	}
	m := got[0]
	if m.From != "noreply@example.com" || strings.Join(m.To, ",") != "bob@example.org,p@partner.example" {
		t.Errorf("main envelope: %+v", m.Envelope())
	}
	a := arch[0]
	if a.From != "noreply@example.com" || strings.Join(a.To, ",") != "archive@archive.example" || !bytes.Equal(a.Data, m.Data) {
		t.Errorf("archive copy: %+v\nsame bytes: %v", a.Envelope(), bytes.Equal(a.Data, m.Data))
	}
	data := string(m.Data)
	for _, gone := range []string{"corp.internal", "X-Originating-IP", "10.1.2.3", "archive@"} {
		if strings.Contains(data, gone) {
			t.Errorf("the message still holds %q:\n%s", gone, data)
		}
	}
	for _, want := range []string{"\r\nFrom: \"App One\" <noreply@example.com>\r\n", "\r\nReply-To: <noreply@example.com>\r\n",
		"\r\nX-Mailer: InternalApp/1.2\r\n", "by relay.test (smarthost)", "d=example.com"} {
		if !strings.Contains(data, want) {
			t.Errorf("the message lacks %q:\n%s", want, data)
		}
	}
	dkimVerify(t, e.records, m.Data)

	// Alice is in no rule: not rewritten, not archived, not restricted.
	out, code := swaks(t, "--server", e.implicit, "--tls-on-connect", "--auth", "PLAIN", "--auth-user", "alice", "--auth-password", "alice-pw",
		"--from", "alice@example.com", "--to", "x@other.example", "--header", "X-Originating-IP: [10.9.9.9]")
	if code != 0 {
		t.Fatalf("swaks: %s", out)
	}
	if got := mainUp.Wait(2, 20*time.Second); len(got) != 2 || got[1].From != "alice@example.com" || strings.Contains(string(got[1].Data), "10.9.9.9") {
		t.Fatalf("alice's message: %+v", got[len(got)-1].Envelope())
	}

	// An archive that refuses its copy for good gets it again later, and
	// the sender hears nothing of it.
	archive.FailRcpt("archive@archive.example", &smtp.SMTPError{Code: 550, EnhancedCode: smtp.EnhancedCode{5, 1, 1}, Message: "mailbox unavailable"})
	out = pySMTP(t, e.starttls, `
s = smtplib.SMTP(HOST, PORT)
s.starttls(context=CTX)
s.login("app1", "app1-pw")
print(s.sendmail("app1@web-03.corp.internal", ["bob@example.org"], b"From: app1@web-03.corp.internal\r\nSubject: second\r\n\r\nagain\r\n"))
s.quit()
`)
	if !strings.Contains(out, "{}") {
		t.Fatalf("smtplib: %s", out)
	}
	mainUp.Wait(3, 20*time.Second)
	relaytest.Eventually(t, "archive retries", 20*time.Second, func() bool {
		return len(p.records().with("msg", "delivery deferred").with("rcpt", "archive@archive.example")) >= 2
	})
	if k := queueCount(t, e); k != 1 {
		t.Errorf("%d messages queued, want the 1 with its archive copy pending", k)
	}
	archive.FailRcpt("archive@archive.example", nil)
	if got := archive.Wait(2, 20*time.Second); len(got) != 2 {
		t.Fatalf("archive: %d copies", len(got))
	}
	relaytest.Eventually(t, "an empty queue", 10*time.Second, func() bool { return queueCount(t, e) == 0 })
	for _, m := range mainUp.Messages() {
		if m.From == "" {
			t.Errorf("a bounce went out for the archive copy:\n%s", m.Data)
		}
	}
	_, metrics := httpGet(t, "http://"+web+"/metrics")
	for series, min := range map[string]float64{
		`smarthost_recipient_rule_refusals_total{class="apps"}`: 2,
		`smarthost_archive_copies_total{result="sent"}`:         2,
		`smarthost_archive_copies_total{result="deferred"}`:     2,
	} {
		if v := metric(metrics, series); v < min || strings.Contains(series, "refusals") && v != min {
			t.Errorf("%s = %v, want %v", series, v, min)
		}
	}
}
