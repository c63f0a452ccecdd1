package ldap

// These tests run against the real Samba AD domain controller that
// scripts/test.sh starts with scripts/samba-ad.sh (SMARTHOST_TEST_AD_*);
// they skip without it, and fail under CI. Its users: alice (direct member
// of Relay Users; proxyAddresses), bob (only through the nested Relay
// Nested; UPN robert.builder@...), carol (in no group), and one user per
// account state: dave disabled, erin must change her password, frank
// expired, grace locked out, heidi's password expired.

import (
	"context"
	"crypto/x509"
	"errors"
	"os"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/go-ldap/ldap/v3"

	"github.com/smarthost/smarthost/configs"
	"github.com/smarthost/smarthost/policy"
)

func adPool(t testing.TB) *x509.CertPool {
	b, err := os.ReadFile(env(t, "SMARTHOST_TEST_AD_CA"))
	if err != nil {
		t.Fatal(err)
	}
	p := x509.NewCertPool()
	if !p.AppendCertsFromPEM(b) {
		t.Fatal("no certificate in SMARTHOST_TEST_AD_CA")
	}
	return p
}

// adConfig is the "ad" preset against the test DC, over StartTLS, searched
// from the domain root (where AD returns its referrals).
func adConfig(t testing.TB) Config {
	return Config{
		URLs:              []string{env(t, "SMARTHOST_TEST_AD_URL")},
		StartTLS:          true,
		TLSVerify:         true,
		RootCAs:           adPool(t),
		BindDN:            env(t, "SMARTHOST_TEST_AD_BIND_DN"),
		BindPassword:      env(t, "SMARTHOST_TEST_AD_BIND_PW"),
		BaseDN:            env(t, "SMARTHOST_TEST_AD_BASE"),
		UserFilter:        configs.ADUserFilter,
		AddressAttributes: []string{"proxyAddresses", "mail"},
		RequiredGroup:     env(t, "SMARTHOST_TEST_AD_GROUP"),
		ActiveDirectory:   true,
		Timeout:           3 * time.Second,
	}
}

const (
	aliceDN = "cn=alice liddell,cn=users,dc=corp,dc=example,dc=test"
	bobDN   = "cn=bob builder,cn=users,dc=corp,dc=example,dc=test"
)

func TestADLoginForms(t *testing.T) {
	d := newDir(t, adConfig(t))
	for login, dn := range map[string]string{
		"alice": aliceDN, "ALICE": aliceDN, `CORP\alice`: aliceDN, `corp\Alice`: aliceDN, `corp.example.test\alice`: aliceDN,
		"alice@corp.example.test": aliceDN, "Alice@CORP.EXAMPLE.TEST": aliceDN,
		"bob": bobDN, `CORP\bob`: bobDN, "robert.builder@corp.example.test": bobDN,
	} {
		pw := "Alice-Passw0rd!"
		if dn == bobDN {
			pw = "Bob-Passw0rd!"
		}
		u, err := d.Authenticate(context.Background(), login, pw)
		if err != nil {
			t.Errorf("%s: %v", login, err)
			continue
		}
		if u.Name != dn {
			t.Errorf("%s logs in as %q, want %q", login, u.Name, dn)
		}
	}
}

func TestADRefusals(t *testing.T) {
	d := newDir(t, adConfig(t))
	for _, c := range []struct{ user, pass, why string }{
		{"alice", "wrong", "wrong password"},
		{`CORP\alice`, "wrong", "wrong password, DOMAIN\\user"},
		{`OTHER\alice`, "Alice-Passw0rd!", "a domain the forest does not have"},
		{`CORP\*`, "Alice-Passw0rd!", "wildcard after the domain"},
		{"*", "Alice-Passw0rd!", "wildcard"},
		{"al*", "Alice-Passw0rd!", "wildcard prefix"},
		{"alice)(sAMAccountName=*", "Alice-Passw0rd!", "filter injection"},
		{`CORP\alice)(|(cn=*`, "Alice-Passw0rd!", "filter injection after the domain"},
		{"*@corp.example.test", "Alice-Passw0rd!", "wildcard UPN"},
		{"alice.alias@corp.example.test", "Alice-Passw0rd!", "a proxy address is not a login"},
		{"carol", "Carol-Passw0rd!", "outside the required group"},
		{"svc-relay", "Svc-Relay-Passw0rd!", "the service account, outside the group"},
	} {
		_, err := d.Authenticate(context.Background(), c.user, c.pass)
		if !errors.Is(err, policy.ErrBadCredentials) || policy.RefusalReason(err) != "" {
			t.Errorf("%s (%q): got %v, want ErrBadCredentials without an account state", c.why, c.user, err)
		}
	}
}

