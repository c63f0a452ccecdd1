package configs

import (
	"os"
	"path/filepath"
	"time"
)

// DefaultMetricsListen is where the admin listener (/metrics, /healthz,
// /readyz) answers when the file does not say.
const DefaultMetricsListen = "127.0.0.1:9587"

// applyDefaults fills what the file leaves out, section by section.
func applyDefaults(f *File) {
	if f.Hostname == "" {
		f.Hostname, _ = os.Hostname()
	}
	if f.TLS.MinVersion == "" {
		f.TLS.MinVersion = "1.2"
	}
	for i := range f.Listeners {
		if f.Listeners[i].Mode == "" {
			f.Listeners[i].Mode = "starttls"
		}
	}
	defaultAuth(f)
	defaultPolicy(f)
	defaultRateLimit(f)
	defaultDelivery(f)
	// The admin listener is on unless switched off with listen: "", so that
	// health checks (the image's HEALTHCHECK, Kubernetes probes) find
	// /readyz without a setting.
	if _, set := f.lines["metrics.listen"]; !set {
		f.Metrics.Listen = DefaultMetricsListen
	}
	if f.Log.Format == "" {
		f.Log.Format = "json"
	}
	if f.Log.Level == "" {
		f.Log.Level = "info"
	}
}

// ADUserFilter is the user_filter of the "ad" preset: people (not
// computers or contacts) by sAMAccountName (also typed as DOMAIN\user) or
// by userPrincipalName.
const ADUserFilter = "(&(objectCategory=person)(objectClass=user)(|(sAMAccountName={user})(userPrincipalName={username})))"

func defaultAuth(f *File) {
	if f.Auth.Static.CacheTTL == 0 {
		f.Auth.Static.CacheTTL = Duration(time.Minute)
	}
	l := &f.Auth.LDAP
	if l.UserFilter == "" {
		l.UserFilter = "(&(objectClass=inetOrgPerson)(uid={username}))"
		if l.Preset == "ad" {
			l.UserFilter = ADUserFilter
		}
	}
	if len(l.AddressAttributes) == 0 {
		l.AddressAttributes = []string{"mail"}
		if l.Preset == "ad" {
			l.AddressAttributes = []string{"proxyAddresses", "mail"}
		}
	}
	if l.Timeout == 0 {
		l.Timeout = Duration(5 * time.Second)
	}
	if l.CacheTTL == 0 {
		l.CacheTTL = Duration(time.Minute)
	}
}

func defaultPolicy(f *File) {
	p := &f.Policy
	if p.EnforceHeaderFrom == nil {
		t := true
		p.EnforceHeaderFrom = &t
	}
	if p.MaxRecipients == 0 {
		p.MaxRecipients = 100
	}
	if p.MaxMessageSize == 0 {
		p.MaxMessageSize = 25 << 20
	}
	if p.LongLines == "" {
		// What Postfix users know: Postfix takes any line and folds it
		// at 998 bytes when it relays.
		p.LongLines = "wrap"
	}
	if p.BareNewline == "" {
		p.BareNewline = "normalize"
	}
	if f.Headers.Received == "" {
		f.Headers.Received = "full"
	}
}

func defaultRateLimit(f *File) {
	r := &f.RateLimit
	if r.Backend == "" {
		r.Backend = "memory"
	}
	if r.OnBackendError == "" {
		r.OnBackendError = "tempfail"
	}
	if r.Timeout == 0 {
		r.Timeout = Duration(time.Second)
	}
	if r.ConnectionsPerIP == 0 {
		r.ConnectionsPerIP = 50
	}
	if r.MaxConnections == 0 {
		r.MaxConnections = 1000
	}
	if len(r.Redis.Addrs) == 0 {
		r.Redis.Addrs = []string{"127.0.0.1:6379"}
	}
}

// defaultDelivery covers dkim, upstreams and queue.
func defaultDelivery(f *File) {
	if f.DKIM.OnMissingKey == "" {
		f.DKIM.OnMissingKey = "send_unsigned"
	}
	if f.DKIM.Oversign == nil {
		f.DKIM.Oversign = []string{"from", "to", "cc", "subject", "date", "reply-to", "message-id"}
	}
	for i := range f.Upstreams {
		u := &f.Upstreams[i]
		if u.TLS == "" {
			u.TLS = "required"
		}
		if u.AuthMechanism == "" {
			u.AuthMechanism = "auto"
		}
		if u.MaxConnections == 0 {
			u.MaxConnections = 8
		}
		if u.Timeout == 0 {
			u.Timeout = Duration(5 * time.Minute)
		}
		if u.ConnectTimeout == 0 {
			u.ConnectTimeout = min(Duration(30*time.Second), u.Timeout)
		}
		defaultThrottle(&u.Throttle)
	}
	q := &f.Queue
	if q.Dir == "" {
		q.Dir = "/var/lib/smarthost/queue"
	}
	if q.Workers == 0 {
		q.Workers = 16
	}
	if len(q.Retry) == 0 {
		q.Retry = []Duration{Duration(time.Minute), Duration(5 * time.Minute), Duration(15 * time.Minute), Duration(time.Hour)}
	}
	if q.MaxAge == 0 {
		q.MaxAge = Duration(120 * time.Hour)
	}
	defaultHistory(f)
}

// defaultHistory covers history and webhooks. The history lives in the
// spool's folder by default: the volume every deployment keeps.
func defaultHistory(f *File) {
	h := &f.History
	if h.Dir == "" {
		h.Dir = filepath.Join(f.Queue.Dir, "history")
	}
	if h.MaxAge == 0 {
		h.MaxAge = Duration(72 * time.Hour)
	}
	if h.MaxSize == 0 {
		h.MaxSize = 1 << 30
	}
	for i := range f.Webhooks {
		w := &f.Webhooks[i]
		if len(w.Events) == 0 {
			w.Events = []string{"delivered", "deferred", "bounced", "delayed"}
		}
		if w.MaxQueued == 0 {
			w.MaxQueued = 100000
		}
	}
}

func defaultThrottle(t *Throttle) {
	if t.DefaultReplies == nil {
		on := true
		t.DefaultReplies = &on
	}
	if t.Cooldown == 0 {
		t.Cooldown = Duration(time.Minute)
	}
	if t.MaxCooldown == 0 {
		t.MaxCooldown = max(Duration(time.Hour), t.Cooldown)
	}
}
