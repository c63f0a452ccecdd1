package relay

import (
	"errors"
	"fmt"
	"testing"

	"github.com/emersion/go-smtp"

	"github.com/smarthost/smarthost/dkim"
	"github.com/smarthost/smarthost/policy"
	"github.com/smarthost/smarthost/relay/smtpd"
)

// One row per line of the contract's reply table that reply() decides.
func TestReplyTable(t *testing.T) {
	wrap := func(err error) error { return fmt.Errorf("context: %w", err) }
	for _, tc := range []struct {
		cmd  string
		err  error
		want string
	}{
		{"MAIL", policy.ErrAuthRequired, "530 5.7.0 Authentication required"},
		{"AUTH", errTLSRequired, "538 5.7.11 Encryption required"},
		{"AUTH", wrap(policy.ErrBadCredentials), "535 5.7.8 Authentication credentials invalid"},
		{"AUTH", errors.New("ldap: i/o timeout"), "454 4.7.0 Temporary authentication failure"},
		{"MAIL", wrap(policy.ErrSenderNotOwned), "553 5.7.1 Sender address rejected: not owned by user"},
		{"DATA", wrap(policy.ErrHeaderNotOwned), "550 5.7.1 From or Sender header address not owned by user"},
		{"DATA", policy.ErrHeaderMissing, "550 5.7.1 Message needs exactly one From header with an address you own"},
		{"RCPT", wrap(policy.ErrRelayDenied), "554 5.7.1 Relay access denied"},
		{"DATA", smtp.ErrDataTooLarge, "552 5.3.4 Maximum message size exceeded"},
		{"DATA", errHeaderTooLarge, "552 5.3.4 Message too large"},
		{"DATA", smtpd.ErrBareLineEnding, "554 5.6.0 Message has bare CR or LF line endings; use CRLF"},
		{"DATA", smtpd.ErrNUL, "554 5.6.0 Message has a NUL character"},
		{"DATA", wrap(errSpool), "451 4.3.0 Could not queue the message, try again later"},
		{"DATA", wrap(dkim.ErrNoKey), "550 5.7.1 Sender domain has no signing key here"},
		{"DATA", smtpd.ErrLineTooLong, "500 5.5.2 Line too long"},
		{"EHLO", errShuttingDown, "421 4.3.2 Service shutting down, try again later"},
		{"DATA", errors.New("something nobody thought of"), "451 4.3.0 Internal error, try again later"},
		{"MAIL", errors.New("redis: connection refused"), "451 4.3.0 Internal error, try again later"},
	} {
		r := reply(tc.cmd, tc.err)
		got := fmt.Sprintf("%d %d.%d.%d %s", r.Code, r.EnhancedCode[0], r.EnhancedCode[1], r.EnhancedCode[2], r.Message)
		if got != tc.want {
			t.Errorf("reply(%s, %v) = %q, want %q", tc.cmd, tc.err, got, tc.want)
		}
	}
}