// Each state: 535 to the client (ErrBadCredentials), the reason for the
// log and the metrics. dave, disabled, is refused from his entry: with a
// wrong password too (a bind would say 52e), and without a bind.
func TestADAccountStates(t *testing.T) {
	d := newDir(t, adConfig(t))
	for user, want := range map[string]string{
		"dave": "disabled", "erin": "password_must_change", "frank": "expired", "grace": "locked", "heidi": "password_expired",
	} {
		_, err := d.Authenticate(context.Background(), user, strings.ToUpper(user[:1])+user[1:]+"-Passw0rd!")
		if !errors.Is(err, policy.ErrBadCredentials) || policy.RefusalReason(err) != want {
			t.Errorf("%s: %v (reason %q), want ErrBadCredentials for %q", user, err, policy.RefusalReason(err), want)
		}
	}
	binds := d.binds.Load()
	_, err := d.Authenticate(context.Background(), "dave", "wrong")
	if policy.RefusalReason(err) != "disabled" || d.binds.Load() != binds {
		t.Errorf("dave with a wrong password: %v after %d binds, want disabled without a bind", err, d.binds.Load()-binds)
	}
	// A wrong password says nothing of the state.
	if _, err := d.Authenticate(context.Background(), "heidi", "wrong"); !errors.Is(err, policy.ErrBadCredentials) || policy.RefusalReason(err) != "" {
		t.Errorf("heidi with a wrong password: %v", err)
	}
}

// A refusal is the answer: the next server is never asked (it would
// count the attempt once more towards a lockout).
func TestADRefusalNotRetriedElsewhere(t *testing.T) {
	cfg := adConfig(t)
	second, accepted := countingListener(t)
	cfg.URLs = append(cfg.URLs, second)
	d := newDir(t, cfg)
	for _, user := range []string{"grace", "alice"} {
		_, err := d.Authenticate(context.Background(), user, "wrong")
		if !errors.Is(err, policy.ErrBadCredentials) {
			t.Fatalf("%s: %v", user, err)
		}
	}
	if _, err := d.Authenticate(context.Background(), "grace", "Grace-Passw0rd!"); policy.RefusalReason(err) != "locked" {
		t.Fatalf("grace: %v", err)
	}
	if n := accepted.Load(); n != 0 {
		t.Fatalf("the second server was asked %d times", n)
	}
}

func TestADAddresses(t *testing.T) {
	d := newDir(t, adConfig(t))
	alice, err := d.Authenticate(context.Background(), "alice", "Alice-Passw0rd!")
	if err != nil {
		t.Fatal(err)
	}
	// Primary first, prefixes gone, X500: and SIP: left out, mail once.
	if want := []string{"alice@corp.example.test", "alice.alias@corp.example.test"}; !slices.Equal(alice.Addresses, want) {
		t.Errorf("alice's addresses %q, want %q", alice.Addresses, want)
	}
	bob, err := d.Authenticate(context.Background(), "bob", "Bob-Passw0rd!")
	if err != nil {
		t.Fatal(err)
	}
	if !bob.Owns("b.builder@corp.example.test") || bob.Owns("alice.alias@corp.example.test") || alice.Owns("b.builder@corp.example.test") {
		t.Errorf("alice %q, bob %q", alice.Addresses, bob.Addresses)
	}
	// The plain keys, no preset: address_attributes [proxyAddresses, mail]
	// on its own strips the prefixes.
	cfg := adConfig(t)
	cfg.ActiveDirectory = false
	cfg.UserFilter = "(sAMAccountName={username})"
	cfg.AddressAttributes = []string{"proxyAddresses", "mail"}
	alice, err = newDir(t, cfg).Authenticate(context.Background(), "alice", "Alice-Passw0rd!")
	if err != nil || !slices.Equal(alice.Addresses, []string{"alice@corp.example.test", "alice.alias@corp.example.test"}) {
		t.Errorf("plain keys: %v %+v", err, alice)
	}
}

