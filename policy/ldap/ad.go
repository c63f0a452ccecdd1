package ldap

// Active Directory, as Windows shops run it: logins as DOMAIN\user, the
// addresses Exchange keeps in proxyAddresses, nested groups, and the
// account states AD names in its bind errors. Nothing here needs
// configuring beyond the plain keys: what the server is, it says in its
// root DSE.

import (
	"fmt"
	"regexp"
	"strconv"
	"strings"

	"github.com/go-ldap/ldap/v3"

	"github.com/smarthost/smarthost/policy"
)

const (
	capActiveDirectory = "1.2.840.113556.1.4.800"  // LDAP_CAP_ACTIVE_DIRECTORY_OID
	capADLDS           = "1.2.840.113556.1.4.1851" // LDAP_CAP_ACTIVE_DIRECTORY_ADAM_OID
	// ruleInChain is LDAP_MATCHING_RULE_IN_CHAIN: memberOf through any
	// depth of nested groups.
	ruleInChain       = "1.2.840.113556.1.4.1941"
	uacAccountDisable = 0x2 // userAccountControl ACCOUNTDISABLE
)

// serverInfo is what the server says about itself, asked once.
type serverInfo struct {
	ad      bool
	domains []domain // AD: the forest's domains
}

// domain is one domain of an AD forest: its names and naming context.
type domain struct {
	netbios, dns string
	nc           *ldap.DN
	children     []*ldap.DN // naming contexts of the domains below it
}

// login is a login name as typed: "CORP\alice" is alice of the domain CORP.
type login struct{ full, user, domain string }

