package daemon

import (
	"crypto/tls"
	"crypto/x509"
	"errors"
	"fmt"
	"log/slog"
	"maps"
	"os"
	"regexp"
	"slices"
	"strings"
	"time"

	"github.com/smarthost/smarthost/configs"
	"github.com/smarthost/smarthost/dkim"
	"github.com/smarthost/smarthost/policy"
	"github.com/smarthost/smarthost/policy/ldap"
	"github.com/smarthost/smarthost/relay"
	"github.com/smarthost/smarthost/relay/headers"
	"github.com/smarthost/smarthost/relay/history"
	"github.com/smarthost/smarthost/relay/queue"
	"github.com/smarthost/smarthost/relay/smtpd"
	"github.com/smarthost/smarthost/relay/upstream"
	"github.com/smarthost/smarthost/relay/webhook"
)

// Assembly is a configuration translated into the Config structs of each
// package, with files (certificates, users, keys) loaded.
type Assembly struct {
	file     *configs.File
	smtp     smtpd.Config        // the SMTP listeners, without TLS and Hooks
	backend  relay.BackendConfig // without Metrics and Log
	deps     relay.Deps          // without Queue
	queue    queue.Config
	upstream upstream.Config // without Metrics and Shaping's Shaper
	cert     *tls.Certificate
	tickets  []byte          // tls.session_ticket_key_file's secret; nil: none
	ldap     *ldap.Directory // nil unless auth.backend is ldap
	lookup   lookupFunc      // finds a user by name, for the limits view
	warnings []string        // worth saying, not worth refusing the configuration for
	// handoff is the peers of queue.handoff as a delivery configuration
	// (nil: none configured).
	handoff *upstream.Config
	pprof   bool   // metrics.pprof
	token   string // metrics.token_file's
	// history and webhooks: nil when off.
	history  *history.Config
	webhooks *webhook.Config
}

// assemble translates f. With create, keys marked create_if_missing are
// made; the commands that only read (check-config) pass false so that they
// never write anything.
//
// timing, when not nil, times the user directory's calls.
func assemble(f *configs.File, create bool, log *slog.Logger, timing *backendMetrics) (*Assembly, configs.Problems) {
	var probs configs.Problems
	problem := func(path, format string, args ...any) { probs = append(probs, f.Problem(path, format, args...)) }
	a := &Assembly{file: f}
	if assembleSMTP(f, a) {
		assembleTLS(f, a, create, log, problem)
	}
	dir := assembleDirectory(f, a, problem, log, timing)
	a.deps.Policy = policy.New(policyConfig(f), dir)

	keys, kprobs, kwarn := loadDKIM(f, create, log)
	probs = append(probs, kprobs...)
	a.warnings = append(a.warnings, kwarn...)
	a.deps.Signer = dkim.New(dkim.Config{Domains: keys, Oversign: f.DKIM.Oversign, Subdomains: f.DKIM.SignSubdomains})
	a.deps.RejectNoKey = f.DKIM.OnMissingKey == "reject"

	a.backend.AllowInsecureAuth = f.Auth.AllowInsecureAuth
	a.deps.Received = f.Headers.Received
	a.deps.Headers = assembleHeaders(f.Headers)
	assembleDelivery(f, a, problem)
	assembleHistory(f, a)
	a.pprof = f.Metrics.PProf
	if f.Metrics.TokenFile != "" {
		if b, err := os.ReadFile(f.Metrics.TokenFile); err == nil {
			a.token = strings.TrimSpace(string(b))
		}
	} else if f.Metrics.Listen != "" && !loopback(f.Metrics.Listen) {
		a.warnings = append(a.warnings, f.Problem("metrics.listen", "not a loopback address and no metrics.token_file: /v1/ and /debug/pprof/ answer 403 there").String())
	}
	return a, probs
}