// bob is in Relay Users only through Relay Nested; plain memberOf does not
// show it. With the preset or without (the server says it is AD).
func TestADNestedGroup(t *testing.T) {
	for _, preset := range []bool{true, false} {
		cfg := adConfig(t)
		cfg.ActiveDirectory = preset
		d := newDir(t, cfg)
		if _, err := d.Authenticate(context.Background(), "bob", "Bob-Passw0rd!"); err != nil {
			t.Errorf("preset %v: bob through the nested group: %v", preset, err)
		}
		if _, err := d.Authenticate(context.Background(), "carol", "Carol-Passw0rd!"); !errors.Is(err, policy.ErrBadCredentials) {
			t.Errorf("preset %v: carol, in no group: %v", preset, err)
		}
	}
	cfg := adConfig(t)
	cfg.RequiredGroup = "CN=No Such Group,CN=Users," + env(t, "SMARTHOST_TEST_AD_BASE")
	_, err := newDir(t, cfg).Authenticate(context.Background(), "bob", "Bob-Passw0rd!")
	if err == nil || errors.Is(err, policy.ErrBadCredentials) {
		t.Fatalf("a missing group: %v, want a configuration error (temporary)", err)
	}
}

// A search at the domain root returns references to the forest's other
// naming contexts (at a name that need not resolve); they are ignored.
func TestADReferralsIgnored(t *testing.T) {
	d := newDir(t, adConfig(t))
	res, err := d.search(ldap.NewSearchRequest(env(t, "SMARTHOST_TEST_AD_BASE"), ldap.ScopeWholeSubtree, ldap.NeverDerefAliases,
		2, 5, false, "(sAMAccountName=alice)", []string{"1.1"}, nil))
	if err != nil || len(res.Referrals) == 0 || len(res.Entries) != 1 {
		t.Fatalf("the DC's answer at the domain root: %v, %d referrals, %d entries; want referrals beside alice", err, len(res.Referrals), len(res.Entries))
	}
	if _, err := d.Authenticate(context.Background(), "alice", "Alice-Passw0rd!"); err != nil {
		t.Fatal(err)
	}
}

func TestADTLS(t *testing.T) {
	for name, c := range map[string]struct {
		url      string
		startTLS bool
	}{
		"LDAPS":                 {env(t, "SMARTHOST_TEST_AD_LDAPS_URL"), false},
		"StartTLS":              {env(t, "SMARTHOST_TEST_AD_URL"), true},
		"Global Catalog":        {env(t, "SMARTHOST_TEST_AD_GC_URL"), true},
		"Global Catalog, LDAPS": {env(t, "SMARTHOST_TEST_AD_GCS_URL"), false},
	} {
		cfg := adConfig(t)
		cfg.URLs, cfg.StartTLS = []string{c.url}, c.startTLS
		d := newDir(t, cfg)
		for _, login := range []string{`CORP\bob`, "robert.builder@corp.example.test"} {
			if u, err := d.Authenticate(context.Background(), login, "Bob-Passw0rd!"); err != nil || u.Name != bobDN {
				t.Errorf("%s, %s: %v", name, login, err)
			}
		}
	}
	cfg := adConfig(t)
	cfg.RootCAs = x509.NewCertPool() // trusts nothing
	_, err := newDir(t, cfg).Authenticate(context.Background(), "alice", "Alice-Passw0rd!")
	if err == nil || errors.Is(err, policy.ErrBadCredentials) || !strings.Contains(err.Error(), "certificate") {
		t.Errorf("untrusted certificate: %v, want a temporary certificate error", err)
	}
	// AD refuses a simple bind without TLS ("Strong(er) authentication
	// required"): the admin's mistake, never "wrong password".
	cfg = adConfig(t)
	cfg.StartTLS = false
	_, err = newDir(t, cfg).Authenticate(context.Background(), "alice", "Alice-Passw0rd!")
	if err == nil || errors.Is(err, policy.ErrBadCredentials) {
		t.Errorf("without TLS: %v, want a temporary error", err)
	}
}

