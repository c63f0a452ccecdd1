package ldap

// These tests run against the real slapd that scripts/test.sh starts with
// testdata/ldap/test-users.ldif; they skip without it, and fail under CI.

import (
	"context"
	"crypto/x509"
	"errors"
	"io"
	"log/slog"
	"net"
	"os"
	"os/exec"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/smarthost/smarthost/policy"
	"github.com/smarthost/smarthost/relay/relaytest"
)

func env(t testing.TB, name string) string { return relaytest.Service(t, name) }

func caPool(t testing.TB) *x509.CertPool {
	b, err := os.ReadFile(env(t, "SMARTHOST_TEST_LDAP_CA"))
	if err != nil {
		t.Fatal(err)
	}
	p := x509.NewCertPool()
	p.AppendCertsFromPEM(b)
	return p
}

func testConfig(t testing.TB) Config {
	return Config{
		URLs:              []string{env(t, "SMARTHOST_TEST_LDAP_URL")},
		StartTLS:          true,
		TLSVerify:         true,
		RootCAs:           caPool(t),
		BindDN:            env(t, "SMARTHOST_TEST_LDAP_BIND_DN"),
		BindPassword:      env(t, "SMARTHOST_TEST_LDAP_BIND_PW"),
		BaseDN:            env(t, "SMARTHOST_TEST_LDAP_BASE"),
		UserFilter:        "(&(objectClass=inetOrgPerson)(uid={username}))",
		AddressAttributes: []string{"mail"},
		ClassAttribute:    "employeeType",
		RequiredGroup:     env(t, "SMARTHOST_TEST_LDAP_GROUP"),
		Timeout:           2 * time.Second,
	}
}

func quiet() *slog.Logger { return slog.New(slog.NewTextHandler(io.Discard, nil)) }

func newDir(t testing.TB, cfg Config) *Directory {
	t.Helper()
	d, err := New(cfg, quiet())
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(d.Close)
	return d
}

func TestLogins(t *testing.T) {
	d := newDir(t, testConfig(t))
	ctx := context.Background()
	u, err := d.Authenticate(ctx, "alice", "alice-secret")
	if err != nil {
		t.Fatal(err)
	}
	if u.Name != "uid=alice,ou=people,dc=example,dc=com" || !u.Owns("alice@example.com") || !u.Owns("alice.smith@example.com") || u.Owns("bob@example.com") {
		t.Errorf("alice: %+v", u)
	}
	if u.Class != "" {
		t.Errorf("alice has class %q", u.Class)
	}
	for name, pass := range map[string]string{"bob": "bob-secret", "carol": "pässwörd-€", "erin": "erin-secret", "ALICE": "alice-secret", "frank(ops)*": "frank-secret"} {
		u, err := d.Authenticate(ctx, name, pass)
		if err != nil {
			t.Errorf("%s: %v", name, err)
			continue
		}
		if name == "bob" && u.Class != "bulk" {
			t.Errorf("bob's class %q, want bulk", u.Class)
		}
		if name == "ALICE" && u.Name != "uid=alice,ou=people,dc=example,dc=com" {
			t.Errorf("ALICE logs in as %q, want alice's DN", u.Name)
		}
	}
}

func TestRefusals(t *testing.T) {
	d := newDir(t, testConfig(t))
	for _, c := range []struct{ user, pass, why string }{
		{"alice", "wrong", "wrong password"},
		{"nobody", "alice-secret", "unknown user"},
		{"dave", "dave-secret", "not in the required group"},
		{"carol", "passwörd-€", "non-ASCII password, one letter off"},
		{"alice", "", "empty password"},
		{"*", "alice-secret", "wildcard user"},
		{"al*", "alice-secret", "wildcard prefix"},
		{"alice)(uid=*", "alice-secret", "filter injection"},
		{`alice\00`, "alice-secret", "escaped NUL"},
		{"alice\x00", "alice-secret", "NUL byte"},
		{"*)(|(uid=*", "x", "filter injection with or"},
	} {
		if _, err := d.Authenticate(context.Background(), c.user, c.pass); !errors.Is(err, policy.ErrBadCredentials) {
			t.Errorf("%s (%q): got %v, want ErrBadCredentials", c.why, c.user, err)
		}
	}
}