// assembleSMTP translates the listeners and the limits of a session; it
// says whether a listener needs TLS.
func assembleSMTP(f *configs.File, a *Assembly) (needTLS bool) {
	for _, l := range f.Listeners {
		a.smtp.Listeners = append(a.smtp.Listeners, smtpd.Listener{Address: l.Address, Mode: l.Mode, ProxyProtocol: l.ProxyProtocol})
		needTLS = needTLS || l.Mode != smtpd.ModePlain
	}
	a.smtp.ProxyNetworks = f.Policy.ProxyNetworks
	a.smtp.Domain = f.Hostname
	a.smtp.Limits = smtpd.Limits{
		MaxRecipients:   f.Policy.MaxRecipients,
		MaxMessageBytes: int64(f.Policy.MaxMessageSize),
		NormalizeBareLF: f.Policy.BareNewline == "normalize",
		WrapLongLines:   f.Policy.LongLines == "wrap",
	}
	a.smtp.ConnectionsPerIP = f.RateLimit.ConnectionsPerIP
	a.smtp.MaxConnections = f.RateLimit.MaxConnections
	return needTLS
}

// assembleTLS loads the certificate (with create, a self-signed one is made
// where the configuration asks) and the session ticket secret.
func assembleTLS(f *configs.File, a *Assembly, create bool, log *slog.Logger, problem func(path, format string, args ...any)) {
	cert, err := loadCert(f, create, log)
	if err != nil {
		problem("tls", "%v", err)
	}
	a.cert = cert
	if a.tickets, err = loadTicketSecret(f.TLS.SessionTicketKeyFile); err != nil {
		problem("tls.session_ticket_key_file", "%v", err)
	}
}

// policyConfig translates who may relay as whom.
func policyConfig(f *configs.File) policy.Config {
	pc := policy.Config{
		TrustedSenders:          f.Policy.TrustedSenders,
		EnforceHeaderFrom:       *f.Policy.EnforceHeaderFrom,
		AllowedRecipientDomains: f.Policy.AllowedRecipientDomains,
	}
	assembleRules(f, &pc)
	for name, c := range f.RateLimit.Classes {
		if c.RelayPeer {
			pc.PeerClasses = append(pc.PeerClasses, name)
		}
	}
	for _, c := range f.Policy.TrustedNetworks {
		if n, err := configs.ParsePrefix(c); err == nil {
			pc.TrustedNetworks = append(pc.TrustedNetworks, n)
		}
	}
	return pc
}

// loadUsers reads the users file, or the text the program carries instead.
func loadUsers(s configs.Static) (*policy.Static, error) {
	if s.UsersText != nil {
		return policy.ParseStatic(s.UsersText)
	}
	return policy.LoadStatic(s.UsersFile)
}

// assembleDirectory makes the user directory auth.backend names, behind
// the login cache; timing, when not nil, times its calls.
func assembleDirectory(f *configs.File, a *Assembly, problem func(path, format string, args ...any), log *slog.Logger, timing *backendMetrics) policy.Directory {
	var dir policy.Directory
	switch f.Auth.Backend {
	case "static":
		s, err := loadUsers(f.Auth.Static)
		if err != nil {
			problem("auth.static.users_file", "%v", err)
		} else {
			var d policy.Directory = s
			if timing != nil {
				d = timedDirectory{s, "static", timing}
			}
			dir = policy.NewCache(d, time.Duration(f.Auth.Static.CacheTTL), nil)
			a.lookup = s.Lookup
		}
	case "ldap":
		l := f.Auth.LDAP
		lc := ldap.Config{
			URLs: l.URLs, StartTLS: l.StartTLS == nil || *l.StartTLS, TLSVerify: l.TLSVerify == nil || *l.TLSVerify,
			BindDN: l.BindDN, BindPassword: l.BindPassword, BaseDN: l.BaseDN, UserFilter: l.UserFilter,
			AddressAttributes: l.AddressAttributes, ClassAttribute: l.ClassAttribute, RequiredGroup: l.RequiredGroup,
			RecipientRulesAttribute: l.RecipientRulesAttribute, ActiveDirectory: l.Preset == "ad",
			Timeout: time.Duration(l.Timeout),
		}
		if l.CAFile != "" {
			pool, err := loadCA(l.CAFile)
			if err != nil {
				problem("auth.ldap.ca_file", "%v", err)
			}
			lc.RootCAs = pool
		}
		d, err := ldap.New(lc, log)
		if err != nil {
			problem("auth.ldap", "%v", err)
		} else {
			a.ldap = d
			a.lookup = d.Lookup
			var timed policy.Directory = d
			if timing != nil {
				timed = timedDirectory{d, "ldap", timing}
			}
			dir = policy.NewCache(timed, time.Duration(l.CacheTTL), nil)
		}
	}
	return dir
}

