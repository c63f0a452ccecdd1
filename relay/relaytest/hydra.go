package relaytest

import (
	"encoding/json"
	"fmt"
	"net"
	"net/http"
	"net/url"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
	"time"
)

// Hydra is a running ORY Hydra, an OAuth2 authorization server: it issues
// tokens by the client credentials grant on Public and answers token
// introspection (RFC 7662) on Admin. scripts/test.sh builds it from the
// Go module proxy and names the binary in SMARTHOST_TEST_HYDRA. Its store
// is in memory: each test gets its own.
type Hydra struct {
	Public string // http://host:port, the token endpoint's base
	Admin  string // http://host:port, clients and introspection
}

// TokenURL is the client credentials grant's endpoint.
func (h *Hydra) TokenURL() string { return h.Public + "/oauth2/token" }

// IntrospectionURL is where an upstream checks tokens (RFC 7662).
func (h *Hydra) IntrospectionURL() string { return h.Admin + "/admin/oauth2/introspect" }

// StartHydra starts one whose access tokens live for ttl.
func StartHydra(t testing.TB, ttl time.Duration) *Hydra {
	t.Helper()
	bin := Service(t, "SMARTHOST_TEST_HYDRA")
	dir := t.TempDir()
	pub, adm := freeAddr(t), freeAddr(t)
	h := &Hydra{Public: "http://" + pub, Admin: "http://" + adm}
	ph, pp, _ := net.SplitHostPort(pub)
	ah, ap, _ := net.SplitHostPort(adm)
	write(t, filepath.Join(dir, "hydra.yml"), fmt.Sprintf(`dsn: memory
serve:
  public: {host: %s, port: %s}
  admin: {host: %s, port: %s}
urls:
  self: {issuer: %s/}
secrets:
  system: ["a-system-secret-for-tests-only-0123456789"]
ttl:
  access_token: %s
log: {level: warn}
`, ph, pp, ah, ap, h.Public, ttl))
	log := startLogged(t, "hydra", exec.Command(bin, "serve", "all", "--dev", "-c", filepath.Join(dir, "hydra.yml")))
	ready := WithinEvery(30*time.Second, 50*time.Millisecond, func() bool {
		r1, err1 := http.Get(h.Public + "/health/ready")
		r2, err2 := http.Get(h.Admin + "/health/ready")
		if err1 != nil || err2 != nil {
			if err1 == nil {
				r1.Body.Close()
			}
			if err2 == nil {
				r2.Body.Close()
			}
			return false
		}
		r1.Body.Close()
		r2.Body.Close()
		return r1.StatusCode == 200 && r2.StatusCode == 200
	})
	if !ready {
		b, _ := os.ReadFile(log)
		t.Fatalf("hydra did not start:\n%s", b)
	}
	return h
}

// Client registers a client allowed the client credentials grant for
// scope and returns its id and secret.
func (h *Hydra) Client(t testing.TB, scope string) (id, secret string) {
	t.Helper()
	secret = "secret-of-a-test-client-0123456789"
	body := fmt.Sprintf(`{"client_name":"smarthost","client_secret":%q,"grant_types":["client_credentials"],"scope":%q,"token_endpoint_auth_method":"client_secret_basic"}`, secret, scope)
	resp, err := http.Post(h.Admin+"/admin/clients", "application/json", strings.NewReader(body))
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	var c struct {
		ID string `json:"client_id"`
	}
	if err := json.NewDecoder(resp.Body).Decode(&c); err != nil || resp.StatusCode != http.StatusCreated {
		t.Fatalf("hydra: create client: %d %v", resp.StatusCode, err)
	}
	return c.ID, secret
}

// Revoke revokes every token of the client (RFC 7009 at Hydra's admin
// API), as an administrator would after a leak.
func (h *Hydra) Revoke(t testing.TB, clientID string) {
	t.Helper()
	req, _ := http.NewRequest(http.MethodDelete, h.Admin+"/admin/oauth2/tokens?client_id="+url.QueryEscape(clientID), nil)
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		t.Fatal(err)
	}
	resp.Body.Close()
	if resp.StatusCode/100 != 2 {
		t.Fatalf("hydra: revoke: %s", resp.Status)
	}
}

// Active asks the introspection endpoint whether token is live.
func (h *Hydra) Active(t testing.TB, token string) bool {
	t.Helper()
	resp, err := http.PostForm(h.IntrospectionURL(), url.Values{"token": {token}})
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	var r struct{ Active bool }
	json.NewDecoder(resp.Body).Decode(&r)
	return r.Active
}