// Without the group requirement dave gets in: the group check, not LDAP
// itself, is what refuses him.
func TestRequiredGroupIsWhatRefusesDave(t *testing.T) {
	cfg := testConfig(t)
	cfg.RequiredGroup = ""
	if _, err := newDir(t, cfg).Authenticate(context.Background(), "dave", "dave-secret"); err != nil {
		t.Fatalf("dave without required_group: %v", err)
	}
	cfg.RequiredGroup = "cn=no-such-group,ou=groups,dc=example,dc=com"
	_, err := newDir(t, cfg).Authenticate(context.Background(), "alice", "alice-secret")
	if err == nil || errors.Is(err, policy.ErrBadCredentials) {
		t.Fatalf("missing group: %v, want a configuration error (temporary)", err)
	}
}

func TestTLS(t *testing.T) {
	cfg := testConfig(t)
	cfg.URLs = []string{env(t, "SMARTHOST_TEST_LDAPS_URL")}
	if _, err := newDir(t, cfg).Authenticate(context.Background(), "alice", "alice-secret"); err != nil {
		t.Fatalf("ldaps: %v", err)
	}
	cfg = testConfig(t)
	cfg.RootCAs = x509.NewCertPool() // trusts nothing
	_, err := newDir(t, cfg).Authenticate(context.Background(), "alice", "alice-secret")
	if err == nil || errors.Is(err, policy.ErrBadCredentials) || !strings.Contains(err.Error(), "certificate") {
		t.Fatalf("untrusted StartTLS certificate: %v, want a temporary certificate error", err)
	}
}

func TestPoolReusesConnections(t *testing.T) {
	d := newDir(t, testConfig(t))
	for i := 0; i < 20; i++ {
		if _, err := d.Authenticate(context.Background(), "alice", "alice-secret"); err != nil {
			t.Fatal(err)
		}
		d.Authenticate(context.Background(), "alice", "wrong")
	}
	if n := d.dials.Load(); n != 2 {
		t.Fatalf("%d connections for 40 logins, want 2 (one service, one for user binds)", n)
	}
}

func deadURL(t *testing.T) string {
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer l.Close()
	return "ldap://" + l.Addr().String()
}

func TestFailover(t *testing.T) {
	cfg := testConfig(t)
	cfg.URLs = append([]string{deadURL(t)}, cfg.URLs...)
	if _, err := newDir(t, cfg).Authenticate(context.Background(), "alice", "alice-secret"); err != nil {
		t.Fatalf("second URL not tried: %v", err)
	}
}

func TestOutagesAreTemporary(t *testing.T) {
	cfg := testConfig(t)
	cfg.URLs = []string{deadURL(t)}
	if _, err := newDir(t, cfg).Authenticate(context.Background(), "alice", "alice-secret"); err == nil || errors.Is(err, policy.ErrBadCredentials) {
		t.Fatalf("server down: %v, want a temporary error", err)
	}
	cfg = testConfig(t)
	cfg.BindPassword = "not-the-service-password"
	if _, err := newDir(t, cfg).Authenticate(context.Background(), "alice", "alice-secret"); err == nil || errors.Is(err, policy.ErrBadCredentials) {
		t.Fatalf("service bind refused: %v, want a temporary error", err)
	}
}

// slapd frozen with SIGSTOP mid-run: logins time out as temporary failures
// and work again, with no restart, once it runs again.
func TestSlapdStoppedAndResumed(t *testing.T) {
	cfg := testConfig(t)
	cfg.Timeout = time.Second
	d := newDir(t, cfg)
	if _, err := d.Authenticate(context.Background(), "alice", "alice-secret"); err != nil {
		t.Fatal(err)
	}
	stopAndResume(t, d, "SMARTHOST_TEST_LDAP_PIDFILE", "bob", "bob-secret")
}

// stopAndResume freezes the server (SIGSTOP) and expects a temporary
// failure within the timeout for a login not made before, then resumes
// it and expects that login to work again.
func stopAndResume(t *testing.T, d *Directory, pidfileVar, user, pass string) {
	t.Helper()
	resume := relaytest.Freeze(t, pidfileVar)
	start := time.Now()
	_, err := d.Authenticate(context.Background(), user, pass)
	if err == nil || errors.Is(err, policy.ErrBadCredentials) {
		t.Fatalf("server stopped: %v, want a temporary error", err)
	}
	if time.Since(start) > 10*time.Second {
		t.Errorf("the timeout took %s", time.Since(start))
	}
	resume()
	relaytest.Eventually(t, "a login after SIGCONT", 20*time.Second, func() bool {
		_, err = d.Authenticate(context.Background(), user, pass)
		return err == nil
	})
}

