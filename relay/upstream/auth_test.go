package upstream

import (
	"context"
	"errors"
	"fmt"
	"net/http"
	"net/http/httptest"
	"os"
	"path/filepath"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	"github.com/emersion/go-sasl"

	"github.com/smarthost/smarthost/relay/upstream/smtpclient"
)

func TestMechanismChoice(t *testing.T) {
	tokens := NewTokenFile("/nonexistent")
	for _, c := range []struct {
		u       Upstream
		offered string
		want    string
		err     string
	}{
		{Upstream{Username: "u", Password: "p"}, "PLAIN LOGIN", MechPlain, ""},
		{Upstream{Username: "u", Password: "p"}, "LOGIN", MechLogin, ""},
		{Upstream{Username: "u", Password: "p", AuthMechanism: MechAuto}, "login xoauth2", MechLogin, ""},
		{Upstream{Username: "u", Tokens: tokens}, "LOGIN PLAIN XOAUTH2", MechXOAuth2, ""},
		{Upstream{Username: "u", Tokens: tokens}, "OAUTHBEARER PLAIN", MechOAuthBearer, ""},
		{Upstream{Username: "u", Tokens: tokens}, "PLAIN LOGIN", "", "none of which we have credentials for"},
		{Upstream{}, "PLAIN", "", ""},
		{Upstream{Username: "u", Password: "p", AuthMechanism: MechLogin}, "PLAIN LOGIN", MechLogin, ""},
		{Upstream{Username: "u", Password: "p", AuthMechanism: MechPlain}, "LOGIN", "", "does not offer AUTH PLAIN"},
		{Upstream{Username: "u", Tokens: tokens, AuthMechanism: MechOAuthBearer}, "XOAUTH2", "", "does not offer AUTH OAUTHBEARER"},
	} {
		got, err := mechanism(c.u, strings.Fields(c.offered))
		if got != c.want || (c.err == "") != (err == nil) || err != nil && !strings.Contains(err.Error(), c.err) {
			t.Errorf("%+v offered %q: got %q, %v; want %q, %q", c.u.AuthMechanism, c.offered, got, err, c.want, c.err)
		}
	}
}

func TestXOAuth2Client(t *testing.T) {
	c := &xoauth2Client{user: "relay@example.com", token: "tok"}
	mech, ir, err := c.Start()
	if mech != "XOAUTH2" || string(ir) != "user=relay@example.com\x01auth=Bearer tok\x01\x01" || err != nil {
		t.Fatalf("%q %q %v", mech, ir, err)
	}
	// Google's and Microsoft's refusal: a 334 with a JSON status.
	_, err = c.Next([]byte(`{"status":"401","schemes":"bearer","scope":"https://mail.google.com/"}`))
	var xe *xoauth2Error
	if !errors.As(err, &xe) || xe.Status != "401" || !tokenRefused(err) {
		t.Fatalf("%v", err)
	}
}

func TestTokenRefused(t *testing.T) {
	for err, want := range map[error]bool{
		&smtpclient.Error{Code: 535, Enhanced: smtpclient.EnhancedCode{5, 7, 3}, Text: "Authentication unsuccessful"}: true,
		&smtpclient.Error{Code: 454, Enhanced: smtpclient.EnhancedCode{4, 7, 0}, Text: "try later"}:                   false,
		&sasl.OAuthBearerError{Status: "invalid_token"}:                                                               true,
		errors.New("connection reset"): false,
	} {
		if got := tokenRefused(fmt.Errorf("AUTH: %w", err)); got != want {
			t.Errorf("%v: %v", err, got)
		}
	}
}

// A token endpoint that counts its grants, with tokens of a given life.
func tokenServer(t *testing.T, life time.Duration) (*httptest.Server, *atomic.Int32) {
	var n atomic.Int32
	s := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		id, secret, ok := r.BasicAuth()
		if r.Method != http.MethodPost || r.FormValue("grant_type") != "client_credentials" || !ok || id != "cid" || secret != "sec" {
			http.Error(w, `{"error":"invalid_client"}`, http.StatusUnauthorized)
			return
		}
		if r.FormValue("scope") != "https://outlook.office365.com/.default" {
			http.Error(w, `{"error":"invalid_scope"}`, http.StatusBadRequest)
			return
		}
		k := n.Add(1)
		w.Header().Set("Content-Type", "application/json")
		fmt.Fprintf(w, `{"access_token":"tok%d","token_type":"Bearer","expires_in":%d}`, k, int(life.Seconds()))
	}))
	t.Cleanup(s.Close)
	return s, &n
}

func TestClientCredentialsCachesAndRefreshes(t *testing.T) {
	s, grants := tokenServer(t, time.Hour)
	now := time.Now()
	cc := NewClientCredentials(s.URL, "cid", "sec", []string{"https://outlook.office365.com/.default"}, nil)
	cc.now = func() time.Time { return now }
	ctx := context.Background()
	for i := 0; i < 3; i++ {
		if tok, err := cc.Token(ctx); tok != "tok1" || err != nil {
			t.Fatalf("%q %v", tok, err)
		}
	}
	// Shortly before it expires, the token is replaced.
	now = now.Add(time.Hour - 30*time.Second)
	if tok, _ := cc.Token(ctx); tok != "tok2" {
		t.Fatalf("not refreshed before expiry: %q", tok)
	}
	// A refused token is dropped.
	cc.Invalidate()
	if tok, _ := cc.Token(ctx); tok != "tok3" || grants.Load() != 3 {
		t.Fatalf("%q after %d grants", tok, grants.Load())
	}
}

func TestClientCredentialsShortLivedTokens(t *testing.T) {
	s, grants := tokenServer(t, 20*time.Second)
	now := time.Now()
	cc := NewClientCredentials(s.URL, "cid", "sec", []string{"https://outlook.office365.com/.default"}, nil)
	cc.now = func() time.Time { return now }
	cc.Token(context.Background())
	now = now.Add(10 * time.Second) // still good: a quarter of its life remains
	cc.Token(context.Background())
	if grants.Load() != 1 {
		t.Fatalf("a 20 s token was fetched %d times in 10 s", grants.Load())
	}
}

func TestClientCredentialsRefused(t *testing.T) {
	s, _ := tokenServer(t, time.Hour)
	cc := NewClientCredentials(s.URL, "cid", "wrong", []string{"https://outlook.office365.com/.default"}, nil)
	if _, err := cc.Token(context.Background()); err == nil || !strings.Contains(err.Error(), "invalid_client") {
		t.Fatalf("%v", err)
	}
}

func TestTokenFileFollowsChanges(t *testing.T) {
	path := filepath.Join(t.TempDir(), "token")
	os.WriteFile(path, []byte("first\n"), 0o600)
	f := NewTokenFile(path)
	if tok, err := f.Token(context.Background()); tok != "first" || err != nil {
		t.Fatalf("%q %v", tok, err)
	}
	// A sidecar replaces the file (the new one is longer, so a change is
	// seen even within the file system's timestamp granularity).
	os.WriteFile(path+".new", []byte("second-token"), 0o600)
	os.Rename(path+".new", path)
	if tok, _ := f.Token(context.Background()); tok != "second-token" {
		t.Fatalf("%q", tok)
	}
	os.WriteFile(path, []byte("  \n"), 0o600)
	f.Invalidate()
	if _, err := f.Token(context.Background()); err == nil {
		t.Fatal("an empty token file gave a token")
	}
	os.Remove(path)
	if _, err := f.Token(context.Background()); err == nil {
		t.Fatal("a missing token file gave a token")
	}
}
