package upstream

import (
	"context"
	"errors"
	"fmt"
	"net/http"
	"os"
	"strings"
	"sync"
	"time"

	"golang.org/x/oauth2"
	"golang.org/x/oauth2/clientcredentials"
)

// refreshAhead: a cached token is replaced this long before it expires (or
// a quarter of its lifetime before, for short-lived ones), so that no
// session logs in with one about to lapse.
const refreshAhead = time.Minute

// ClientCredentials gets tokens with the OAuth2 client credentials grant
// (RFC 6749 4.4) from the identity provider's token endpoint, as Microsoft
// 365 and Google Workspace issue them for SMTP, and keeps one until shortly
// before it expires or the upstream refuses it.
type ClientCredentials struct {
	cfg  clientcredentials.Config
	http *http.Client
	now  func() time.Time

	mu  sync.Mutex
	tok *oauth2.Token
	got time.Time // when tok was issued
}

// NewClientCredentials makes a source for one client; hc nil means a
// client with a 30 s timeout.
func NewClientCredentials(tokenURL, clientID, secret string, scopes []string, hc *http.Client) *ClientCredentials {
	if hc == nil {
		hc = &http.Client{Timeout: 30 * time.Second}
	}
	return &ClientCredentials{
		cfg:  clientcredentials.Config{ClientID: clientID, ClientSecret: secret, TokenURL: tokenURL, Scopes: scopes},
		http: hc,
		now:  time.Now,
	}
}

func (c *ClientCredentials) Token(ctx context.Context) (string, error) {
	c.mu.Lock()
	defer c.mu.Unlock()
	now := c.now()
	if c.tok != nil && (c.tok.Expiry.IsZero() || now.Add(min(refreshAhead, c.tok.Expiry.Sub(c.got)/4)).Before(c.tok.Expiry)) {
		return c.tok.AccessToken, nil
	}
	tok, err := c.cfg.Token(context.WithValue(ctx, oauth2.HTTPClient, c.http))
	if err != nil {
		return "", err
	}
	c.tok, c.got = tok, now
	return tok.AccessToken, nil
}

func (c *ClientCredentials) Invalidate() {
	c.mu.Lock()
	c.tok = nil
	c.mu.Unlock()
}

// TokenFile reads a token that something else keeps fresh (a Kubernetes
// secret, a sidecar), again whenever the file changes.
type TokenFile struct {
	path string

	mu      sync.Mutex
	modTime time.Time
	size    int64
	token   string
}

func NewTokenFile(path string) *TokenFile { return &TokenFile{path: path} }

func (f *TokenFile) Token(context.Context) (string, error) {
	f.mu.Lock()
	defer f.mu.Unlock()
	st, err := os.Stat(f.path)
	if err != nil {
		return "", fmt.Errorf("token file: %w", err)
	}
	if f.token == "" || !st.ModTime().Equal(f.modTime) || st.Size() != f.size {
		b, err := os.ReadFile(f.path)
		if err != nil {
			return "", fmt.Errorf("token file: %w", err)
		}
		tok := strings.TrimSpace(string(b))
		if tok == "" {
			return "", errors.New("token file: empty")
		}
		f.token, f.modTime, f.size = tok, st.ModTime(), st.Size()
	}
	return f.token, nil
}

// Invalidate makes the next Token read the file again.
func (f *TokenFile) Invalidate() {
	f.mu.Lock()
	f.token = ""
	f.mu.Unlock()
}
