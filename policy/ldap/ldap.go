// Package ldap is a policy.Directory over an LDAP server (OpenLDAP, 389-DS,
// Active Directory): search as a service account, then bind as the user.
package ldap

import (
	"context"
	"crypto/tls"
	"crypto/x509"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"net/url"
	"strings"
	"sync/atomic"
	"time"

	"github.com/go-ldap/ldap/v3"

	"github.com/smarthost/smarthost/policy"
)

// Config is the auth.ldap section of the configuration, parsed.
type Config struct {
	URLs              []string // tried in order
	StartTLS          bool     // for ldap:// URLs
	TLSVerify         bool
	RootCAs           *x509.CertPool // nil: the system roots
	BindDN            string
	BindPassword      string
	BaseDN            string
	UserFilter        string // {username} is replaced, escaped
	AddressAttributes []string
	ClassAttribute    string
	// RecipientRulesAttribute holds the user's own recipient rules as
	// "allow:PATTERN" and "deny:PATTERN" values ("": none).
	RecipientRulesAttribute string
	RequiredGroup           string
	Timeout                 time.Duration // each dial, handshake and operation
	PoolSize                int           // idle connections kept per kind; default 4
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
}

var _ policy.Directory = (*Directory)(nil)

// New checks cfg; it does not connect, so the relay starts while LDAP is
// down and recovers by itself when it comes back.
func New(cfg Config, log *slog.Logger) (*Directory, error) {
	if len(cfg.URLs) == 0 || cfg.BaseDN == "" || !strings.Contains(cfg.UserFilter, "{username}") {
		return nil, errors.New("ldap: urls, base_dn and a user_filter with {username} are required")
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

// Authenticate implements policy.Directory.
func (d *Directory) Authenticate(ctx context.Context, username, password string) (*policy.User, error) {
	if username == "" || password == "" {
		// An empty password is an "unauthenticated bind", which some
		// servers answer with success.
		return nil, policy.ErrBadCredentials
	}
	entry, err := d.findUser(username)
	if err != nil {
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
	for _, a := range d.cfg.AddressAttributes {
		u.Addresses = append(u.Addresses, entry.GetAttributeValues(a)...)
	}
	if d.cfg.ClassAttribute != "" {
		u.Class = entry.GetAttributeValue(d.cfg.ClassAttribute)
	}
	if d.cfg.RecipientRulesAttribute != "" {
		u.Recipients = policy.ParseRecipientRules(entry.GetAttributeValues(d.cfg.RecipientRulesAttribute))
	}
	return u
}

// findUser searches for exactly one entry matching the filter.
func (d *Directory) findUser(username string) (*ldap.Entry, error) {
	attrs := append([]string{"memberOf"}, d.cfg.AddressAttributes...)
	if d.cfg.ClassAttribute != "" {
		attrs = append(attrs, d.cfg.ClassAttribute)
	}
	if d.cfg.RecipientRulesAttribute != "" {
		attrs = append(attrs, d.cfg.RecipientRulesAttribute)
	}
	filter := strings.ReplaceAll(d.cfg.UserFilter, "{username}", ldap.EscapeFilter(username))
	req := ldap.NewSearchRequest(d.cfg.BaseDN, ldap.ScopeWholeSubtree, ldap.NeverDerefAliases,
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
	return res.Entries[0], nil
}

// checkGroup decides required_group: by memberOf where the server keeps it,
// else by searching the group for the user's DN (member or uniqueMember).
func (d *Directory) checkGroup(entry *ldap.Entry) error {
	for _, g := range entry.GetAttributeValues("memberOf") {
		if sameDN(g, d.cfg.RequiredGroup) {
			return nil
		}
	}
	dn := ldap.EscapeFilter(entry.DN)
	req := ldap.NewSearchRequest(d.cfg.RequiredGroup, ldap.ScopeBaseObject, ldap.NeverDerefAliases,
		1, int(d.cfg.Timeout/time.Second)+1, false, fmt.Sprintf("(|(member=%s)(uniqueMember=%s))", dn, dn), []string{"1.1"}, nil)
	res, err := d.search(req)
	if ldap.IsErrorWithCode(err, ldap.LDAPResultNoSuchObject) {
		return fmt.Errorf("ldap: required group %q does not exist: %w", d.cfg.RequiredGroup, err)
	}
	if err != nil {
		return err
	}
	if len(res.Entries) == 0 {
		return fmt.Errorf("%w: %s is not in the required group", policy.ErrBadCredentials, entry.DN)
	}
	return nil
}

func sameDN(a, b string) bool {
	pa, errA := ldap.ParseDN(a)
	pb, errB := ldap.ParseDN(b)
	if errA != nil || errB != nil {
		return strings.EqualFold(a, b)
	}
	return pa.EqualFold(pb)
}

// search runs req on a service connection. A pooled connection may have
// died since its last use (server restart), so a failure on one is retried
// once on a fresh connection before it counts as an outage.
func (d *Directory) search(req *ldap.SearchRequest) (*ldap.SearchResult, error) {
	for attempt := 0; ; attempt++ {
		c, pooled, err := d.get(d.service, true)
		if err != nil {
			return nil, err
		}
		start := time.Now()
		res, err := c.Search(req)
		if err == nil || isResult(err) {
			d.put(d.service, c)
			return res, err
		}
		c.Close()
		if !d.retry(pooled, attempt, start) {
			return nil, fmt.Errorf("ldap search: %w", err)
		}
	}
}

// retry says whether an operation that failed without an LDAP result is
// tried again on a new connection: once, if it ran on a pooled connection
// (which the server may have closed while it sat idle) and failed fast. One
// that spent half the timeout met a server that hangs, and a second try
// would make the client wait twice the timeout for its 454.
func (d *Directory) retry(pooled bool, attempt int, start time.Time) bool {
	return pooled && attempt == 0 && time.Since(start) < d.cfg.Timeout/2
}

func (d *Directory) bindUser(dn, password string) error {
	for attempt := 0; ; attempt++ {
		c, pooled, err := d.get(d.users, false)
		if err != nil {
			return err
		}
		start := time.Now()
		err = c.Bind(dn, password)
		switch {
		case err == nil:
			d.put(d.users, c)
			return nil
		case ldap.IsErrorWithCode(err, ldap.LDAPResultInvalidCredentials):
			d.put(d.users, c)
			return fmt.Errorf("%w: bind as %s", policy.ErrBadCredentials, dn)
		case isResult(err):
			// The server answered, but not "yes" and not "wrong password"
			// (unwilling to perform, busy, ...): we cannot decide.
			d.put(d.users, c)
			return fmt.Errorf("ldap bind as %s: %w", dn, err)
		}
		c.Close()
		if !d.retry(pooled, attempt, start) {
			return fmt.Errorf("ldap bind: %w", err)
		}
	}
}

// isResult reports whether err is an answer from the server rather than a
// broken or timed-out connection.
func isResult(err error) bool {
	var le *ldap.Error
	return errors.As(err, &le) && le.ResultCode != ldap.ErrorNetwork && le.ResultCode < 200
}

func (d *Directory) get(pool chan *ldap.Conn, service bool) (c *ldap.Conn, pooled bool, err error) {
	for {
		select {
		case c := <-pool:
			if c.IsClosing() {
				continue
			}
			return c, true, nil
		default:
			c, err := d.dial(service)
			return c, false, err
		}
	}
}

func (d *Directory) put(pool chan *ldap.Conn, c *ldap.Conn) {
	select {
	case pool <- c:
	default:
		c.Close()
	}
}

// dial connects to the first URL that answers, with TLS as configured and,
// for service connections, bound as the service account.
func (d *Directory) dial(service bool) (*ldap.Conn, error) {
	var errs []error
	for _, u := range d.cfg.URLs {
		c, err := d.dialURL(u, service)
		if err == nil {
			return c, nil
		}
		d.log.Warn("ldap: server unavailable", "url", u, "err", err)
		errs = append(errs, fmt.Errorf("%s: %w", u, err))
	}
	return nil, fmt.Errorf("ldap: no server available: %w", errors.Join(errs...))
}

func (d *Directory) dialURL(raw string, service bool) (*ldap.Conn, error) {
	u, err := url.Parse(raw)
	if err != nil {
		return nil, err
	}
	host := u.Host
	if u.Port() == "" {
		port := "389"
		if u.Scheme == "ldaps" {
			port = "636"
		}
		host = net.JoinHostPort(u.Hostname(), port)
	}
	tc := &tls.Config{ServerName: u.Hostname(), RootCAs: d.cfg.RootCAs, InsecureSkipVerify: !d.cfg.TLSVerify, MinVersion: tls.VersionTLS12}
	nc, err := net.DialTimeout("tcp", host, d.cfg.Timeout)
	if err != nil {
		return nil, err
	}
	d.dials.Add(1)
	// One deadline over the whole setup: go-ldap's StartTLS handshake has
	// none of its own.
	nc.SetDeadline(time.Now().Add(d.cfg.Timeout))
	isTLS := u.Scheme == "ldaps"
	if isTLS {
		tlsConn := tls.Client(nc, tc)
		if err := tlsConn.Handshake(); err != nil {
			nc.Close()
			return nil, fmt.Errorf("TLS: %w", err)
		}
		nc = tlsConn
	}
	c := ldap.NewConn(nc, isTLS)
	c.Start()
	c.SetTimeout(d.cfg.Timeout)
	if !isTLS && d.cfg.StartTLS {
		if err := c.StartTLS(tc); err != nil {
			c.Close()
			return nil, fmt.Errorf("StartTLS: %w", err)
		}
	}
	if service && d.cfg.BindDN != "" {
		if err := c.Bind(d.cfg.BindDN, d.cfg.BindPassword); err != nil {
			c.Close()
			return nil, fmt.Errorf("service bind as %s: %w", d.cfg.BindDN, err)
		}
	}
	nc.SetDeadline(time.Time{})
	return c, nil
}

// Ping checks that a server answers a search as the service account, on a
// pooled connection, for readiness checks.
func (d *Directory) Ping(context.Context) error {
	req := ldap.NewSearchRequest("", ldap.ScopeBaseObject, ldap.NeverDerefAliases, 1, int(d.cfg.Timeout/time.Second)+1,
		false, "(objectClass=*)", []string{"1.1"}, nil)
	_, err := d.search(req)
	return err
}

// ProbeResult is one server's answer to Probe.
type ProbeResult struct {
	URL string
	Err error
}

// Probe connects to every URL and binds as the service account, for
// `check-config --probe`.
func (d *Directory) Probe() []ProbeResult {
	var out []ProbeResult
	for _, u := range d.cfg.URLs {
		c, err := d.dialURL(u, true)
		if err == nil {
			c.Close()
		}
		out = append(out, ProbeResult{u, err})
	}
	return out
}
