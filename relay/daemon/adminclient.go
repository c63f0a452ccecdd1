package daemon

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"net/url"
	"os"
	"strings"

	"github.com/smarthost/smarthost/configs"
)

// AdminClient asks a running relay through its HTTP endpoints
// (metrics.listen), for the commands that act on it: drain, limits show.
type AdminClient struct {
	base   string // http://host:port
	token  string // metrics.token_file's; "" without one
	client http.Client
}

// NewAdminClient is a client for the relay that runs with configuration f.
func NewAdminClient(f *configs.File) (*AdminClient, error) {
	if f.Metrics.Listen == "" {
		return nil, errors.New("the relay has no metrics.listen to ask")
	}
	c := &AdminClient{base: "http://" + dialable(f.Metrics.Listen)}
	if f.Metrics.TokenFile != "" {
		b, err := os.ReadFile(f.Metrics.TokenFile)
		if err != nil {
			return nil, err
		}
		c.token = strings.TrimSpace(string(b))
	}
	return c, nil
}

// Drain asks the relay to hand its queue to its peers and returns its
// answer once the queue is empty (Daemon.Drain), or ctx's error.
func (c *AdminClient) Drain(ctx context.Context) (string, error) {
	resp, err := c.do(ctx, http.MethodPost, "/v1/drain")
	if err != nil {
		return "", err
	}
	defer resp.Body.Close()
	body, _ := io.ReadAll(resp.Body)
	if resp.StatusCode != http.StatusOK {
		return "", fmt.Errorf("%s: %s", resp.Status, strings.TrimSpace(string(body)))
	}
	return string(body), nil
}

// Limits is the relay's view of user's limits.
func (c *AdminClient) Limits(ctx context.Context, user string) (*LimitsView, error) {
	resp, err := c.do(ctx, http.MethodGet, "/v1/limits/"+url.PathEscape(user))
	if err != nil {
		return nil, err
	}
	defer resp.Body.Close()
	var v LimitsView
	if resp.StatusCode != http.StatusOK || json.NewDecoder(resp.Body).Decode(&v) != nil {
		return nil, fmt.Errorf("the relay answered %s", resp.Status)
	}
	return &v, nil
}

// getJSON decodes the answer to GET path into v.
func (c *AdminClient) getJSON(ctx context.Context, path string, v any) error {
	resp, err := c.do(ctx, http.MethodGet, path)
	if err != nil {
		return err
	}
	defer resp.Body.Close()
	if resp.StatusCode != http.StatusOK {
		body, _ := io.ReadAll(io.LimitReader(resp.Body, 4<<10))
		return fmt.Errorf("the relay answered %s: %s", resp.Status, strings.TrimSpace(string(body)))
	}
	return json.NewDecoder(resp.Body).Decode(v)
}

func (c *AdminClient) do(ctx context.Context, method, path string) (*http.Response, error) {
	req, err := http.NewRequestWithContext(ctx, method, c.base+path, nil)
	if err != nil {
		return nil, err
	}
	if c.token != "" {
		req.Header.Set("Authorization", "Bearer "+c.token)
	}
	req.Header.Set(RequestHeader, "1")
	return c.client.Do(req)
}

// dialable turns a listen address into one to connect to: a wildcard host
// becomes loopback.
func dialable(addr string) string {
	host, port, err := net.SplitHostPort(addr)
	if err != nil {
		return addr
	}
	if host == "" || host == "0.0.0.0" || host == "::" {
		host = "127.0.0.1"
	}
	return net.JoinHostPort(host, port)
}

// Ready asks a relay's /readyz at address, and returns nil if it is ready.
func Ready(ctx context.Context, address string) error {
	req, err := http.NewRequestWithContext(ctx, http.MethodGet, address, nil)
	if err != nil {
		return err
	}
	var client http.Client
	resp, err := client.Do(req)
	if err != nil {
		return err
	}
	resp.Body.Close()
	if resp.StatusCode != http.StatusOK {
		return errors.New(resp.Status)
	}
	return nil
}