// A password changed in the directory takes effect once the cached login
// expires, and a failure is never cached.
func TestPasswordChangeThroughCache(t *testing.T) {
	url := env(t, "SMARTHOST_TEST_LDAP_URL")
	now := time.Unix(1000, 0)
	c := policy.NewCache(newDir(t, testConfig(t)), time.Minute, func() time.Time { return now })
	ctx := context.Background()
	if _, err := c.Authenticate(ctx, "erin", "erin-secret"); err != nil {
		t.Fatal(err)
	}
	setPassword := func(pw string) {
		cmd := exec.Command("/usr/bin/ldappasswd", "-x", "-H", url, "-D", "cn=admin,dc=example,dc=com", "-w", "admin-secret",
			"-s", pw, "uid=erin,ou=people,dc=example,dc=com")
		if out, err := cmd.CombinedOutput(); err != nil {
			t.Fatalf("ldappasswd: %v\n%s", err, out)
		}
	}
	setPassword("erin-new")
	defer setPassword("erin-secret")
	if _, err := c.Authenticate(ctx, "erin", "erin-secret"); err != nil {
		t.Fatalf("cached login within ttl: %v", err)
	}
	if _, err := c.Authenticate(ctx, "erin", "erin-new"); err != nil {
		t.Fatalf("new password: %v", err)
	}
	now = now.Add(61 * time.Second)
	if _, err := c.Authenticate(ctx, "erin", "erin-secret"); !errors.Is(err, policy.ErrBadCredentials) {
		t.Fatalf("old password after ttl: %v, want ErrBadCredentials", err)
	}
}

func TestProbe(t *testing.T) {
	cfg := testConfig(t)
	cfg.URLs = append(cfg.URLs, deadURL(t))
	res := newDir(t, cfg).Probe()
	if len(res) != 2 || res[0].Err != nil || res[1].Err == nil {
		t.Fatalf("probe: %+v", res)
	}
}

func BenchmarkLoginCold(b *testing.B) {
	d := newDir(b, testConfig(b))
	ctx := context.Background()
	b.ResetTimer()
	for i := 0; i < b.N; i++ {
		if _, err := d.Authenticate(ctx, "alice", "alice-secret"); err != nil {
			b.Fatal(err)
		}
	}
}

func BenchmarkLoginWarm(b *testing.B) {
	c := policy.NewCache(newDir(b, testConfig(b)), time.Minute, nil)
	ctx := context.Background()
	c.Authenticate(ctx, "alice", "alice-secret")
	b.ResetTimer()
	for i := 0; i < b.N; i++ {
		if _, err := c.Authenticate(ctx, "alice", "alice-secret"); err != nil {
			b.Fatal(err)
		}
	}
}

// Bob carries recipient rules of his own in smarthostRecipientRule
// (deploy/ldap/smarthost.schema); the policy applies them at RCPT.
func TestRecipientRulesAttribute(t *testing.T) {
	cfg := testConfig(t)
	cfg.RecipientRulesAttribute = "smarthostRecipientRule"
	d := newDir(t, cfg)
	bob, err := d.Authenticate(context.Background(), "bob", "bob-secret")
	if err != nil {
		t.Fatal(err)
	}
	r := bob.Recipients
	if r == nil || !slices.Equal(r.Allow, []string{"*@example.org", "partner.example"}) || !slices.Equal(r.Deny, []string{"ceo@example.org"}) {
		t.Fatalf("bob's rules: %+v", r)
	}
	alice, _ := d.Authenticate(context.Background(), "alice", "alice-secret")
	if alice.Recipients != nil {
		t.Fatalf("alice has rules: %+v", alice.Recipients)
	}
	p := policy.New(policy.Config{}, d)
	for rcpt, want := range map[string]error{
		"someone@example.org":     nil,
		"x@partner.example":       nil,
		"ceo@example.org":         policy.ErrRecipientRefused,
		"someone@elsewhere.test":  policy.ErrRecipientRefused,
		"someone@sub.example.org": policy.ErrRecipientRefused,
	} {
		if err := p.CheckRecipient(policy.Client{User: bob}, rcpt); !errors.Is(err, want) || (want == nil) != (err == nil) {
			t.Errorf("bob to %s: %v, want %v", rcpt, err, want)
		}
	}
	if err := p.CheckRecipient(policy.Client{User: alice}, "someone@elsewhere.test"); err != nil {
		t.Errorf("alice, without rules: %v", err)
	}
	// Without the attribute configured, the entry's rules are not read.
	if u, _ := newDir(t, testConfig(t)).Authenticate(context.Background(), "bob", "bob-secret"); u.Recipients != nil {
		t.Errorf("rules read without recipient_rules_attribute: %+v", u.Recipients)
	}
}
