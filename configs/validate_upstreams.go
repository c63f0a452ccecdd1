package configs

// The checks of upstreams, routes and their shaping.

import (
	"fmt"
	"net/url"
	"regexp"
	"strings"
	"time"
)

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
