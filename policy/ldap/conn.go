package ldap

// The connections: two small pools, dialing with failover, and the retry
// of an operation that met a connection the server had closed.

import (
	"context"
	"crypto/tls"
	"errors"
	"fmt"
	"net"
	"net/url"
	"time"

	"github.com/go-ldap/ldap/v3"
)

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
		d.binds.Add(1)
		err = c.Bind(dn, password)
		switch {
		case err == nil:
			d.put(d.users, c)
			return nil
		case ldap.IsErrorWithCode(err, ldap.LDAPResultInvalidCredentials):
			// The answer, whatever the account's state: never asked of
			// the next server, where it would count once more towards a
			// lockout.
			d.put(d.users, c)
			return bindRefused(dn, err)
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
