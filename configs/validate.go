package configs

import (
	"fmt"
	"net"
	"net/netip"
	"net/url"
	"regexp"
	"strings"
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
