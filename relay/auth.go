package relay

import (
	"cmp"
	"context"
	"errors"
	"fmt"
	"unicode/utf8"

	"github.com/emersion/go-sasl"

	"github.com/smarthost/smarthost/policy"
	"github.com/smarthost/smarthost/ratelimit"
	"github.com/smarthost/smarthost/relay/smtpd"
)

// AuthMechanisms is what EHLO advertises: nothing before TLS, so that
// clients that look before they leap never offer a password in the clear.
func (s *session) AuthMechanisms() []string {
	if !s.tls && !s.be.cfg.AllowInsecureAuth {
		return nil
	}
	return []string{sasl.Plain, sasl.Login}
}

// Auth runs one SASL exchange (PLAIN or LOGIN). A response that is not
// base64, or a payload that is not what the mechanism defines, is a failed
// login like a wrong password: it counts towards the lockout and is
// logged, and gets 501 5.5.2 (RFC 4954 4).
func (s *session) Auth(mech string, initial []byte, next func([]byte) ([]byte, error)) error {
	if !s.tls && !s.be.cfg.AllowInsecureAuth {
		return errTLSRequired
	}
	verified := false // the mechanism handed over credentials
	check := func(identity, username, password string) error {
		verified = true
		if !utf8.ValidString(identity + username + password) {
			return s.failedLogin(fmt.Errorf("%w: not UTF-8", errAuthMalformed))
		}
		if identity != "" && identity != username {
			return s.failedLogin(errIdentity)
		}
		return s.authenticate(username, password)
	}
	var srv sasl.Server
	switch mech {
	case sasl.Plain:
		srv = sasl.NewPlainServer(check)
	case sasl.Login:
		srv = &loginServer{auth: func(u, p string) error { return check("", u, p) }}
	default:
		return errUnknownMechanism
	}
	resp := initial
	for {
		challenge, done, err := srv.Next(resp)
		if err != nil {
			if !verified {
				// go-sasl's "invalid response": the payload's shape.
				return s.failedLogin(fmt.Errorf("%w: %w", errAuthMalformed, err))
			}
			return err
		}
		if done {
			return nil
		}
		if resp, err = next(challenge); err != nil {
			if errors.Is(err, smtpd.ErrAuthMalformed) {
				return s.failedLogin(err)
			}
			return err
		}
	}
}

// failedLogin counts a login refused before the directory was asked (a
// malformed response, a foreign identity) like a wrong password.
func (s *session) failedLogin(err error) error {
	ctx, cancel := context.WithTimeout(context.Background(), s.be.cfg.AuthTimeout)
	defer cancel()
	if q := s.deps.Quotas; q != nil {
		q.LoginFailed(ctx, s.client.Addr.String())
	}
	s.be.cfg.Metrics.auth.WithLabelValues("failure").Inc()
	return err
}

func (s *session) authenticate(username, password string) error {
	ctx, cancel := context.WithTimeout(context.Background(), s.be.cfg.AuthTimeout)
	defer cancel()
	ip := s.client.Addr.String()
	q := s.deps.Quotas
	m := s.be.cfg.Metrics
	if q != nil {
		if err := q.LoginAllowed(ctx, ip); err != nil {
			result := "tempfail"
			if errors.As(err, new(*ratelimit.ExceededError)) {
				result = "throttled"
			}
			m.auth.WithLabelValues(result).Inc()
			return err
		}
	}
	u, err := s.deps.Policy.Authenticate(ctx, username, password)
	if errors.Is(err, policy.ErrBadCredentials) && q != nil {
		q.LoginFailed(ctx, ip)
	}
	if err != nil {
		result := "tempfail"
		if errors.Is(err, policy.ErrBadCredentials) {
			// "locked", "disabled", ... where the directory said why.
			result = cmp.Or(policy.RefusalReason(err), "failure")
		}
		m.auth.WithLabelValues(result).Inc()
		return err
	}
	m.auth.WithLabelValues("success").Inc()
	s.client.User = u
	s.log.Info("authenticated", "user", u.Name)
	return nil
}

// loginServer is the LOGIN mechanism (draft-murchison-sasl-login), which
// go-sasl no longer has on the server side; Outlook and many devices use it.
type loginServer struct {
	auth     func(user, pass string) error
	state    int
	username string
}

var errLoginState = errors.New("relay: unexpected LOGIN response")

func (l *loginServer) Next(response []byte) (challenge []byte, done bool, err error) {
	switch l.state {
	case 0:
		if response == nil {
			l.state = 1
			return []byte("Username:"), false, nil
		}
		// AUTH LOGIN <base64 username> as initial response.
		l.username, l.state = string(response), 2
		return []byte("Password:"), false, nil
	case 1:
		l.username, l.state = string(response), 2
		return []byte("Password:"), false, nil
	case 2:
		l.state = 3
		return nil, true, l.auth(l.username, string(response))
	}
	return nil, true, errLoginState
}
