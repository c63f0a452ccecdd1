package relay

import (
	"errors"
	"fmt"
	"syscall"
	"testing"

	"github.com/smarthost/smarthost/dkim"
	"github.com/smarthost/smarthost/policy"
	"github.com/smarthost/smarthost/ratelimit"
	"github.com/smarthost/smarthost/relay/smtpd"
)

// One row per error reply() decides, with the whole line it gives.
func TestReplyFor(t *testing.T) {
	wrap := func(err error) error { return fmt.Errorf("context: %w", err) }
	for _, tc := range []struct {
		cmd  string
		err  error
		want string
	}{
		{"MAIL", policy.ErrAuthRequired, "530 5.7.0 Authentication required"},
		{"AUTH", errTLSRequired, "538 5.7.11 Encryption required"},
		{"AUTH", wrap(policy.ErrBadCredentials), "535 5.7.8 Authentication credentials invalid"},
		{"AUTH", errIdentity, "535 5.7.8 Authentication credentials invalid"},
		{"AUTH", errors.New("ldap: i/o timeout"), "454 4.7.0 Temporary authentication failure"},
		{"AUTH", smtpd.ErrAuthMalformed, "501 5.5.2 Malformed authentication response"},
		{"AUTH", wrap(errAuthMalformed), "501 5.5.2 Malformed authentication response"},
		{"AUTH", smtpd.ErrAuthCancelled, "501 5.0.0 Authentication cancelled"},
		{"AUTH", errUnknownMechanism, "504 5.5.4 Unrecognized authentication mechanism"},
		{"AUTH", &ratelimit.ExceededError{What: "auth_failures", RetryAfter: 90e9}, "454 4.7.0 Too many failed authentications from your address; try again in 1m31s"},
		{"AUTH", ratelimit.ErrUnavailable, "454 4.7.0 Temporary authentication failure"},
		{"MAIL", wrap(policy.ErrSenderNotOwned), "553 5.7.1 Sender address rejected: not owned by user"},
		{"MAIL", wrap(policy.ErrBadAddress), "553 5.1.7 Bad sender address syntax"},
		{"RCPT", wrap(policy.ErrBadAddress), "501 5.1.3 Bad recipient address syntax"},
		{"DATA", wrap(policy.ErrHeaderNotOwned), "550 5.7.1 From or Sender header address not owned by user"},
		{"DATA", policy.ErrHeaderMissing, "550 5.7.1 Message needs exactly one From header with an address you own"},
		{"RCPT", wrap(policy.ErrRelayDenied), "554 5.7.1 Relay access denied"},
		{"MAIL", &ratelimit.ExceededError{What: "messages", RetryAfter: 11e9}, "450 4.7.1 Rate limit reached for messages; try again in 12s"},
		{"MAIL", wrap(ratelimit.ErrUnavailable), "451 4.4.3 Rate limit service unavailable, try again later"},
		{"DATA", smtpd.ErrDataTooLarge, "552 5.3.4 Message size exceeds the limit"},
		{"DATA", errHeaderTooLarge, "552 5.3.4 Message size exceeds the limit"},
		{"DATA", smtpd.ErrBareLineEnding, "554 5.6.0 Message contains a bare CR or LF; use CRLF line endings"},
		{"DATA", smtpd.ErrNUL, "554 5.6.0 Message contains a NUL character"},
		{"DATA", smtpd.ErrLineTooLong, "554 5.6.0 Message has a line that is too long"},
		{"DATA", wrap(errBadHeader), "554 5.6.0 Malformed message header"},
		{"DATA", wrap(errSpool), "451 4.3.0 Could not queue the message, try again later"},
		{"DATA", fmt.Errorf("%w: %w", errSpool, syscall.ENOSPC), "452 4.3.1 Insufficient system storage, try again later"},
		{"DATA", wrap(dkim.ErrNoKey), "550 5.7.1 Sender domain has no signing key here"},
		{"DATA", errors.New("something nobody thought of"), "451 4.3.0 Internal error, try again later"},
		{"MAIL", errors.New("redis: connection refused"), "451 4.3.0 Internal error, try again later"},
	} {
		if got := reply(tc.cmd, tc.err).Error(); got != tc.want {
			t.Errorf("reply(%s, %v) = %q, want %q", tc.cmd, tc.err, got, tc.want)
		}
	}
}
