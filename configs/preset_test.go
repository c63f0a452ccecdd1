package configs

import (
	"slices"
	"testing"
)

// The "ad" preset fills what is left out, and never what is given.
func TestADPreset(t *testing.T) {
	const head = "listeners: [{address: \"127.0.0.1:587\"}]\ntls: {self_signed: true}\nupstreams: [{name: a, url: \"file:///tmp/o\"}]\n"
	f, err := Parse([]byte(head + `auth:
  backend: ldap
  ldap: {preset: ad, urls: ["ldaps://dc1.corp.example.com"], base_dn: "DC=corp,DC=example,DC=com"}
`))
	if err != nil {
		t.Fatal(err)
	}
	if l := f.Auth.LDAP; l.UserFilter != ADUserFilter || !slices.Equal(l.AddressAttributes, []string{"proxyAddresses", "mail"}) {
		t.Errorf("preset ad: filter %q, addresses %q", l.UserFilter, l.AddressAttributes)
	}
	f, err = Parse([]byte(head + `auth:
  backend: ldap
  ldap: {preset: ad, urls: ["ldaps://dc1.corp.example.com"], base_dn: "DC=corp,DC=example,DC=com",
         user_filter: "(userPrincipalName={username})", address_attributes: [mail]}
`))
	if err != nil {
		t.Fatal(err)
	}
	if l := f.Auth.LDAP; l.UserFilter != "(userPrincipalName={username})" || !slices.Equal(l.AddressAttributes, []string{"mail"}) {
		t.Errorf("preset ad over given keys: filter %q, addresses %q", l.UserFilter, l.AddressAttributes)
	}
	// {user} alone is a filter too.
	if _, err := Parse([]byte(head + `auth:
  backend: ldap
  ldap: {urls: ["ldaps://dc1.corp.example.com"], base_dn: "DC=corp,DC=example,DC=com", user_filter: "(sAMAccountName={user})"}
`)); err != nil {
		t.Error(err)
	}
}