// assembleDelivery translates upstreams, routes and queue.
func assembleDelivery(f *configs.File, a *Assembly, problem func(path, format string, args ...any)) {
	a.upstream.Hostname = f.Hostname
	for i, u := range f.Upstreams {
		up := assembleUpstream(u, fmt.Sprintf("upstreams[%d]", i), problem)
		up.Budget, up.Throttle = upstreamShaping(u, f.Policy.MaxRecipients)
		a.upstream.Upstreams = append(a.upstream.Upstreams, up)
	}
	for _, r := range f.Routes {
		a.upstream.Routes = append(a.upstream.Routes, upstream.Route{
			RecipientDomains: r.Match.RecipientDomains, SenderDomains: r.Match.SenderDomains, Classes: r.Match.Classes, Upstreams: r.Upstreams,
			Priority: r.Priority,
		})
	}
	a.upstream.Shaping = &upstream.Shaping{Classes: classPriorities(f)}

	if names := f.Queue.Handoff.Upstreams; len(names) > 0 {
		h := upstream.Config{Hostname: f.Hostname}
		for _, n := range names {
			for _, u := range a.upstream.Upstreams {
				if u.Name == n {
					h.Upstreams = append(h.Upstreams, u)
				}
			}
		}
		a.handoff = &h
	}
	a.queue = queue.Config{Dir: f.Queue.Dir, Workers: f.Queue.Workers, MaxAge: time.Duration(f.Queue.MaxAge),
		DelayWarning: time.Duration(f.Queue.DelayWarning), Hostname: f.Hostname}
	for _, d := range f.Queue.Retry {
		a.queue.Retry = append(a.queue.Retry, time.Duration(d))
	}
}

func loadCA(path string) (*x509.CertPool, error) {
	b, err := os.ReadFile(path)
	if err != nil {
		return nil, err
	}
	pool := x509.NewCertPool()
	if !pool.AppendCertsFromPEM(b) {
		return nil, fmt.Errorf("%s holds no PEM certificate", path)
	}
	return pool, nil
}

// loadDKIM loads every configured key, making missing ones where allowed.
func loadDKIM(f *configs.File, create bool, log *slog.Logger) (map[string][]dkim.Key, configs.Problems, []string) {
	var probs configs.Problems
	var warnings []string
	out := map[string][]dkim.Key{}
	for _, d := range slices.Sorted(maps.Keys(f.DKIM.Domains)) {
		for i, k := range f.DKIM.Domains[d] {
			path := fmt.Sprintf("dkim.domains.%s[%d].key_file", d, i)
			signer, err := dkim.LoadKey(k.KeyFile)
			if err != nil && errors.Is(err, os.ErrNotExist) && k.CreateIfMissing {
				if !create {
					continue // serve will make it
				}
				if signer, err = dkim.MakeKey(k.KeyFile, k.Algo); err == nil {
					name, value, _ := dkim.DNSRecord(d, k.Selector, signer.Public())
					log.Warn("created a DKIM key; publish its DNS record", "file", k.KeyFile, "name", name, "txt", value)
				}
			}
			if err != nil {
				probs = append(probs, f.Problem(path, "%v", err))
				continue
			}
			key := dkim.Key{Selector: k.Selector, Signer: signer}
			// A key whose signatures do not verify would have every message
			// it signs fail at the receivers: refuse it before it signs any.
			if err := dkim.SelfCheck(d, key); err != nil {
				probs = append(probs, f.Problem(path, "%v; the key is refused", err))
				continue
			}
			if w := dkim.KeyWarning(signer); w != "" {
				warnings = append(warnings, f.Problem(path, "%s", w).String())
			}
			out[d] = append(out[d], key)
		}
	}
	return out, probs, warnings
}

