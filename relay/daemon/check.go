package daemon

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"maps"
	"os"
	"slices"
	"strings"
	"time"

	"github.com/smarthost/smarthost/configs"
	"github.com/smarthost/smarthost/dkim"
	"github.com/smarthost/smarthost/ratelimit"
	"github.com/smarthost/smarthost/relay/upstream"
)

// Assemble translates f as New does, without writing anything (a DKIM key
// marked create_if_missing is not made) or logging: check-config's offline
// check.
func Assemble(f *configs.File) (*Assembly, configs.Problems) {
	return assemble(f, false, slog.New(slog.DiscardHandler), nil)
}

// Warnings are worth saying, not worth refusing the configuration for.
func (a *Assembly) Warnings() []string { return a.warnings }

// Finding is what one probe found out about a backend, a DKIM key's
// published record or an upstream.
type Finding struct {
	Subject string // "ldap URL", "redis ADDRS", "dkim NAME (ALGO)", "upstream NAME"
	Outcome string // "ok", "FAILED: …", a DKIM verdict and its reason
	Failed  bool
	// Unreadable: a key file could not be read, which is a mistake in the
	// configuration rather than in what it names.
	Unreadable bool
}

func (f Finding) String() string { return f.Subject + ": " + f.Outcome }

func found(subject string, err error, ok string) Finding {
	if err != nil {
		return Finding{Subject: subject, Outcome: "FAILED: " + err.Error(), Failed: true}
	}
	return Finding{Subject: subject, Outcome: ok}
}

// Probe connects to LDAP, Redis and each upstream as the relay would, and
// checks each DKIM key's published record (check-config --probe); resolver
// is the DNS server to ask ("": the system's).
func (a *Assembly) Probe(ctx context.Context, resolver string) []Finding {
	var out []Finding
	if a.ldap != nil {
		for _, r := range a.ldap.Probe() {
			out = append(out, found("ldap "+r.URL, r.Err, "ok (service bind): "+strings.Join(r.Notes, ", ")))
		}
	}
	if f := a.file; f.RateLimit.Backend == "redis" {
		limiter, closeLimiter := newLimiter(f)
		rctx, cancel := context.WithTimeout(ctx, 10*time.Second)
		err := limiter.(*ratelimit.Redis).Ping(rctx)
		cancel()
		closeLimiter()
		out = append(out, found("redis "+strings.Join(f.RateLimit.Redis.Addrs, ","), err, "ok"))
	}
	out = append(out, CheckDKIM(ctx, a.file, resolver)...)
	router, err := upstream.NewRouter(a.upstream, slog.New(slog.DiscardHandler))
	if err != nil {
		return append(out, Finding{Subject: "upstreams", Outcome: err.Error(), Failed: true})
	}
	defer router.Close()
	uctx, cancel := context.WithTimeout(ctx, 30*time.Second)
	defer cancel()
	for _, r := range router.Probe(uctx) {
		out = append(out, found("upstream "+r.Name, r.Err, "ok"))
	}
	return out
}

// CheckDKIM looks up every configured key's published record and checks
// that it verifies the key's signatures (dkim check): a finding per key.
func CheckDKIM(ctx context.Context, f *configs.File, resolver string) []Finding {
	lookup := dkim.Resolver(resolver, 10*time.Second)
	var out []Finding
	for _, d := range slices.Sorted(maps.Keys(f.DKIM.Domains)) {
		for _, k := range f.DKIM.Domains[d] {
			name := k.Selector + "._domainkey." + strings.ToLower(d)
			signer, err := dkim.LoadKey(k.KeyFile)
			switch {
			case err != nil && errors.Is(err, os.ErrNotExist) && k.CreateIfMissing:
				out = append(out, Finding{Subject: "dkim " + name, Outcome: "no key yet: serve makes it at its first start and logs its record", Failed: true})
				continue
			case err != nil:
				out = append(out, Finding{Subject: name, Outcome: err.Error(), Failed: true, Unreadable: true})
				continue
			}
			r := dkim.CheckPublished(ctx, d, dkim.Key{Selector: k.Selector, Signer: signer}, lookup)
			outcome := string(r.Verdict)
			if r.Reason != "" {
				outcome += ": " + r.Reason
			}
			for _, n := range r.Notes {
				outcome += " (" + n + ")"
			}
			out = append(out, Finding{Subject: fmt.Sprintf("dkim %s (%s)", r.Name, r.Key), Outcome: outcome, Failed: r.Verdict != dkim.OK})
		}
	}
	return out
}

// DKIMRecords is the DNS record of every configured key (dkim dns): a
// finding per key, whose Outcome is its zone-file line.
func DKIMRecords(f *configs.File) []Finding {
	var out []Finding
	for _, d := range slices.Sorted(maps.Keys(f.DKIM.Domains)) {
		for _, k := range f.DKIM.Domains[d] {
			signer, err := dkim.LoadKey(k.KeyFile)
			var name, value string
			if err == nil {
				name, value, err = dkim.DNSRecord(strings.ToLower(d), k.Selector, signer.Public())
			}
			if err != nil {
				out = append(out, Finding{Subject: d + " " + k.Selector, Outcome: err.Error(), Failed: true})
				continue
			}
			out = append(out, Finding{Subject: d + " " + k.Selector, Outcome: dkim.ZoneLine(name, value)})
		}
	}
	return out
}
