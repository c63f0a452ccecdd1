package configs

import (
	"fmt"
	"net"
	"net/netip"
	"net/url"
	"regexp"
	"strings"
	"time"
)

// checker reports problems with the file's lines.
type checker struct {
	f   *File
	add func(string, int, string)
}

func (c checker) bad(path, format string, args ...any) {
	c.add(path, c.f.lineOf(path), fmt.Sprintf(format, args...))
}

func (c checker) oneOf(path, v string, allowed ...string) {
	for _, a := range allowed {
		if v == a {
			return
		}
	}
	c.bad(path, "%q is not one of %s", v, strings.Join(allowed, ", "))
}

// validate checks every value that can be checked without other packages,
// section by section.
func validate(f *File, add func(string, int, string)) {
	c := checker{f, add}
	c.listeners()
	c.auth()
	c.policy()
	c.rateLimit()
	c.dkim()
	c.upstreams()
	c.shaping()
	c.rewriteAndRules()
	c.rest()
	c.webhooks()
}

// webhooks checks history and webhooks.
func (c checker) webhooks() {
	f, bad := c.f, c.bad
	if f.History.MaxAge < 0 {
		bad("history.max_age", "must be more than zero")
	}
	if f.History.MaxSize < 0 {
		bad("history.max_size", "must be more than zero")
	}
	for i, w := range f.Webhooks {
		p := fmt.Sprintf("webhooks[%d]", i)
		if u, err := url.Parse(w.URL); err != nil || (u.Scheme != "http" && u.Scheme != "https") || u.Host == "" {
			bad(p+".url", "bad URL %q: use http:// or https://", w.URL)
		}
		for j, e := range w.Events {
			c.oneOf(fmt.Sprintf("%s.events[%d]", p, j), e, "delivered", "deferred", "bounced", "delayed")
		}
		if len(w.Secret) < 16 {
			bad(p+".secret_file", "a secret of 16 characters or more is needed to sign the events")
		}
		if w.MaxQueued < 0 {
			bad(p+".max_queued", "must be positive")
		}
	}
}

func (c checker) listeners() {
	f, bad, oneOf := c.f, c.bad, c.oneOf
	if len(f.Listeners) == 0 {
		bad("listeners", "at least one listener is needed")
	}
	needTLS := false
	for i, l := range f.Listeners {
		p := fmt.Sprintf("listeners[%d]", i)
		if _, _, err := net.SplitHostPort(l.Address); err != nil {
			bad(p+".address", "bad address %q: use host:port", l.Address)
		}
		oneOf(p+".mode", l.Mode, "starttls", "implicit", "plain")
		needTLS = needTLS || l.Mode != "plain"
		if l.ProxyProtocol && len(f.Policy.ProxyNetworks) == 0 {
			bad(p+".proxy_protocol", "needs policy.proxy_networks: PROXY headers are only read from those")
		}
	}
	if needTLS && !f.TLS.SelfSigned && (f.TLS.CertFile == "" || f.TLS.KeyFile == "") {
		bad("tls", "a starttls or implicit listener needs tls.cert_file and tls.key_file, or tls.self_signed: true")
	}
	oneOf("tls.min_version", f.TLS.MinVersion, "1.2", "1.3")
}

func (c checker) auth() {
	f, bad, oneOf := c.f, c.bad, c.oneOf
	oneOf("auth.backend", f.Auth.Backend, "static", "ldap")
	switch f.Auth.Backend {
	case "static":
		if f.Auth.Static.UsersFile == "" {
			bad("auth.static.users_file", "is required with auth.backend: static")
		}
	case "ldap":
		l := f.Auth.LDAP
		if len(l.URLs) == 0 {
			bad("auth.ldap.urls", "at least one LDAP URL is needed")
		}
		for i, u := range l.URLs {
			if pu, err := url.Parse(u); err != nil || (pu.Scheme != "ldap" && pu.Scheme != "ldaps") || pu.Host == "" {
				bad(fmt.Sprintf("auth.ldap.urls[%d]", i), "bad LDAP URL %q: use ldap://host:389 or ldaps://host:636", u)
			}
		}
		if l.BaseDN == "" {
			bad("auth.ldap.base_dn", "is required with auth.backend: ldap")
		}
		oneOf("auth.ldap.preset", l.Preset, "", "ad")
		if !strings.Contains(l.UserFilter, "{username}") && !strings.Contains(l.UserFilter, "{user}") {
			bad("auth.ldap.user_filter", "must contain {username} (the login as typed) or {user} (without a DOMAIN\\ prefix)")
		}
	}

}

