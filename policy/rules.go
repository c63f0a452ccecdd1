package policy

import (
	"errors"
	"slices"
	"strings"
)

// ErrRecipientRefused: the user's or its class's recipient rules do not
// allow the recipient.
var ErrRecipientRefused = errors.New("policy: recipient not allowed for this sender")

// RecipientRules allow and deny recipients, as smtprelay's
// allowed_recipients does: each pattern is an address, "*@domain", or a
// domain alone (the same). Deny wins; with an allow list, nothing else is
// allowed.
type RecipientRules struct {
	Allow []string
	Deny  []string
}

// Empty reports whether the rules allow everything.
func (r *RecipientRules) Empty() bool { return r == nil || len(r.Allow) == 0 && len(r.Deny) == 0 }

func (r *RecipientRules) permits(local, domain string) bool {
	if r.Empty() {
		return true
	}
	if matchRule(r.Deny, local, domain) {
		return false
	}
	return len(r.Allow) == 0 || matchRule(r.Allow, local, domain)
}

func matchRule(patterns []string, local, domain string) bool {
	for _, p := range patterns {
		if !strings.Contains(p, "@") {
			p = "*@" + p
		}
		if matchSplit([]string{p}, local, domain) {
			return true
		}
	}
	return false
}

// ParseRecipientRules reads rules kept as "allow:PATTERN" and
// "deny:PATTERN" values (an LDAP attribute's). One value may hold several
// rules apart by spaces, commas or semicolons ("allow:*@example.org
// deny:ceo@example.org"), for the single-valued attributes Active
// Directory has to spare (msDS-cloudExtensionAttribute1, ...).
func ParseRecipientRules(values []string) *RecipientRules {
	r := &RecipientRules{}
	for _, v := range values {
		words := strings.FieldsFunc(v, func(c rune) bool { return c == ' ' || c == '\t' || c == ',' || c == ';' })
		for i := 0; i < len(words); i++ {
			kind, pat, ok := strings.Cut(words[i], ":")
			if ok && pat == "" && i+1 < len(words) { // "allow: PATTERN"
				i++
				pat = words[i]
			}
			switch {
			case !ok || pat == "":
			case strings.EqualFold(kind, "allow"):
				r.Allow = append(r.Allow, pat)
			case strings.EqualFold(kind, "deny"):
				r.Deny = append(r.Deny, pat)
			}
		}
	}
	if r.Empty() {
		return nil
	}
	return r
}

// Match selects messages by their submitter and envelope sender: every
// list given must match; an empty Match matches everything. Users are
// login names or the directory's canonical names.
type Match struct {
	Users         []string
	Classes       []string
	SenderDomains []string
}

func (m Match) matches(c Client, from string) bool {
	if len(m.Users) > 0 {
		if c.User == nil || !slices.ContainsFunc(m.Users, func(u string) bool {
			return strings.EqualFold(u, c.User.Name) || strings.EqualFold(u, c.User.Login)
		}) {
			return false
		}
	}
	if len(m.Classes) > 0 {
		class := ""
		if c.User != nil {
			class = c.User.Class
		}
		if class == "" {
			class = "default"
		}
		if !slices.Contains(m.Classes, class) {
			return false
		}
	}
	if len(m.SenderDomains) > 0 {
		_, d, ok := SplitAddress(from)
		if !ok || !slices.ContainsFunc(m.SenderDomains, func(s string) bool { return NormalDomain(s) == d }) {
			return false
		}
	}
	return true
}

// Rewrite changes the sender of matching messages (Postfix's
// sender_canonical_maps): the envelope sender becomes Sender, and with
// HeaderFrom the addresses of From: and Sender:, with ReplyTo those of
// Reply-To:, as well. A Sender of "*@domain" masquerades instead (Postfix's
// masquerade_domains): each address keeps its local part and takes that
// domain. Ownership is checked on what the client sent; the DKIM signing
// domain follows the rewritten From:.
type Rewrite struct {
	Match      Match
	Sender     string
	HeaderFrom bool
	ReplyTo    bool
}

// SenderFor is what addr becomes: Sender, or when masquerading, addr's
// local part at Sender's domain.
func (r *Rewrite) SenderFor(addr string) string {
	domain, masquerade := strings.CutPrefix(r.Sender, "*@")
	if !masquerade {
		return r.Sender
	}
	local, _, ok := SplitAddress(addr)
	if !ok {
		return addr
	}
	return local + "@" + domain
}

// Covers reports whether a header address is one the rule rewrites: any
// address for a fixed Sender; when masquerading, an address in one of the
// rule's sender domains (any address, if it names none), so that the
// other addresses a user owns are left as they are.
func (r *Rewrite) Covers(addr string) bool {
	if !strings.HasPrefix(r.Sender, "*@") || len(r.Match.SenderDomains) == 0 {
		return true
	}
	_, d, ok := SplitAddress(addr)
	return ok && slices.ContainsFunc(r.Match.SenderDomains, func(s string) bool { return NormalDomain(s) == d })
}

// Archive copies matching messages to Address through Upstreams (always_bcc).
type Archive struct {
	Match     Match
	Address   string
	Upstreams []string
}

// RewriteFor returns the first rewrite rule for the client's message from
// from, or nil.
func (p *Policy) RewriteFor(c Client, from string) *Rewrite {
	for i := range p.cfg.Rewrite {
		if p.cfg.Rewrite[i].Match.matches(c, from) {
			return &p.cfg.Rewrite[i]
		}
	}
	return nil
}

// ArchivesFor returns the archive copies the client's message from from
// gets.
func (p *Policy) ArchivesFor(c Client, from string) []Archive {
	var out []Archive
	for _, a := range p.cfg.Archive {
		if a.Match.matches(c, from) {
			out = append(out, a)
		}
	}
	return out
}

// recipientRules are the rules that apply to the client: its own, else
// its class's.
func (p *Policy) recipientRules(c Client) *RecipientRules {
	if c.User == nil {
		return nil
	}
	if !c.User.Recipients.Empty() {
		return c.User.Recipients
	}
	class := c.User.Class
	if class == "" {
		class = "default"
	}
	if r, ok := p.cfg.Recipients[class]; ok {
		return &r
	}
	return nil
}

// RulesOf names where the client's recipient rules come from, as a bounded
// metrics label: "user" for its own, else its configured class.
func (p *Policy) RulesOf(c Client) string {
	if c.User != nil && !c.User.Recipients.Empty() {
		return "user"
	}
	if c.User != nil && c.User.Class != "" {
		if _, ok := p.cfg.Recipients[c.User.Class]; ok {
			return c.User.Class
		}
	}
	return "default"
}
