package relay

import (
	"context"
	"errors"

	"github.com/emersion/go-sasl"

	"github.com/smarthost/smarthost/policy"
	"github.com/smarthost/smarthost/ratelimit"
)

// AuthMechanisms is what EHLO advertises: nothing before TLS, so that
// clients that look before they leap never offer a password in the clear.
func (s *session) AuthMechanisms() []string {
	if !s.tls && !s.srv.cfg.AllowInsecureAuth {
		return nil
	}
	return []string{sasl.Plain, sasl.Login}
}

func (s *session) Auth(mech string) (sasl.Server, error) {
	if !s.tls && !s.srv.cfg.AllowInsecureAuth {
		return nil, s.fail("AUTH", errTLSRequired)
	}
	switch mech {
	case sasl.Plain:
		return sasl.NewPlainServer(func(identity, username, password string) error {
			if identity != "" && identity != username {
				return s.fail("AUTH", errIdentity)
			}
			return s.authenticate(username, password)
		}), nil
	case sasl.Login:
		return &loginServer{auth: s.authenticate}, nil
	}
	return nil, code(504, 5, 5, 4, "Unrecognized authentication mechanism")
}

func (s *session) authenticate(username, password string) error {
	ctx, cancel := context.WithTimeout(context.Background(), s.srv.cfg.AuthTimeout)
	defer cancel()
	ip := s.client.Addr.String()
	q := s.deps.Quotas
	m := s.srv.cfg.Metrics
	if q != nil {
		if err := q.LoginAllowed(ctx, ip); err != nil {
			result := "tempfail"
			if errors.As(err, new(*ratelimit.ExceededError)) {
				result = "throttled"
			}
			m.auth.WithLabelValues(result).Inc()
			return s.fail("AUTH", err)
		}
	}
	u, err := s.deps.Policy.Authenticate(ctx, username, password)
	if errors.Is(err, policy.ErrBadCredentials) && q != nil {
		q.LoginFailed(ctx, ip)
	}
	if err != nil {
		result := "tempfail"
		if errors.Is(err, policy.ErrBadCredentials) {
			result = "failure"
		}
		m.auth.WithLabelValues(result).Inc()
		return s.fail("AUTH", err)
	}
	m.auth.WithLabelValues("success").Inc()
	s.client.User = u
	s.log = s.log.With("user", u.Name)
	s.log.Info("authenticated")
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