func (c checker) policy() {
	f, bad, oneOf := c.f, c.bad, c.oneOf
	prefixes := func(path string, cidrs []string) {
		for i, c := range cidrs {
			if _, err := ParsePrefix(c); err != nil {
				bad(fmt.Sprintf("%s[%d]", path, i), "%v", err)
			}
		}
	}
	prefixes("policy.trusted_networks", f.Policy.TrustedNetworks)
	prefixes("policy.proxy_networks", f.Policy.ProxyNetworks)
	if len(f.Policy.TrustedNetworks) > 0 && len(f.Policy.TrustedSenders) == 0 {
		bad("policy.trusted_senders", "trusted_networks relay without AUTH only as these senders; list at least one")
	}
	for i, s := range f.Policy.TrustedSenders {
		if !strings.Contains(s, "@") {
			bad(fmt.Sprintf("policy.trusted_senders[%d]", i), "%q is not an address or *@domain pattern", s)
		}
	}
	if f.Policy.MaxRecipients < 0 {
		bad("policy.max_recipients", "must be positive")
	}
	oneOf("policy.bare_newline", f.Policy.BareNewline, "normalize", "reject")
	oneOf("policy.long_lines", f.Policy.LongLines, "wrap", "reject")
	oneOf("headers.received", f.Headers.Received, "full", "anonymous")

}

func (c checker) rateLimit() {
	f, bad, oneOf := c.f, c.bad, c.oneOf
	oneOf("ratelimit.backend", f.RateLimit.Backend, "redis", "memory")
	oneOf("ratelimit.on_backend_error", f.RateLimit.OnBackendError, "tempfail", "allow")
	if f.RateLimit.ConnectionsPerIP < 0 {
		bad("ratelimit.connections_per_ip", "must be positive")
	}
	for i, a := range f.RateLimit.Redis.Addrs {
		if _, _, err := net.SplitHostPort(a); err != nil {
			bad(fmt.Sprintf("ratelimit.redis.addrs[%d]", i), "bad address %q: use host:port", a)
		}
	}

}

func (c checker) dkim() {
	f, bad, oneOf := c.f, c.bad, c.oneOf
	oneOf("dkim.on_missing_key", f.DKIM.OnMissingKey, "send_unsigned", "reject")
	for d, keys := range f.DKIM.Domains {
		for i, k := range keys {
			p := fmt.Sprintf("dkim.domains.%s[%d]", d, i)
			if k.Selector == "" {
				bad(p+".selector", "is required")
			}
			if k.KeyFile == "" {
				bad(p+".key_file", "is required")
			}
			if k.Algo != "" {
				oneOf(p+".algo", k.Algo, "rsa2048", "rsa4096", "ed25519")
			}
		}
	}
	for i, d := range f.DKIM.SignSubdomains {
		if _, ok := f.DKIM.Domains[d]; !ok {
			bad(fmt.Sprintf("dkim.sign_subdomains[%d]", i), "%q has no keys under dkim.domains", d)
		}
	}
}

// upstreams checks upstreams and the routes that name them.
func (c checker) upstreams() {
	f, bad, oneOf := c.f, c.bad, c.oneOf
	names := map[string]bool{}
	if len(f.Upstreams) == 0 {
		bad("upstreams", "at least one upstream is needed")
	}
	for i, u := range f.Upstreams {
		p := fmt.Sprintf("upstreams[%d]", i)
		if u.Name == "" {
			bad(p+".name", "is required")
		} else if names[u.Name] {
			bad(p+".name", "upstream %q is defined twice", u.Name)
		}
		names[u.Name] = true
		c.upstreamURL(p+".url", u.URL)
		oneOf(p+".tls", u.TLS, "required", "opportunistic", "none")
		if u.Weight < 0 {
			bad(p+".weight", "must be positive")
		}
		if u.Timeout < 0 {
			bad(p+".timeout", "must be positive")
		}
		if u.ConnectTimeout < 0 || u.ConnectTimeout > u.Timeout {
			bad(p+".connect_timeout", "must be positive and at most timeout (%s)", time.Duration(u.Timeout))
		}
		c.upstreamAuth(p, u)
	}
	c.upstreamNames(names)
}

// upstreamURL checks an upstream's url: smtp or smtps with a host and a
// port, or a file:// outbox.
func (c checker) upstreamURL(p, raw string) {
	pu, err := url.Parse(raw)
	switch {
	case err != nil:
		c.bad(p, "bad URL %q", raw)
	case pu.Scheme == "file":
		if pu.Path == "" && pu.Opaque == "" {
			c.bad(p, "file:// needs a directory, e.g. file:///var/spool/outbox")
		}
	case pu.Scheme == "smtp" || pu.Scheme == "smtps":
		if pu.Hostname() == "" || pu.Port() == "" {
			c.bad(p, "%q needs a host and a port, e.g. smtp://smtp.example.com:587", raw)
		}
	default:
		c.bad(p, "scheme of %q must be smtp, smtps or file", raw)
	}
}

