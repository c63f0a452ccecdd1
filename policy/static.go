package policy

import (
	"context"
	"errors"
	"fmt"
	"os"
	"strings"

	"golang.org/x/crypto/bcrypt"
	"gopkg.in/yaml.v3"
)

// Static is the users file backend: bcrypt hashes and address lists kept in
// a small YAML file (see configs/users.quickstart.yaml).
type Static struct {
	users map[string]staticUser
	// dummy is compared against when the user does not exist, so that an
	// unknown name costs the same time as a wrong password.
	dummy []byte
}

type staticUser struct {
	PasswordHash string   `yaml:"password_hash"`
	Addresses    []string `yaml:"addresses"`
	Class        string   `yaml:"class"`
	RelayPeer    bool     `yaml:"relay_peer"`
	Recipients   *struct {
		Allow []string `yaml:"allow"`
		Deny  []string `yaml:"deny"`
	} `yaml:"recipients"`
}

func (u staticUser) user(name string) *User {
	out := &User{Name: name, Login: name, Addresses: u.Addresses, Class: u.Class, RelayPeer: u.RelayPeer}
	if u.Recipients != nil {
		out.Recipients = &RecipientRules{Allow: u.Recipients.Allow, Deny: u.Recipients.Deny}
	}
	return out
}

// LoadStatic reads a users file.
func LoadStatic(path string) (*Static, error) {
	b, err := os.ReadFile(path)
	if err != nil {
		return nil, fmt.Errorf("users file: %w", err)
	}
	return ParseStatic(b)
}

// ParseStatic parses the text of a users file.
func ParseStatic(text []byte) (*Static, error) {
	var f struct {
		Users map[string]staticUser `yaml:"users"`
	}
	dec := yaml.NewDecoder(strings.NewReader(string(text)))
	dec.KnownFields(true)
	if err := dec.Decode(&f); err != nil {
		return nil, fmt.Errorf("users file: %w", err)
	}
	var probs []string
	s := &Static{users: map[string]staticUser{}}
	cost := bcrypt.MinCost
	for name, u := range f.Users {
		c, err := bcrypt.Cost([]byte(u.PasswordHash))
		if err != nil {
			probs = append(probs, fmt.Sprintf("user %q: password_hash is not a bcrypt hash (make one with `smarthost passwd`)", name))
		}
		cost = max(cost, c)
		for _, a := range u.Addresses {
			if _, _, ok := SplitAddress(a); !ok {
				probs = append(probs, fmt.Sprintf("user %q: %q is not an address or *@domain pattern", name, a))
			}
		}
		s.users[strings.ToLower(name)] = u
	}
	if len(probs) > 0 {
		return nil, fmt.Errorf("users file: %s", strings.Join(probs, "; "))
	}
	s.dummy, _ = bcrypt.GenerateFromPassword([]byte("smarthost-dummy"), cost)
	return s, nil
}

// Len is the number of users.
func (s *Static) Len() int { return len(s.users) }

func (s *Static) Authenticate(_ context.Context, username, password string) (*User, error) {
	name := strings.ToLower(username)
	u, ok := s.users[name]
	hash := []byte(u.PasswordHash)
	if !ok {
		hash = s.dummy
	}
	if err := bcrypt.CompareHashAndPassword(hash, []byte(password)); err != nil || !ok || password == "" {
		return nil, ErrBadCredentials
	}
	return u.user(name), nil
}

// Lookup finds a user by name without checking a password (for operators'
// tools such as `smarthost limits show`).
func (s *Static) Lookup(_ context.Context, username string) (*User, error) {
	name := strings.ToLower(username)
	u, ok := s.users[name]
	if !ok {
		return nil, fmt.Errorf("%w: %q", ErrNoSuchUser, username)
	}
	return u.user(name), nil
}

// HashPassword makes the password_hash of a users file entry.
func HashPassword(password string, cost int) (string, error) {
	if password == "" {
		return "", errors.New("empty password")
	}
	if len(password) > 72 {
		return "", errors.New("bcrypt uses at most 72 bytes of a password; use a shorter one")
	}
	h, err := bcrypt.GenerateFromPassword([]byte(password), cost)
	return string(h), err
}
