package upstream

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"slices"
	"strings"

	"github.com/emersion/go-sasl"

	"github.com/smarthost/smarthost/relay/upstream/smtpclient"
)

// TokenSource gives the bearer tokens an upstream's XOAUTH2 or OAUTHBEARER
// login needs (oauth2.go has the two kinds).
type TokenSource interface {
	Token(ctx context.Context) (string, error)
	// Invalidate drops the token in hand: the upstream refused it.
	Invalidate()
}

// Upstream AUTH mechanisms (auth_mechanism).
const (
	MechAuto        = "auto"
	MechPlain       = "plain"
	MechLogin       = "login"
	MechXOAuth2     = "xoauth2"
	MechOAuthBearer = "oauthbearer"
)

// mechanism picks how to log in: the one configured, or with auto the best
// one offered that there are credentials for (tokens before passwords,
// PLAIN before LOGIN). "" means no login at all.
func mechanism(u Upstream, offered []string) (string, error) {
	has := func(m string) bool {
		return slices.ContainsFunc(offered, func(o string) bool { return strings.EqualFold(o, m) })
	}
	want := u.AuthMechanism
	if want == "" || want == MechAuto {
		switch {
		case u.Tokens != nil && has("XOAUTH2"):
			return MechXOAuth2, nil
		case u.Tokens != nil && has("OAUTHBEARER"):
			return MechOAuthBearer, nil
		case u.Password != "" && has("PLAIN"):
			return MechPlain, nil
		case u.Password != "" && has("LOGIN"):
			return MechLogin, nil
		case u.Username == "" && u.Tokens == nil:
			return "", nil
		}
		return "", fmt.Errorf("upstream offers AUTH %s, none of which we have credentials for", strings.Join(offered, " "))
	}
	if !has(want) {
		return "", fmt.Errorf("upstream does not offer AUTH %s (it offers %s)", strings.ToUpper(want), strings.Join(offered, " "))
	}
	return want, nil
}

// login authenticates a fresh session. A refused token is fetched again and
// tried once more; whatever still fails is the caller's to retry later:
// logging in is about the upstream and our configuration, never about a
// message, so it never bounces one.
func login(ctx context.Context, c *smtpclient.Conn, u Upstream) error {
	ok, list := c.Extension("AUTH")
	if !ok {
		if u.Username == "" && u.Tokens == nil {
			return nil
		}
		return errors.New("upstream does not offer AUTH")
	}
	mech, err := mechanism(u, strings.Fields(list))
	if err != nil || mech == "" {
		return err
	}
	switch mech {
	case MechPlain:
		return c.Auth(ctx, sasl.NewPlainClient("", u.Username, u.Password))
	case MechLogin:
		return c.Auth(ctx, sasl.NewLoginClient(u.Username, u.Password))
	}
	for try := 0; ; try++ {
		token, err := u.Tokens.Token(ctx)
		if err != nil {
			return fmt.Errorf("OAuth2 token: %w", err)
		}
		var client sasl.Client
		if mech == MechXOAuth2 {
			client = &xoauth2Client{user: u.Username, token: token}
		} else {
			client = sasl.NewOAuthBearerClient(&sasl.OAuthBearerOptions{Username: u.Username, Token: token})
		}
		err = c.Auth(ctx, client)
		if err == nil || !tokenRefused(err) || try == 1 {
			return err
		}
		u.Tokens.Invalidate()
	}
}

// tokenRefused reports whether a login failed on the token: a 5xx (535)
// answer, or the error a 334 challenge carries (RFC 7628, XOAUTH2).
func tokenRefused(err error) bool {
	var se *smtpclient.Error
	var bearer *sasl.OAuthBearerError
	var xo *xoauth2Error
	return errors.As(err, &se) && se.Code/100 == 5 || errors.As(err, &bearer) || errors.As(err, &xo)
}

// xoauth2Client is Google's and Microsoft's XOAUTH2 mechanism, which
// go-sasl does not have: one initial response with the user and the bearer
// token; on a refusal the server sends a 334 with a JSON error. Next
// returns it as the error, and smtpclient ends the exchange with "*"
// (RFC 4954 4), which the server answers with its final refusal.
type xoauth2Client struct {
	user, token string
}

func (x *xoauth2Client) Start() (string, []byte, error) {
	return "XOAUTH2", []byte("user=" + x.user + "\x01auth=Bearer " + x.token + "\x01\x01"), nil
}

func (x *xoauth2Client) Next(challenge []byte) ([]byte, error) {
	e := &xoauth2Error{}
	if err := json.Unmarshal(challenge, e); err != nil {
		e.Status = string(challenge)
	}
	return nil, e
}

type xoauth2Error struct {
	Status  string `json:"status"`
	Schemes string `json:"schemes"`
	Scope   string `json:"scope"`
}

func (e *xoauth2Error) Error() string { return "XOAUTH2 token refused (" + e.Status + ")" }
