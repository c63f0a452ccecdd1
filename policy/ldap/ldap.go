// Package ldap is a policy.Directory over an LDAP server (OpenLDAP, 389-DS,
// Active Directory): search as a service account, then bind as the user.
package ldap

import (
	"context"
	"crypto/x509"
	"errors"
	"fmt"
	"log/slog"
	"net/url"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"github.com/go-ldap/ldap/v3"

	"github.com/smarthost/smarthost/policy"
)

// Config is the auth.ldap section of the configuration, parsed.
type Config struct {
	URLs         []string // tried in order
	StartTLS     bool     // for ldap:// URLs
	TLSVerify    bool
	RootCAs      *x509.CertPool // nil: the system roots
	BindDN       string
	BindPassword string
	BaseDN       string
	// UserFilter finds the user: {username} is the login as typed,
	// {user} the login without a leading "DOMAIN\" (whose domain must
	// then be one of the directory's own); both are escaped.
	UserFilter string
	// AddressAttributes hold the addresses the user may send as;
	// proxyAddresses is read as Exchange writes it (see smtpAddresses).
	AddressAttributes []string
	ClassAttribute    string
	// RecipientRulesAttribute holds the user's own recipient rules as
	// "allow:PATTERN" and "deny:PATTERN" values ("": none).
	RecipientRulesAttribute string
	RequiredGroup           string
	// ActiveDirectory says the server is Active Directory without asking
	// it (the "ad" preset); otherwise its root DSE is asked once.
	ActiveDirectory bool
	Timeout         time.Duration // each dial, handshake and operation
	PoolSize        int           // idle connections kept per kind; default 4
}

// Directory implements policy.Directory. It holds two small pools: service
// connections (bound as BindDN, used for searches) and user connections
// (used only for the user's bind), so that a user's bind never changes the
// identity of a connection that searches.
type Directory struct {
	cfg     Config
	log     *slog.Logger
	service chan *ldap.Conn
	users   chan *ldap.Conn
	dials   atomic.Int64 // connections opened, for tests and metrics
	binds   atomic.Int64 // user binds attempted, for tests

	infoMu sync.Mutex
	info   *serverInfo // what the server said about itself; nil until asked
}

var _ policy.Directory = (*Directory)(nil)

// New checks cfg; it does not connect, so the relay starts while LDAP is
// down and recovers by itself when it comes back.
func New(cfg Config, log *slog.Logger) (*Directory, error) {
	if len(cfg.URLs) == 0 || cfg.BaseDN == "" || !hasPlaceholder(cfg.UserFilter) {
		return nil, errors.New("ldap: urls, base_dn and a user_filter with {username} or {user} are required")
	}
	for _, u := range cfg.URLs {
		if _, err := url.Parse(u); err != nil {
			return nil, fmt.Errorf("ldap: %q: %w", u, err)
		}
	}
	if cfg.Timeout <= 0 {
		cfg.Timeout = 5 * time.Second
	}
	if cfg.PoolSize <= 0 {
		cfg.PoolSize = 4
	}
	return &Directory{cfg: cfg, log: log, service: make(chan *ldap.Conn, cfg.PoolSize), users: make(chan *ldap.Conn, cfg.PoolSize)}, nil
}

// hasPlaceholder reports whether a user filter names the login.
func hasPlaceholder(filter string) bool {
	return strings.Contains(filter, "{username}") || strings.Contains(filter, "{user}")
}

// Close closes the idle connections.
func (d *Directory) Close() {
	for _, pool := range []chan *ldap.Conn{d.service, d.users} {
		for {
			select {
			case c := <-pool:
				c.Close()
				continue
			default:
			}
			break
		}
	}
}

// Authenticate implements policy.Directory. A disabled account is refused
// from its entry, before any bind: a bind would count towards its lockout.
func (d *Directory) Authenticate(ctx context.Context, username, password string) (*policy.User, error) {
	if username == "" || password == "" {
		// A bind with a name and an empty password is an "unauthenticated
		// bind", which Active Directory answers with success.
		return nil, policy.ErrBadCredentials
	}
	entry, err := d.findUser(username)
	if err != nil {
		return nil, err
	}
	if err := disabled(entry); err != nil {
		return nil, err
	}
	if d.cfg.RequiredGroup != "" {
		if err := d.checkGroup(entry); err != nil {
			return nil, err
		}
	}
	if err := d.bindUser(entry.DN, password); err != nil {
		return nil, err
	}
	return d.user(entry), nil
}

// Lookup finds a user by login name without a password, for operators'
// tools; the group requirement is not checked.
func (d *Directory) Lookup(_ context.Context, username string) (*policy.User, error) {
	entry, err := d.findUser(username)
	if errors.Is(err, policy.ErrBadCredentials) {
		return nil, fmt.Errorf("%w: %q", policy.ErrNoSuchUser, username)
	}
	if err != nil {
		return nil, err
	}
	return d.user(entry), nil
}