// bob's class and recipient rules live in attributes of AD's base schema,
// the rules several to one value.
func TestADClassAndRecipientRules(t *testing.T) {
	cfg := adConfig(t)
	cfg.ClassAttribute = "msDS-cloudExtensionAttribute1"
	cfg.RecipientRulesAttribute = "msDS-cloudExtensionAttribute2"
	d := newDir(t, cfg)
	bob, err := d.Authenticate(context.Background(), "bob", "Bob-Passw0rd!")
	if err != nil {
		t.Fatal(err)
	}
	if bob.Class != "bulk" {
		t.Errorf("bob's class %q, want bulk", bob.Class)
	}
	p := policy.New(policy.Config{}, d)
	for rcpt, want := range map[string]error{
		"someone@example.org": nil, "x@partner.example": nil,
		"ceo@example.org": policy.ErrRecipientRefused, "someone@elsewhere.test": policy.ErrRecipientRefused,
	} {
		if err := p.CheckRecipient(policy.Client{User: bob}, rcpt); !errors.Is(err, want) || (want == nil) != (err == nil) {
			t.Errorf("bob to %s: %v, want %v", rcpt, err, want)
		}
	}
	alice, _ := d.Authenticate(context.Background(), "alice", "Alice-Passw0rd!")
	if alice == nil || alice.Class != "" || alice.Recipients != nil {
		t.Errorf("alice: %+v", alice)
	}
}

// The DC frozen mid-run: temporary failures, then logins again, with no
// restart, once it runs.
func TestADStoppedAndResumed(t *testing.T) {
	cfg := adConfig(t)
	cfg.Timeout = time.Second
	d := newDir(t, cfg)
	if _, err := d.Authenticate(context.Background(), "alice", "Alice-Passw0rd!"); err != nil {
		t.Fatal(err)
	}
	stopAndResume(t, d, "SMARTHOST_TEST_AD_PIDFILE", "bob", "Bob-Passw0rd!")
}

func TestADProbe(t *testing.T) {
	cfg := adConfig(t)
	cfg.ActiveDirectory = false
	res := newDir(t, cfg).Probe()
	if len(res) != 1 || res[0].Err != nil || !slices.Equal(res[0].Notes, []string{"Active Directory", "base_dn found", "required_group found"}) {
		t.Fatalf("probe: %+v", res)
	}
	cfg.RequiredGroup = "CN=Relay Userz,CN=Users," + env(t, "SMARTHOST_TEST_AD_BASE")
	if res := newDir(t, cfg).Probe(); res[0].Err == nil || !strings.Contains(res[0].Err.Error(), "required_group") {
		t.Fatalf("probe with a misspelt group: %+v", res)
	}
}

// DOMAIN\user searches that domain alone. The test forest has one domain,
// so a child domain is played by CN=Users, and a base_dn above the domain
// (as with a Global Catalog searched from the forest root) by one that
// does not exist.
func TestADDomainScoping(t *testing.T) {
	cfg := adConfig(t)
	cfg.URLs = []string{env(t, "SMARTHOST_TEST_AD_GC_URL")}
	cfg.BaseDN = "DC=example,DC=test"
	d := newDir(t, cfg)
	if u, err := d.Authenticate(context.Background(), `CORP\alice`, "Alice-Passw0rd!"); err != nil || u.Name != aliceDN {
		t.Errorf(`CORP\alice from above the domain: %v`, err)
	}
	d = newDir(t, adConfig(t))
	info, err := d.serverInfo()
	if err != nil || len(info.domains) != 1 || info.domains[0].netbios != "CORP" {
		t.Fatalf("the forest's domains: %v %+v", err, info)
	}
	users, _ := ldap.ParseDN("CN=Users," + env(t, "SMARTHOST_TEST_AD_BASE"))
	info.domains[0].children = []*ldap.DN{users}
	if _, err := d.Authenticate(context.Background(), `CORP\alice`, "Alice-Passw0rd!"); !errors.Is(err, policy.ErrBadCredentials) {
		t.Errorf(`CORP\alice, in a child domain of CORP: %v, want ErrBadCredentials`, err)
	}
}
