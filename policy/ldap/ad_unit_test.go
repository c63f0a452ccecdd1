package ldap

// Active Directory's rules that need no server, and what Samba cannot
// show: Windows takes a bind with a DN and an empty password as an
// anonymous bind and answers success.

import (
	"context"
	"errors"
	"fmt"
	"net"
	"slices"
	"sync/atomic"
	"testing"
	"time"

	"github.com/go-ldap/ldap/v3"

	"github.com/smarthost/smarthost/policy"
)

// countingListener accepts connections and counts them, saying nothing:
// any LDAP operation on it would hang until the timeout.
func countingListener(t *testing.T) (url string, accepted *atomic.Int64) {
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { l.Close() })
	accepted = new(atomic.Int64)
	go func() {
		for {
			c, err := l.Accept()
			if err != nil {
				return
			}
			accepted.Add(1)
			t.Cleanup(func() { c.Close() })
		}
	}()
	return "ldap://" + l.Addr().String(), accepted
}

func TestEmptyPasswordRefusedBeforeAnyConnection(t *testing.T) {
	url, accepted := countingListener(t)
	d, err := New(Config{URLs: []string{url}, BaseDN: "DC=corp,DC=example,DC=test", UserFilter: "(sAMAccountName={user})",
		Timeout: 200 * time.Millisecond}, quiet())
	if err != nil {
		t.Fatal(err)
	}
	defer d.Close()
	for _, login := range []string{"alice", `CORP\alice`, "alice@corp.example.test"} {
		_, err := d.Authenticate(context.Background(), login, "")
		if !errors.Is(err, policy.ErrBadCredentials) {
			t.Errorf("%s with an empty password: %v, want ErrBadCredentials", login, err)
		}
	}
	if n := accepted.Load(); n != 0 || d.binds.Load() != 0 {
		t.Fatalf("%d connections and %d binds for empty passwords, want none", n, d.binds.Load())
	}
	// The same directory does connect for a password: the listener counts.
	d.Authenticate(context.Background(), "alice", "x")
	if accepted.Load() == 0 {
		t.Fatal("the listener saw no connection for a real password: the test proves nothing")
	}
}

func TestSMTPAddresses(t *testing.T) {
	got := smtpAddresses([]string{"X500:/o=Corp/cn=alice", "smtp:alias@corp.example", "SIP:alice@corp.example",
		"SMTP:alice@corp.example", "smtp:other@corp.example", "smtp:", "plain@corp.example", "Smtp:odd@corp.example"})
	want := []string{"alice@corp.example", "alias@corp.example", "other@corp.example", "odd@corp.example"}
	if !slices.Equal(got, want) {
		t.Fatalf("got %q, want %q", got, want)
	}
}

func TestUserGetsProxyAddressesWithoutPrefixes(t *testing.T) {
	e := ldap.NewEntry("CN=Alice Liddell,CN=Users,DC=corp,DC=example,DC=test", map[string][]string{
		"proxyAddresses": {"smtp:alias@corp.example", "SMTP:Alice@corp.example", "X500:/o=Corp/cn=alice"},
		"mail":           {"alice@corp.example"},
	})
	d := &Directory{cfg: Config{AddressAttributes: []string{"proxyaddresses", "mail"}}}
	u := d.user(e)
	if !slices.Equal(u.Addresses, []string{"Alice@corp.example", "alias@corp.example"}) {
		t.Fatalf("addresses %q", u.Addresses)
	}
	if u.Owns("smtp:alias@corp.example") || !u.Owns("alias@corp.example") {
		t.Fatalf("ownership: %q", u.Addresses)
	}
}

func TestParseLogin(t *testing.T) {
	for in, want := range map[string]login{
		`CORP\alice`:              {`CORP\alice`, "alice", "CORP"},
		`alice`:                   {"alice", "alice", ""},
		`alice@corp.example.test`: {"alice@corp.example.test", "alice@corp.example.test", ""},
		`\alice`:                  {`\alice`, `\alice`, ""},
		`CORP\`:                   {`CORP\`, `CORP\`, ""},
		`A\B\c`:                   {`A\B\c`, `A\B\c`, ""},
	} {
		if got := parseLogin(in, true); got != want {
			t.Errorf("%q: %+v, want %+v", in, got, want)
		}
	}
	if got := parseLogin(`CORP\alice`, false); got.domain != "" || got.user != `CORP\alice` {
		t.Errorf("without {user} in the filter, the login is split: %+v", got)
	}
}

// The exact texts Samba 4.17 and Windows Server return; only "data X"
// decides.
func TestBindRefusedReasons(t *testing.T) {
	samba := `LDAP Result Code 49 "Invalid Credentials": 80090308: LdapErr: DSID-0C0903A9, comment: AcceptSecurityContext error, data %s, v1db1`
	windows := `LDAP Result Code 49 "Invalid Credentials": 80090308: LdapErr: DSID-0C09044E, comment: AcceptSecurityContext error, data %s, v4563` + "\x00"
	for code, reason := range map[string]string{"52e": "", "525": "", "533": "disabled", "701": "expired", "775": "locked",
		"532": "password_expired", "773": "password_must_change", "530": "restricted", "531": "restricted", "568": ""} {
		for _, text := range []string{samba, windows} {
			err := bindRefused("CN=x", fmt.Errorf(text, code))
			if !errors.Is(err, policy.ErrBadCredentials) || policy.RefusalReason(err) != reason {
				t.Errorf("data %s: %v (reason %q), want ErrBadCredentials with reason %q", code, err, policy.RefusalReason(err), reason)
			}
		}
	}
	if err := bindRefused("CN=x", errors.New(`LDAP Result Code 49 "Invalid Credentials": `)); !errors.Is(err, policy.ErrBadCredentials) || policy.RefusalReason(err) != "" {
		t.Errorf("OpenLDAP's plain 49: %v", err)
	}
}

func TestDisabledBit(t *testing.T) {
	for uac, want := range map[string]string{"512": "", "514": "disabled", "66050": "disabled", "66048": "", "": "", "x": ""} {
		e := ldap.NewEntry("CN=u", map[string][]string{"userAccountControl": {uac}})
		if got := policy.RefusalReason(disabled(e)); got != want {
			t.Errorf("userAccountControl %q: %q, want %q", uac, got, want)
		}
	}
}

func TestInDomainLeavesChildDomainsOut(t *testing.T) {
	parent, _ := ldap.ParseDN("DC=corp,DC=example,DC=test")
	child, _ := ldap.ParseDN("DC=emea,DC=corp,DC=example,DC=test")
	dom := &domain{netbios: "CORP", nc: parent, children: []*ldap.DN{child}}
	if !inDomain("CN=alice,CN=Users,DC=corp,DC=example,DC=test", dom) {
		t.Error("alice is in CORP")
	}
	if inDomain("CN=alice,CN=Users,DC=emea,DC=corp,DC=example,DC=test", dom) {
		t.Error("EMEA's alice is not CORP's")
	}
	if inDomain("CN=alice,DC=other,DC=test", dom) {
		t.Error("another tree is not CORP")
	}
}
