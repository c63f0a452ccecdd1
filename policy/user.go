package policy

import (
	"strings"
	"unicode"
	"unicode/utf8"

	"golang.org/x/net/idna"
)

// User is an authenticated submitter and what it may do.
type User struct {
	Name      string   // canonical name: rate limits and logs key on it
	Addresses []string // "a@example.com" or "*@example.com"
	Class     string   // rate-limit class; "" means "default"
	// RelayPeer marks another smarthost handing its queue over (see
	// Policy.Peer): any envelope sender, no header checks, no signing.
	RelayPeer bool
	// Recipients are the user's own recipient rules (nil: its class's).
	Recipients *RecipientRules
	// Login is the name the user logged in with, in lower case (Name may
	// be a directory DN); rules may name either.
	Login string
}

// Owns reports whether the user may send as addr.
func (u *User) Owns(addr string) bool {
	return matchAny(u.Addresses, addr)
}

// matchAny reports whether addr matches one of the patterns: an exact address
// or "*@domain". Addresses compare case-insensitively: mailbox providers fold
// the local part and domains are case-insensitive by definition.
func matchAny(patterns []string, addr string) bool {
	local, domain, ok := SplitAddress(addr)
	return ok && matchSplit(patterns, local, domain)
}

// matchSplit is matchAny for an address SplitAddress has already parsed.
func matchSplit(patterns []string, local, domain string) bool {
	for _, p := range patterns {
		pl, pd, ok := SplitAddress(p)
		if !ok || pd != domain {
			continue
		}
		if pl == "*" || strings.EqualFold(pl, local) {
			return true
		}
	}
	return false
}

// SplitAddress parses an address once, strictly, into its local part and
// its domain in lower-case A-label (IDNA) form, so that every comparison
// sees one spelling of a domain. It refuses what is not a plain mailbox at
// a host name: no '@' or several, an empty part, address literals, trailing
// dots, and local parts that carry routing of their own ('%', '!', quotes,
// source routes) or control characters, since an upstream might honour them
// and relay somewhere we never checked.
func SplitAddress(addr string) (local, domain string, ok bool) {
	i := strings.LastIndexByte(addr, '@')
	if i <= 0 || i == len(addr)-1 || len(addr) > 320 {
		return "", "", false
	}
	local = addr[:i]
	if len(local) > 64 || !utf8.ValidString(local) {
		return "", "", false
	}
	for _, r := range local {
		if r < 0x21 || r == 0x7f || strings.ContainsRune("%!@\"\\:,;<>()[]", r) || invisible(r) {
			return "", "", false
		}
	}
	domain, ok = normalDomain(addr[i+1:])
	return local, domain, ok
}

// invisible reports spaces, controls and format characters (bidi
// overrides, zero-width joiners): nothing a person can see, everything a
// spoofer needs.
func invisible(r rune) bool {
	return unicode.IsSpace(r) || unicode.IsControl(r) || unicode.Is(unicode.Cf, r)
}

// normalDomain returns a host name in lower-case A-label form, or false.
func normalDomain(d string) (string, bool) {
	if strings.IndexFunc(d, invisible) >= 0 || !utf8.ValidString(d) {
		return "", false
	}
	if strings.HasPrefix(d, "[") || strings.HasSuffix(d, ".") || strings.HasPrefix(d, ".") || strings.Contains(d, "..") {
		return "", false
	}
	a, err := idna.Lookup.ToASCII(d)
	if err != nil || a == "" || len(a) > 253 || !strings.Contains(a, ".") {
		return "", false
	}
	a = strings.ToLower(a)
	for _, r := range a {
		switch {
		case r >= 'a' && r <= 'z', r >= '0' && r <= '9', r == '-', r == '.':
		default:
			return "", false
		}
	}
	// The mapping can leave empty or malformed labels ("xn--." maps to ".").
	for _, label := range strings.Split(a, ".") {
		if label == "" || len(label) > 63 || label[0] == '-' || label[len(label)-1] == '-' {
			return "", false
		}
	}
	return a, true
}

// NormalDomain is the form SplitAddress gives a configured domain.
func NormalDomain(d string) string {
	if n, ok := normalDomain(strings.TrimPrefix(d, "@")); ok {
		return n
	}
	return strings.ToLower(d)
}
