package policy

import (
	"strings"
)

// User is an authenticated submitter and what it may do.
type User struct {
	Name      string   // canonical name: rate limits and logs key on it
	Addresses []string // "a@example.com" or "*@example.com"
	Class     string   // rate-limit class; "" means "default"
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
	if !ok {
		return false
	}
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

// SplitAddress splits an address at its last '@' and lowercases the domain.
// It refuses what cannot be a plain mailbox: no '@', an empty part, a domain
// that is not a hostname or address literal, and local parts that carry
// routing of their own ('%', '!', '@', quotes, source routes), since an
// upstream may honour those and relay somewhere we never checked.
func SplitAddress(addr string) (local, domain string, ok bool) {
	i := strings.LastIndexByte(addr, '@')
	if i <= 0 || i == len(addr)-1 {
		return "", "", false
	}
	local, domain = addr[:i], strings.ToLower(addr[i+1:])
	if strings.ContainsAny(local, "%!@\"\\:,;<> \t\r\n\x00") || !validDomain(domain) {
		return "", "", false
	}
	return local, domain, true
}

func validDomain(d string) bool {
	if strings.HasPrefix(d, "[") && strings.HasSuffix(d, "]") {
		return len(d) > 2 && !strings.ContainsAny(d[1:len(d)-1], "[]\\ ")
	}
	if len(d) > 253 || strings.HasPrefix(d, ".") || strings.HasSuffix(d, ".") || strings.Contains(d, "..") {
		return false
	}
	for _, r := range d {
		switch {
		case r >= 'a' && r <= 'z', r >= '0' && r <= '9', r == '-', r == '.', r >= 0x80:
		default:
			return false
		}
	}
	return true
}