// upstreamNames checks that the archive copies, the hand-off and the
// routes name upstreams that names holds.
func (c checker) upstreamNames(names map[string]bool) {
	f, bad := c.f, c.bad
	for i, a := range f.Archive {
		p := fmt.Sprintf("archive[%d]", i)
		if !strings.Contains(a.Address, "@") {
			bad(p+".address", "%q is not an address", a.Address)
		}
		if len(a.Upstreams) == 0 {
			bad(p+".upstreams", "name the upstreams the copies go through")
		}
		for j, n := range a.Upstreams {
			if !names[n] {
				bad(fmt.Sprintf("%s.upstreams[%d]", p, j), "no upstream is named %q", n)
			}
		}
	}
	for i, n := range f.Queue.Handoff.Upstreams {
		if !names[n] {
			bad(fmt.Sprintf("queue.handoff.upstreams[%d]", i), "no upstream is named %q", n)
		}
	}
	for i, r := range f.Routes {
		p := fmt.Sprintf("routes[%d]", i)
		if len(r.Upstreams) == 0 {
			bad(p+".upstreams", "a route needs at least one upstream")
		}
		for j, n := range r.Upstreams {
			if !names[n] {
				bad(fmt.Sprintf("%s.upstreams[%d]", p, j), "no upstream is named %q", n)
			}
		}
	}
}

// upstreamAuth checks how an upstream is logged in to.
func (c checker) upstreamAuth(p string, u Upstream) {
	bad := c.bad
	c.oneOf(p+".auth_mechanism", u.AuthMechanism, "auto", "plain", "login", "xoauth2", "oauthbearer")
	for i, e := range u.DisableExtensions {
		c.oneOf(fmt.Sprintf("%s.disable_extensions[%d]", p, i), strings.ToLower(e), "pipelining", "chunking", "8bitmime", "dsn", "size", "smtputf8")
	}
	if o := u.OAuth2; o != nil {
		switch {
		case o.TokenFile != "" && (o.TokenURL != "" || o.ClientID != ""):
			bad(p+".oauth2", "give either token_file or token_url with client_id and client_secret, not both")
		case o.TokenFile == "" && (o.TokenURL == "" || o.ClientID == "" || o.ClientSecret == ""):
			bad(p+".oauth2", "needs token_url, client_id and client_secret (or client_secret_file), or token_file")
		}
		if o.TokenURL != "" {
			if pu, err := url.Parse(o.TokenURL); err != nil || (pu.Scheme != "https" && pu.Scheme != "http") || pu.Host == "" {
				bad(p+".oauth2.token_url", "bad URL %q", o.TokenURL)
			}
		}
		if u.Username == "" {
			bad(p+".username", "is required with oauth2: XOAUTH2 and OAUTHBEARER name the user")
		}
	}
	switch u.AuthMechanism {
	case "xoauth2", "oauthbearer":
		if u.OAuth2 == nil {
			bad(p+".oauth2", "is required with auth_mechanism: %s", u.AuthMechanism)
		}
	case "plain", "login":
		if u.Username == "" || u.Password == "" {
			bad(p+".password", "auth_mechanism: %s needs username and password", u.AuthMechanism)
		}
	}
	if u.Username != "" && u.Password == "" && u.OAuth2 == nil {
		bad(p+".password", "is required with a username (or configure oauth2)")
	}
	if (u.ClientCertFile == "") != (u.ClientKeyFile == "") {
		bad(p+".client_key_file", "client_cert_file and client_key_file go together")
	}
}