// user is what an entry grants.
func (d *Directory) user(entry *ldap.Entry) *policy.User {
	u := &policy.User{Name: strings.ToLower(entry.DN)}
	seen := map[string]bool{}
	for _, a := range d.cfg.AddressAttributes {
		values := entry.GetEqualFoldAttributeValues(a)
		if strings.EqualFold(a, "proxyAddresses") {
			values = smtpAddresses(values)
		}
		for _, v := range values {
			if !seen[strings.ToLower(v)] {
				seen[strings.ToLower(v)] = true
				u.Addresses = append(u.Addresses, v)
			}
		}
	}
	if d.cfg.ClassAttribute != "" {
		u.Class = entry.GetEqualFoldAttributeValue(d.cfg.ClassAttribute)
	}
	if d.cfg.RecipientRulesAttribute != "" {
		u.Recipients = policy.ParseRecipientRules(entry.GetEqualFoldAttributeValues(d.cfg.RecipientRulesAttribute))
	}
	return u
}

// findUser searches for exactly one entry matching the filter. The
// search references Active Directory returns beside the entries (to its
// other naming contexts, at names that need not resolve) are never
// followed: the user is in the entries or nowhere.
func (d *Directory) findUser(username string) (*ldap.Entry, error) {
	attrs := append([]string{"memberOf", "userAccountControl"}, d.cfg.AddressAttributes...)
	if d.cfg.ClassAttribute != "" {
		attrs = append(attrs, d.cfg.ClassAttribute)
	}
	if d.cfg.RecipientRulesAttribute != "" {
		attrs = append(attrs, d.cfg.RecipientRulesAttribute)
	}
	l := parseLogin(username, strings.Contains(d.cfg.UserFilter, "{user}"))
	base := d.cfg.BaseDN
	var dom *domain
	if l.domain != "" {
		var err error
		if dom, base, err = d.domainBase(l.domain); err != nil {
			return nil, err
		}
	}
	filter := strings.NewReplacer("{username}", ldap.EscapeFilter(l.full), "{user}", ldap.EscapeFilter(l.user)).Replace(d.cfg.UserFilter)
	req := ldap.NewSearchRequest(base, ldap.ScopeWholeSubtree, ldap.NeverDerefAliases,
		2, int(d.cfg.Timeout/time.Second)+1, false, filter, attrs, nil)
	res, err := d.search(req)
	if ldap.IsErrorWithCode(err, ldap.LDAPResultSizeLimitExceeded) || errors.Is(err, ldap.ErrSizeLimitExceeded) {
		return nil, fmt.Errorf("%w: %q matches more than one entry", policy.ErrBadCredentials, username)
	}
	if err != nil {
		return nil, err
	}
	if len(res.Entries) != 1 {
		return nil, fmt.Errorf("%w: %q matches %d entries", policy.ErrBadCredentials, username, len(res.Entries))
	}
	if dom != nil && !inDomain(res.Entries[0].DN, dom) {
		return nil, fmt.Errorf("%w: %q: %s is not in the domain %s", policy.ErrBadCredentials, username, res.Entries[0].DN, dom.netbios)
	}
	return res.Entries[0], nil
}

// checkGroup decides required_group: by memberOf where the server keeps it
// and the user is a direct member; on Active Directory by the matching
// rule that follows nested groups; else by searching the group for the
// user's DN (member or uniqueMember).
func (d *Directory) checkGroup(entry *ldap.Entry) error {
	for _, g := range entry.GetEqualFoldAttributeValues("memberOf") {
		if sameDN(g, d.cfg.RequiredGroup) {
			return nil
		}
	}
	info, err := d.serverInfo()
	if err != nil {
		return err
	}
	if info.ad {
		return d.checkNestedGroup(entry)
	}
	dn := ldap.EscapeFilter(entry.DN)
	req := ldap.NewSearchRequest(d.cfg.RequiredGroup, ldap.ScopeBaseObject, ldap.NeverDerefAliases,
		1, int(d.cfg.Timeout/time.Second)+1, false, fmt.Sprintf("(|(member=%s)(uniqueMember=%s))", dn, dn), []string{"1.1"}, nil)
	res, err := d.search(req)
	if ldap.IsErrorWithCode(err, ldap.LDAPResultNoSuchObject) {
		return errNoGroup(d.cfg.RequiredGroup, err)
	}
	if err != nil {
		return err
	}
	if len(res.Entries) == 0 {
		return fmt.Errorf("%w: %s is not in the required group", policy.ErrBadCredentials, entry.DN)
	}
	return nil
}

// errNoGroup is a configuration error, hence temporary: nobody may relay
// until the admin fixes required_group, but nobody is told "wrong password".
func errNoGroup(group string, err error) error {
	return fmt.Errorf("ldap: required group %q does not exist: %w", group, err)
}

func sameDN(a, b string) bool {
	pa, errA := ldap.ParseDN(a)
	pb, errB := ldap.ParseDN(b)
	if errA != nil || errB != nil {
		return strings.EqualFold(a, b)
	}
	return pa.EqualFold(pb)
}