// parseLogin splits "DOMAIN\user" where the filter asks for {user}.
func parseLogin(s string, split bool) login {
	if dom, user, ok := strings.Cut(s, `\`); split && ok && dom != "" && user != "" && !strings.Contains(user, `\`) {
		return login{full: s, user: user, domain: dom}
	}
	return login{full: s, user: s}
}

// serverInfo reads the root DSE once: whether the server is AD, and if so
// the forest's domains from the partitions of its configuration. A
// failure is not remembered (the server may be down), an answer is.
func (d *Directory) serverInfo() (*serverInfo, error) {
	d.infoMu.Lock()
	defer d.infoMu.Unlock()
	if d.info != nil {
		return d.info, nil
	}
	req := ldap.NewSearchRequest("", ldap.ScopeBaseObject, ldap.NeverDerefAliases, 1, int(d.cfg.Timeout.Seconds())+1,
		false, "(objectClass=*)", []string{"supportedCapabilities", "configurationNamingContext"}, nil)
	res, err := d.search(req)
	if err != nil {
		return nil, fmt.Errorf("ldap: reading the root DSE: %w", err)
	}
	info := &serverInfo{ad: d.cfg.ActiveDirectory}
	var config string
	if len(res.Entries) == 1 {
		for _, c := range res.Entries[0].GetEqualFoldAttributeValues("supportedCapabilities") {
			info.ad = info.ad || c == capActiveDirectory || c == capADLDS
		}
		config = res.Entries[0].GetEqualFoldAttributeValue("configurationNamingContext")
	}
	if info.ad && config != "" {
		if info.domains, err = d.domains(config); err != nil {
			return nil, err
		}
	}
	d.info = info
	return info, nil
}

// domains lists the forest's domains: the cross-references in
// CN=Partitions of the configuration that carry a NetBIOS name.
func (d *Directory) domains(config string) ([]domain, error) {
	req := ldap.NewSearchRequest("CN=Partitions,"+config, ldap.ScopeSingleLevel, ldap.NeverDerefAliases, 0,
		int(d.cfg.Timeout.Seconds())+1, false, "(&(objectClass=crossRef)(nETBIOSName=*))",
		[]string{"nETBIOSName", "dnsRoot", "nCName"}, nil)
	res, err := d.search(req)
	if err != nil {
		return nil, fmt.Errorf("ldap: listing the forest's domains: %w", err)
	}
	var out []domain
	for _, e := range res.Entries {
		nc, err := ldap.ParseDN(e.GetEqualFoldAttributeValue("nCName"))
		if err != nil {
			continue
		}
		out = append(out, domain{netbios: e.GetEqualFoldAttributeValue("nETBIOSName"), dns: e.GetEqualFoldAttributeValue("dnsRoot"), nc: nc})
	}
	for i := range out {
		for _, o := range out {
			if out[i].nc.AncestorOfFold(o.nc) {
				out[i].children = append(out[i].children, o.nc)
			}
		}
	}
	return out, nil
}

// domainBase finds the domain a "DOMAIN\user" login names (by NetBIOS or
// DNS name) and where to search for it: base_dn if that lies within the
// domain, else the domain itself if it lies within base_dn (a Global
// Catalog searched from the forest root). A domain the directory does not
// know is a wrong login, never a search of every domain.
func (d *Directory) domainBase(name string) (*domain, string, error) {
	info, err := d.serverInfo()
	if err != nil {
		return nil, "", err
	}
	base, err := ldap.ParseDN(d.cfg.BaseDN)
	if err != nil {
		return nil, "", fmt.Errorf("ldap: base_dn: %w", err)
	}
	for i := range info.domains {
		dom := &info.domains[i]
		if !strings.EqualFold(dom.netbios, name) && !strings.EqualFold(dom.dns, name) {
			continue
		}
		switch {
		case dom.nc.EqualFold(base) || dom.nc.AncestorOfFold(base):
			return dom, d.cfg.BaseDN, nil
		case base.AncestorOfFold(dom.nc):
			return dom, dom.nc.String(), nil
		}
		return nil, "", fmt.Errorf("%w: the domain %s is outside base_dn", policy.ErrBadCredentials, name)
	}
	return nil, "", fmt.Errorf("%w: no domain %q in this directory", policy.ErrBadCredentials, name)
}

// inDomain reports whether dn belongs to dom and not to one of its child
// domains, whose naming contexts lie below dom's.
func inDomain(dn string, dom *domain) bool {
	p, err := ldap.ParseDN(dn)
	if err != nil || !dom.nc.AncestorOfFold(p) {
		return false
	}
	for _, child := range dom.children {
		if child.EqualFold(p) || child.AncestorOfFold(p) {
			return false
		}
	}
	return true
}

// smtpAddresses reads proxyAddresses as Exchange writes them: only the
// SMTP kind ("SMTP:" marks the primary, "smtp:" the others; X500:, SIP:
// and the rest are not mail addresses), prefix removed, primary first.
func smtpAddresses(values []string) []string {
	var primary, others []string
	for _, v := range values {
		kind, addr, ok := strings.Cut(v, ":")
		switch {
		case !ok || !strings.EqualFold(kind, "smtp") || addr == "":
		case kind == "SMTP":
			primary = append(primary, addr)
		default:
			others = append(others, addr)
		}
	}
	return append(primary, others...)
}

// disabled refuses an entry whose userAccountControl has the disabled bit.
func disabled(entry *ldap.Entry) error {
	v := entry.GetEqualFoldAttributeValue("userAccountControl")
	if uac, err := strconv.ParseInt(v, 10, 64); err == nil && uac&uacAccountDisable != 0 {
		return fmt.Errorf("%s: %w", entry.DN, &policy.AccountError{Reason: "disabled", Detail: "userAccountControl has ACCOUNTDISABLE"})
	}
	return nil
}

// checkNestedGroup asks AD whether the user is in the required group
// through any chain of groups, with a base search on the user's entry.
func (d *Directory) checkNestedGroup(entry *ldap.Entry) error {
	filter := fmt.Sprintf("(memberOf:%s:=%s)", ruleInChain, ldap.EscapeFilter(d.cfg.RequiredGroup))
	req := ldap.NewSearchRequest(entry.DN, ldap.ScopeBaseObject, ldap.NeverDerefAliases, 1,
		int(d.cfg.Timeout.Seconds())+1, false, filter, []string{"1.1"}, nil)
	res, err := d.search(req)
	if err != nil {
		return err
	}
	if len(res.Entries) == 1 {
		return nil
	}
	// Not a member; unless the group itself is missing, which is the
	// admin's mistake, not the user's.
	req = ldap.NewSearchRequest(d.cfg.RequiredGroup, ldap.ScopeBaseObject, ldap.NeverDerefAliases, 1,
		int(d.cfg.Timeout.Seconds())+1, false, "(objectClass=*)", []string{"1.1"}, nil)
	if _, err := d.search(req); ldap.IsErrorWithCode(err, ldap.LDAPResultNoSuchObject) {
		return errNoGroup(d.cfg.RequiredGroup, err)
	} else if err != nil {
		return err
	}
	return fmt.Errorf("%w: %s is not in the required group, nor in a group within it", policy.ErrBadCredentials, entry.DN)
}

// adDataCode finds why AD refused a bind: "... AcceptSecurityContext
// error, data 775, v1db1". The rest of the text differs between Windows
// versions and Samba; the code does not.
var adDataCode = regexp.MustCompile(`data ([0-9a-fA-F]+)`)

// adStates are the codes that mean "right password, but this account may
// not log in now". A wrong password is always 52e (unknown user 525),
// whatever the account's state, so a state is only ever named to someone
// who knows the password.
var adStates = map[string]struct{ reason, text string }{
	"530": {"restricted", "not permitted to log on at this time"},
	"531": {"restricted", "not permitted to log on at this workstation"},
	"532": {"password_expired", "password expired"},
	"533": {"disabled", "account disabled"},
	"701": {"expired", "account expired"},
	"773": {"password_must_change", "password must be changed"},
	"775": {"locked", "account locked out"},
}

// bindRefused is the error for a bind refused with invalidCredentials.
func bindRefused(dn string, err error) error {
	if m := adDataCode.FindStringSubmatch(err.Error()); m != nil {
		code := strings.ToLower(m[1])
		if s, ok := adStates[code]; ok {
			return fmt.Errorf("bind as %s: %w", dn, &policy.AccountError{Reason: s.reason, Detail: fmt.Sprintf("%s (data %s)", s.text, code)})
		}
	}
	return fmt.Errorf("%w: bind as %s", policy.ErrBadCredentials, dn)
}