// rewriteAndRules checks policy.rewrite, policy.recipients and the header
// rules.
func (c checker) rewriteAndRules() {
	f, bad := c.f, c.bad
	for i, r := range f.Policy.Rewrite {
		p := fmt.Sprintf("policy.rewrite[%d]", i)
		if d, masq := strings.CutPrefix(r.Sender, "*@"); masq {
			if d == "" || strings.ContainsAny(d, "*@ <>") {
				bad(p+".sender", "%q: masquerading takes *@domain", r.Sender)
			}
		} else if !strings.Contains(r.Sender, "@") || strings.Contains(r.Sender, "*") {
			bad(p+".sender", "%q is not an address, nor *@domain", r.Sender)
		}
	}
	for class, r := range f.Policy.Recipients {
		for j, pat := range append(append([]string{}, r.Allow...), r.Deny...) {
			if pat == "" || strings.ContainsAny(pat, " <>") {
				bad(fmt.Sprintf("policy.recipients.%s", class), "pattern %d, %q: use an address, *@domain or a domain", j, pat)
			}
		}
	}
	check := func(p, name, matching string) {
		if name == "" || strings.ContainsAny(name, " :") {
			bad(p+".name", "a header field name is required, such as X-Originating-IP")
		}
		if _, err := regexp.Compile(matching); err != nil {
			bad(p+".matching", "bad regular expression: %v", err)
		}
	}
	for i, h := range f.Headers.Remove {
		check(fmt.Sprintf("headers.remove[%d]", i), h.Name, h.Matching)
	}
	for i, h := range f.Headers.Replace {
		check(fmt.Sprintf("headers.replace[%d]", i), h.Name, h.Matching)
	}
}

// rest checks queue, metrics and log.
func (c checker) rest() {
	f, bad, oneOf := c.f, c.bad, c.oneOf
	if f.Queue.Workers < 0 {
		bad("queue.workers", "must be positive")
	}
	for i, d := range f.Queue.Retry {
		if d <= 0 {
			bad(fmt.Sprintf("queue.retry[%d]", i), "must be more than zero")
		}
	}
	if f.Metrics.Listen != "" {
		if _, _, err := net.SplitHostPort(f.Metrics.Listen); err != nil {
			bad("metrics.listen", "bad address %q: use host:port", f.Metrics.Listen)
		}
	}
	if f.Metrics.TokenFile != "" {
		if b, err := f.read(f.Metrics.TokenFile); err != nil {
			bad("metrics.token_file", "cannot read the token: %v", err)
		} else if len(strings.TrimSpace(string(b))) < 16 {
			bad("metrics.token_file", "the token is shorter than 16 characters")
		}
	}
	oneOf("log.format", f.Log.Format, "json", "text")
	oneOf("log.level", f.Log.Level, "debug", "info", "warn", "error")
}

// ParsePrefix accepts a CIDR ("10.0.0.0/8") or a single address.
func ParsePrefix(s string) (netip.Prefix, error) {
	if p, err := netip.ParsePrefix(s); err == nil {
		return p.Masked(), nil
	}
	if a, err := netip.ParseAddr(s); err == nil {
		return netip.PrefixFrom(a.Unmap(), a.Unmap().BitLen()), nil
	}
	return netip.Prefix{}, fmt.Errorf("bad CIDR %q: use a network such as 10.0.0.0/8 or an address", s)
}

// enhancedPattern is a throttle reply's enhanced code: x.y.z or x.y.a-b.
var enhancedPattern = regexp.MustCompile(`^[45]\.[0-9]{1,3}\.[0-9]{1,3}(-[0-9]{1,3})?$`)

// shaping checks the upstreams' limits and throttle replies and the
// priorities of classes and routes.
func (c checker) shaping() {
	f, bad, oneOf := c.f, c.bad, c.oneOf
	for i, u := range f.Upstreams {
		p := fmt.Sprintf("upstreams[%d]", i)
		if u.Limits.Connections < 0 {
			bad(p+".limits.connections", "must be positive")
		}
		t := u.Throttle
		if t.Cooldown < 0 || t.MaxCooldown < t.Cooldown {
			bad(p+".throttle.max_cooldown", "must be at least cooldown (%s)", time.Duration(t.Cooldown))
		}
		for j, r := range t.Replies {
			rp := fmt.Sprintf("%s.throttle.replies[%d]", p, j)
			if r.Code == 0 && r.Enhanced == "" && r.Text == "" {
				bad(rp, "give code, enhanced or text")
			}
			if r.Code != 0 && (r.Code < 400 || r.Code > 599) {
				bad(rp+".code", "%d is not a 4xx or 5xx reply code", r.Code)
			}
			if r.Enhanced != "" && !enhancedPattern.MatchString(r.Enhanced) {
				bad(rp+".enhanced", "%q: use x.y.z or x.y.a-b, such as 4.7.0 or 5.2.251-255", r.Enhanced)
			}
			if _, err := regexp.Compile(r.Text); err != nil {
				bad(rp+".text", "bad regular expression: %v", err)
			}
		}
	}
	for name, cl := range f.RateLimit.Classes {
		if cl.Priority != "" {
			oneOf("ratelimit.classes."+name+".priority", cl.Priority, "high", "normal", "bulk")
		}
	}
	for i, r := range f.Routes {
		if r.Priority != "" {
			oneOf(fmt.Sprintf("routes[%d].priority", i), r.Priority, "high", "normal", "bulk")
		}
	}
}
