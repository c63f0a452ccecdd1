package relay

import (
	"errors"
	"time"

	"github.com/emersion/go-smtp"

	"github.com/smarthost/smarthost/dkim"
	"github.com/smarthost/smarthost/policy"
	"github.com/smarthost/smarthost/ratelimit"
	"github.com/smarthost/smarthost/relay/smtpd"
)

// roundUp formats a wait for people: whole seconds, at least one.
func roundUp(d time.Duration) string {
	return max(d.Truncate(time.Second)+time.Second, time.Second).String()
}

// Errors of the SMTP front door itself; the domain packages have their own.
var (
	errTLSRequired    = errors.New("relay: AUTH before TLS")
	errIdentity       = errors.New("relay: AUTH authorization identity differs from the user")
	errHeaderTooLarge = errors.New("relay: message header too large")
	errBadHeader      = errors.New("relay: malformed message header")
	errShuttingDown   = errors.New("relay: shutting down")
	errSpool          = errors.New("relay: spool write failed")
)

func code(c, a, b, d int, msg string) *smtp.SMTPError {
	return &smtp.SMTPError{Code: c, EnhancedCode: smtp.EnhancedCode{a, b, d}, Message: msg}
}

// Replies whose text the contract fixes.
var (
	replyAuthRequired   = code(530, 5, 7, 0, "Authentication required")
	replyTLSRequired    = code(538, 5, 7, 11, "Encryption required")
	replyBadCredentials = code(535, 5, 7, 8, "Authentication credentials invalid")
	replyAuthTempFail   = code(454, 4, 7, 0, "Temporary authentication failure")
	replySenderNotOwned = code(553, 5, 7, 1, "Sender address rejected: not owned by user")
	replyHeaderNotOwned = code(550, 5, 7, 1, "From or Sender header address not owned by user")
	replyHeaderMissing  = code(550, 5, 7, 1, "Message needs exactly one From header with an address you own")
	replyRelayDenied    = code(554, 5, 7, 1, "Relay access denied")
	replyBadAddress     = code(501, 5, 1, 3, "Bad recipient address syntax")
	replyBadSender      = code(553, 5, 1, 7, "Bad sender address syntax")
	replyTooLarge       = code(552, 5, 3, 4, "Message too large")
	replyBareLineEnding = code(554, 5, 6, 0, "Message has bare CR or LF line endings; use CRLF")
	replyLineTooLong    = code(500, 5, 5, 2, "Line too long")
	replyNUL            = code(554, 5, 6, 0, "Message has a NUL character")
	replyBadHeader      = code(554, 5, 6, 0, "Malformed message header")
	replyNoDKIMKey      = code(550, 5, 7, 1, "Sender domain has no signing key here")
	replyShuttingDown   = code(421, 4, 3, 2, "Service shutting down, try again later")
	replyTooManyConns   = code(421, 4, 7, 0, "Too many connections from your address")
	replySpool          = code(451, 4, 3, 0, "Could not queue the message, try again later")
	replyInternal       = code(451, 4, 3, 0, "Internal error, try again later")
	replyLimiterDown    = code(451, 4, 4, 3, "Rate limit service unavailable, try again later")
)

// reply is the one place where an error becomes an SMTP reply. Domain
// packages return plain errors, which smtpd would answer with a generic
// text, so every error a session returns goes through here first.
// Anything unknown is temporary: we would rather have a client retry than
// refuse mail for a bug or an outage.
func reply(cmd string, err error) *smtp.SMTPError {
	var se *smtp.SMTPError
	var exceeded *ratelimit.ExceededError
	switch {
	case errors.As(err, &exceeded) && cmd == "AUTH":
		return code(454, 4, 7, 0, "Too many failed authentications from your address; try again in "+roundUp(exceeded.RetryAfter))
	case errors.As(err, &exceeded):
		return code(450, 4, 7, 1, "Rate limit reached for "+exceeded.What+"; try again in "+roundUp(exceeded.RetryAfter))
	case errors.Is(err, ratelimit.ErrUnavailable) && cmd != "AUTH":
		return replyLimiterDown
	case errors.As(err, &se):
		return se // smtpd's own (message size) or one we built already
	case errors.Is(err, errTLSRequired):
		return replyTLSRequired
	case errors.Is(err, policy.ErrBadCredentials), errors.Is(err, errIdentity):
		return replyBadCredentials
	case cmd == "AUTH":
		return replyAuthTempFail
	case errors.Is(err, policy.ErrAuthRequired):
		return replyAuthRequired
	case errors.Is(err, policy.ErrBadAddress) && cmd == "MAIL":
		return replyBadSender
	case errors.Is(err, policy.ErrBadAddress):
		return replyBadAddress
	case errors.Is(err, policy.ErrSenderNotOwned):
		return replySenderNotOwned
	case errors.Is(err, policy.ErrHeaderNotOwned):
		return replyHeaderNotOwned
	case errors.Is(err, policy.ErrHeaderMissing):
		return replyHeaderMissing
	case errors.Is(err, policy.ErrRelayDenied):
		return replyRelayDenied
	case errors.Is(err, errHeaderTooLarge):
		return replyTooLarge
	case errors.Is(err, smtpd.ErrLineTooLong):
		return replyLineTooLong
	case errors.Is(err, smtpd.ErrBareLineEnding):
		return replyBareLineEnding
	case errors.Is(err, smtpd.ErrNUL):
		return replyNUL
	case errors.Is(err, errBadHeader):
		return replyBadHeader
	case errors.Is(err, dkim.ErrNoKey):
		return replyNoDKIMKey
	case errors.Is(err, errShuttingDown):
		return replyShuttingDown
	case errors.Is(err, errSpool):
		return replySpool
	}
	return replyInternal
}