// assembleUpstream translates one upstream, loading its CA, client
// certificate and token source; path is its place in the file.
func assembleUpstream(u configs.Upstream, path string, problem func(path, format string, args ...any)) upstream.Upstream {
	up := upstream.Upstream{
		Name: u.Name, URL: u.URL, TLS: u.TLS, TLSVerify: u.TLSVerify == nil || *u.TLSVerify,
		Username: u.Username, Password: u.Password, AuthMechanism: u.AuthMechanism,
		MaxConnections: u.MaxConnections, Timeout: time.Duration(u.Timeout),
		ConnectTimeout: time.Duration(u.ConnectTimeout), Weight: u.Weight, DisableExtensions: u.DisableExtensions,
	}
	if u.CAFile != "" {
		pool, err := loadCA(u.CAFile)
		if err != nil {
			problem(path+".ca_file", "%v", err)
		}
		up.RootCAs = pool
	}
	if u.ClientCertFile != "" && u.ClientKeyFile != "" {
		cert, err := tls.LoadX509KeyPair(u.ClientCertFile, u.ClientKeyFile)
		if err != nil {
			problem(path+".client_cert_file", "%v", err)
		} else {
			up.ClientCert = &cert
		}
	}
	if o := u.OAuth2; o != nil {
		if o.TokenFile != "" {
			up.Tokens = upstream.NewTokenFile(o.TokenFile)
		} else {
			up.Tokens = upstream.NewClientCredentials(o.TokenURL, o.ClientID, o.ClientSecret, o.Scopes, nil)
		}
	}
	return up
}

// assembleRules translates the rewrite, recipient and archive rules.
func assembleRules(f *configs.File, pc *policy.Config) {
	match := func(m configs.Match) policy.Match {
		return policy.Match{Users: m.Users, Classes: m.Classes, SenderDomains: m.SenderDomains}
	}
	for _, r := range f.Policy.Rewrite {
		pc.Rewrite = append(pc.Rewrite, policy.Rewrite{Match: match(r.Match), Sender: r.Sender, HeaderFrom: r.HeaderFrom, ReplyTo: r.ReplyTo})
	}
	if len(f.Policy.Recipients) > 0 {
		pc.Recipients = map[string]policy.RecipientRules{}
		for class, r := range f.Policy.Recipients {
			pc.Recipients[class] = policy.RecipientRules{Allow: r.Allow, Deny: r.Deny}
		}
	}
	for _, a := range f.Archive {
		pc.Archive = append(pc.Archive, policy.Archive{Match: match(a.Match), Address: a.Address, Upstreams: a.Upstreams})
	}
}

// assembleHeaders translates the header privacy rules (validate.go reports
// a problem expression).
func assembleHeaders(h configs.Headers) *headers.Rules {
	rule := func(name, matching, with string) (headers.Rule, bool) {
		r := headers.Rule{Name: name, With: with}
		if matching != "" {
			re, err := regexp.Compile(matching)
			if err != nil {
				return r, false
			}
			r.Matching = re
		}
		return r, true
	}
	r := &headers.Rules{}
	for _, c := range h.Remove {
		if hr, ok := rule(c.Name, c.Matching, ""); ok {
			r.Remove = append(r.Remove, hr)
		}
	}
	for _, c := range h.Replace {
		if hr, ok := rule(c.Name, c.Matching, c.With); ok {
			r.Replace = append(r.Replace, hr)
		}
	}
	if r.Empty() {
		return nil
	}
	return r
}
