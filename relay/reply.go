package relay

import (
	"errors"
	"syscall"
	"time"

	"github.com/smarthost/smarthost/dkim"
	"github.com/smarthost/smarthost/policy"
	"github.com/smarthost/smarthost/ratelimit"
	"github.com/smarthost/smarthost/relay/smtpd"
)

// Errors of the SMTP front door itself; the domain packages have their own.
var (
	errTLSRequired      = errors.New("relay: AUTH before TLS")
	errIdentity         = errors.New("relay: AUTH authorization identity differs from the user")
	errUnknownMechanism = errors.New("relay: unknown SASL mechanism")
	errAuthMalformed    = errors.New("relay: malformed SASL payload")
	errHeaderTooLarge   = errors.New("relay: message header too large")
	errBadHeader        = errors.New("relay: malformed message header")
	errSpool            = errors.New("relay: spool write failed")
)

// roundUp formats a wait for people: whole seconds, at least one.
func roundUp(d time.Duration) string {
	return max(d.Truncate(time.Second)+time.Second, time.Second).String()
}

// reply is the one place where an error becomes an SMTP reply: every error
// a session returns comes through here (smtpd.Config.ReplyFor), and every
// reply is a row of smtpd's table. Anything unknown is temporary: we would
// rather have a client retry than refuse mail for a bug or an outage.
func reply(cmd string, err error) *smtpd.Reply {
	var r *smtpd.Reply
	var exceeded *ratelimit.ExceededError
	switch {
	case errors.As(err, &r):
		return r
	case errors.As(err, &exceeded) && cmd == "AUTH":
		return smtpd.ReplyAuthLocked.With(roundUp(exceeded.RetryAfter))
	case errors.As(err, &exceeded):
		return smtpd.ReplyRateLimited.With(exceeded.What, roundUp(exceeded.RetryAfter))
	case errors.Is(err, ratelimit.ErrUnavailable) && cmd != "AUTH":
		return smtpd.ReplyLimiterDown
	case errors.Is(err, errTLSRequired):
		return smtpd.ReplyEncryptionNeeded
	case errors.Is(err, errAuthMalformed):
		return smtpd.ReplyAuthMalformed
	case errors.Is(err, errUnknownMechanism):
		return smtpd.ReplyAuthMechanism
	case errors.Is(err, policy.ErrBadCredentials), errors.Is(err, errIdentity):
		return smtpd.ReplyBadCredentials
	case smtpd.DefaultReplyFor(cmd, err) != smtpd.ReplyInternal:
		return smtpd.DefaultReplyFor(cmd, err) // the server's own: framing, size, AUTH encoding
	case cmd == "AUTH":
		return smtpd.ReplyAuthTempFail
	case errors.Is(err, policy.ErrAuthRequired):
		return smtpd.ReplyAuthRequired
	case errors.Is(err, policy.ErrBadAddress) && cmd == "MAIL":
		return smtpd.ReplyBadSender
	case errors.Is(err, policy.ErrBadAddress):
		return smtpd.ReplyBadRecipient
	case errors.Is(err, policy.ErrSenderNotOwned):
		return smtpd.ReplySenderNotOwned
	case errors.Is(err, policy.ErrHeaderNotOwned):
		return smtpd.ReplyHeaderNotOwned
	case errors.Is(err, policy.ErrHeaderMissing):
		return smtpd.ReplyHeaderMissing
	case errors.Is(err, policy.ErrRelayDenied):
		return smtpd.ReplyRelayDenied
	case errors.Is(err, policy.ErrRecipientRefused):
		return smtpd.ReplyRcptNotAllowed
	case errors.Is(err, errHeaderTooLarge):
		return smtpd.ReplyTooLarge
	case errors.Is(err, errBadHeader):
		return smtpd.ReplyBadHeader
	case errors.Is(err, dkim.ErrNoKey):
		return smtpd.ReplyNoDKIMKey
	case errors.Is(err, errSpool) && errors.Is(err, syscall.ENOSPC), errors.Is(err, errSpool) && errors.Is(err, syscall.EDQUOT):
		return smtpd.ReplyDiskFull
	case errors.Is(err, errSpool):
		return smtpd.ReplySpoolFailed
	}
	return smtpd.ReplyInternal
}
