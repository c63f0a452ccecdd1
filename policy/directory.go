package policy

import (
	"context"
	"crypto/hmac"
	"crypto/rand"
	"crypto/sha256"
	"errors"
	"sync"
	"time"

	"golang.org/x/sync/singleflight"
)

// ErrBadCredentials means the name or password is wrong, or the account may
// not submit mail. Any other error from a Directory means it could not decide.
var ErrBadCredentials = errors.New("policy: bad credentials")

// AccountError refuses a login for the state of the account rather than
// for a wrong name or password: disabled, expired, locked out, or its
// password expired or to be changed. The client learns no more than from a
// wrong password (it is ErrBadCredentials to errors.Is); the log and the
// metrics name the Reason, so that an admin sees why at once.
type AccountError struct {
	Reason string // disabled, expired, locked, password_expired, password_must_change, restricted
	Detail string // what the directory said
}

func (e *AccountError) Error() string {
	return "policy: account refused (" + e.Reason + "): " + e.Detail
}

// Is makes an AccountError a bad credential.
func (e *AccountError) Is(target error) bool { return target == ErrBadCredentials }

// RefusalReason is the reason an AccountError in err gives, or "".
func RefusalReason(err error) string {
	var ae *AccountError
	if errors.As(err, &ae) {
		return ae.Reason
	}
	return ""
}

// ErrNoSuchUser is what a Lookup (by name, without a password) returns for
// a name the directory does not know.
var ErrNoSuchUser = errors.New("policy: no such user")

// Directory verifies a user's credentials and says which addresses they own.
// It is implemented by Static and by policy/ldap.
type Directory interface {
	// Authenticate returns the user for valid credentials and
	// ErrBadCredentials for a wrong name or password. Any other error means
	// the backend could not decide; the caller must treat it as temporary,
	// never as a refusal.
	Authenticate(ctx context.Context, username, password string) (*User, error)
}

// Cache remembers verified logins for a while, because checking a password
// (bcrypt, an LDAP round trip) is slow and application servers reconnect
// for every message. Failures are never remembered, and neither is the
// password: entries are keyed by an HMAC of name and password under a key
// that lives only in this process.
type Cache struct {
	dir Directory
	ttl time.Duration
	now func() time.Time
	key [32]byte

	mu      sync.Mutex
	entries map[[32]byte]cacheEntry
	// flight makes concurrent first logins with the same credentials (an
	// application server opening 20 connections at once) share one check.
	flight singleflight.Group
}

type cacheEntry struct {
	user    *User
	expires time.Time
}

// NewCache wraps dir. A ttl of zero or less disables caching. now may be nil.
func NewCache(dir Directory, ttl time.Duration, now func() time.Time) *Cache {
	if now == nil {
		now = time.Now
	}
	c := &Cache{dir: dir, ttl: ttl, now: now, entries: map[[32]byte]cacheEntry{}}
	if _, err := rand.Read(c.key[:]); err != nil {
		panic("policy: no randomness for the login cache: " + err.Error())
	}
	return c
}

func (c *Cache) Authenticate(ctx context.Context, username, password string) (*User, error) {
	if c.ttl <= 0 {
		return c.dir.Authenticate(ctx, username, password)
	}
	m := hmac.New(sha256.New, c.key[:])
	m.Write([]byte(username))
	m.Write([]byte{0})
	m.Write([]byte(password))
	var k [32]byte
	copy(k[:], m.Sum(nil))

	now := c.now()
	c.mu.Lock()
	e, ok := c.entries[k]
	c.mu.Unlock()
	if ok && now.Before(e.expires) {
		return e.user, nil
	}
	v, err, _ := c.flight.Do(string(k[:]), func() (any, error) {
		// A flight that just landed has filled the cache.
		c.mu.Lock()
		e, ok := c.entries[k]
		c.mu.Unlock()
		if ok && now.Before(e.expires) {
			return e.user, nil
		}
		u, err := c.dir.Authenticate(ctx, username, password)
		// Cached before the flight lands: a login arriving just after it
		// must find the entry, not start a second check.
		c.store(k, u, err, now)
		return u, err
	})
	if err != nil {
		return nil, err
	}
	return v.(*User), nil
}

// store remembers a verified login, or forgets one that no longer verifies.
func (c *Cache) store(k [32]byte, u *User, err error, now time.Time) {
	c.mu.Lock()
	defer c.mu.Unlock()
	if err != nil {
		delete(c.entries, k)
		return
	}
	// Drop expired entries now and then so the map stays bounded by the
	// number of distinct logins within one ttl.
	if len(c.entries) > 1024 {
		for key, old := range c.entries {
			if !now.Before(old.expires) {
				delete(c.entries, key)
			}
		}
	}
	c.entries[k] = cacheEntry{user: u, expires: now.Add(c.ttl)}
}
