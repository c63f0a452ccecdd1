// Package policy decides who may relay as whom: AUTH is required unless the
// client is on a trusted network, an authenticated user may only use the
// addresses they own (envelope and From:/Sender: headers), and recipients
// may be limited to some domains.
package policy

import (
	"context"
	"errors"
	"fmt"
	"net/mail"
	"net/netip"
	"slices"
	"strings"
)

var (
	ErrAuthRequired   = errors.New("policy: authentication required")
	ErrSenderNotOwned = errors.New("policy: sender address not owned by user")
	ErrHeaderNotOwned = errors.New("policy: header address not owned by user")
	ErrHeaderMissing  = errors.New("policy: From header missing or unreadable")
	ErrRelayDenied    = errors.New("policy: relay access denied")
	ErrBadAddress     = errors.New("policy: bad address syntax")
)

// Config is the policy section of the configuration, parsed.
type Config struct {
	TrustedNetworks         []netip.Prefix
	TrustedSenders          []string // addresses or "*@domain"
	EnforceHeaderFrom       bool
	AllowedRecipientDomains []string // empty: any domain
	// PeerClasses are the classes whose users are relay peers (as a user
	// marked relay_peer is): nodes handing their queue over.
	PeerClasses []string
	// Recipients are the recipient rules of each class (a user's own
	// rules, when it has some, take their place).
	Recipients map[string]RecipientRules
	Rewrite    []Rewrite // first match wins
	Archive    []Archive // every match adds a copy
}

// Policy applies Config with a Directory for logins. It is safe for
// concurrent use and immutable; a reload builds a new one.
type Policy struct {
	cfg Config
	dir Directory
}

// Client is what the policy knows about one SMTP client.
type Client struct {
	Addr netip.Addr // after PROXY protocol
	User *User      // nil unless AUTH succeeded
}

func New(cfg Config, dir Directory) *Policy {
	for i, d := range cfg.AllowedRecipientDomains {
		cfg.AllowedRecipientDomains[i] = NormalDomain(d)
	}
	return &Policy{cfg: cfg, dir: dir}
}

// Authenticate checks credentials with the directory. An empty name or
// password never reaches the backend: some LDAP servers treat an empty
// password as an anonymous bind that "succeeds".
func (p *Policy) Authenticate(ctx context.Context, username, password string) (*User, error) {
	if username == "" || password == "" {
		return nil, ErrBadCredentials
	}
	u, err := p.dir.Authenticate(ctx, username, password)
	if err == nil && u.Login == "" {
		c := *u
		c.Login = strings.ToLower(username)
		u = &c
	}
	return u, err
}

// Trusted reports whether the client may relay without AUTH.
func (p *Policy) Trusted(c Client) bool {
	a := c.Addr.Unmap()
	for _, n := range p.cfg.TrustedNetworks {
		if n.Contains(a) {
			return true
		}
	}
	return false
}

// Peer reports whether the client is another relay handing over its queue
// (smarthost drain): it forwards mail others submitted, already checked
// and signed there, so it may use any envelope sender, the null sender of
// a bounce included, and its headers are not checked again.
func (p *Policy) Peer(c Client) bool {
	if c.User == nil {
		return false
	}
	if c.User.RelayPeer {
		return true
	}
	for _, cl := range p.cfg.PeerClasses {
		if cl == c.User.Class && cl != "" {
			return true
		}
	}
	return false
}

// CheckSender decides on MAIL FROM. The null sender is refused (but from a
// relay peer): a submitted message always has someone to bounce to.
func (p *Policy) CheckSender(c Client, from string) error {
	if c.User == nil && !p.Trusted(c) {
		return ErrAuthRequired
	}
	if p.Peer(c) {
		if _, _, ok := SplitAddress(from); !ok && from != "" {
			return fmt.Errorf("%w: %q", ErrBadAddress, from)
		}
		return nil
	}
	local, domain, ok := SplitAddress(from)
	if !ok {
		// Nobody owns what cannot be parsed; the reply names the syntax.
		return fmt.Errorf("%w (%w): %q", ErrBadAddress, ErrSenderNotOwned, from)
	}
	if c.User == nil {
		if !matchSplit(p.cfg.TrustedSenders, local, domain) {
			return fmt.Errorf("%w: %q from trusted network %s", ErrSenderNotOwned, from, c.Addr)
		}
		return nil
	}
	if !matchSplit(c.User.Addresses, local, domain) {
		return fmt.Errorf("%w: %q by %s", ErrSenderNotOwned, from, c.User.Name)
	}
	return nil
}

// CheckRecipient decides on RCPT TO.
func (p *Policy) CheckRecipient(c Client, to string) error {
	if c.User == nil && !p.Trusted(c) {
		return ErrAuthRequired
	}
	local, domain, ok := SplitAddress(to)
	if !ok {
		return fmt.Errorf("%w: %q", ErrBadAddress, to)
	}
	if len(p.cfg.AllowedRecipientDomains) > 0 && !slices.Contains(p.cfg.AllowedRecipientDomains, domain) {
		return fmt.Errorf("%w: %q", ErrRelayDenied, to)
	}
	if r := p.recipientRules(c); !p.Peer(c) && !r.permits(local, domain) {
		return fmt.Errorf("%w: %q", ErrRecipientRefused, to)
	}
	return nil
}

// CheckHeader decides on the From: and Sender: fields of a message: with
// enforce_header_from every address in them must be the client's own, so a
// user cannot show a forged author to the reader while the envelope is his.
func (p *Policy) CheckHeader(c Client, h mail.Header) error {
	if !p.cfg.EnforceHeaderFrom || p.Peer(c) {
		return nil
	}
	owns := func(a string) bool {
		if c.User != nil {
			return c.User.Owns(a)
		}
		return matchAny(p.cfg.TrustedSenders, a)
	}
	from, err := h.AddressList("From")
	if err != nil || len(from) == 0 {
		return ErrHeaderMissing
	}
	if len(h["From"]) > 1 {
		// Two From: fields show a reader one and a verifier another.
		return fmt.Errorf("%w: more than one From field", ErrHeaderMissing)
	}
	for _, a := range from {
		if !owns(a.Address) {
			return fmt.Errorf("%w: From %q", ErrHeaderNotOwned, a.Address)
		}
		// Many mail clients show only the display name: one that holds an
		// address must hold this one, or it names someone else.
		if strings.Contains(a.Name, "@") && !strings.Contains(strings.ToLower(a.Name), strings.ToLower(a.Address)) {
			return fmt.Errorf("%w: From display name %q shows another address", ErrHeaderNotOwned, a.Name)
		}
	}
	if len(h["Sender"]) > 0 {
		s, err := h.AddressList("Sender")
		if err != nil || len(s) != 1 || len(h["Sender"]) != 1 {
			return fmt.Errorf("%w: bad Sender field", ErrHeaderMissing)
		}
		if !owns(s[0].Address) {
			return fmt.Errorf("%w: Sender %q", ErrHeaderNotOwned, s[0].Address)
		}
	}
	return nil
}
