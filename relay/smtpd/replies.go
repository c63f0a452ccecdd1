package smtpd

import (
	"errors"
	"fmt"
)

// EnhancedCode is an RFC 3463 status code: class, subject, detail.
type EnhancedCode [3]int

// Reply is one row of the reply table: every reply the server sends is one
// of the rows below, protocol and policy alike, so that each condition has
// exactly one text and every text can be found with grep. A session refuses
// with a row (or an error that Hooks.ReplyFor maps to one); the server
// itself uses the protocol rows.
type Reply struct {
	Code     int
	Enhanced EnhancedCode // zero: none (the greeting, EHLO, 334, 354)
	// Text is a fmt format when the row takes arguments (With).
	Text string
	// Refusal marks the answers that refuse what the client asked: they
	// are logged and counted (Hooks.Refused).
	Refusal bool
	// When says in which situation the row is sent, and Args are example
	// arguments, for the table in docs/replies.md (TestReplyTableDoc).
	When string
	Args []any

	row *Reply // the table's row, for a copy made by With
}

func (r *Reply) Error() string {
	if r.Enhanced == (EnhancedCode{}) {
		return fmt.Sprintf("%d %s", r.Code, r.Text)
	}
	return fmt.Sprintf("%d %d.%d.%d %s", r.Code, r.Enhanced[0], r.Enhanced[1], r.Enhanced[2], r.Text)
}

// With fills the row's arguments.
func (r *Reply) With(args ...any) *Reply {
	c := *r
	c.Text = fmt.Sprintf(r.Text, args...)
	c.row = r.Row()
	return &c
}

// Row is the table's row r was made from.
func (r *Reply) Row() *Reply {
	if r.row != nil {
		return r.row
	}
	return r
}

func withArgs(r *Reply, args ...any) *Reply {
	r.Args = args
	return r
}

func row(code int, a, b, c int, text string, when string) *Reply {
	return &Reply{Code: code, Enhanced: EnhancedCode{a, b, c}, Text: text, Refusal: code >= 400, When: when}
}

// The reply table. Texts are plain and RFC-like; the enhanced codes are
// those RFC 3463, 4954, 5248, 6531 and 3461 give.
var (
	// Session.
	ReplyGreeting     = &Reply{Code: 220, Text: "%s ESMTP Service ready", When: "connection opened (our host name)", Args: []any{"relay.example.com"}}
	ReplyHello        = &Reply{Code: 250, Text: "%s", When: "HELO, and the first line of the EHLO reply (our host name)", Args: []any{"relay.example.com"}}
	ReplyOK           = row(250, 2, 0, 0, "OK", "RSET, NOOP")
	ReplySenderOK     = row(250, 2, 1, 0, "Sender OK", "MAIL accepted")
	ReplyRecipientOK  = row(250, 2, 1, 5, "Recipient OK", "RCPT accepted")
	ReplyStartData    = &Reply{Code: 354, Text: "End data with <CR><LF>.<CR><LF>", When: "DATA accepted"}
	ReplyQueued       = withArgs(row(250, 2, 0, 0, "OK: queued as %s", "message queued (after the spool is on disk, fsynced)"), "ID")
	ReplyCannotVRFY   = row(252, 2, 5, 0, "Cannot VRFY user, but will accept message and attempt delivery", "VRFY")
	ReplyBye          = row(221, 2, 0, 0, "Bye", "QUIT")
	ReplyReadyTLS     = row(220, 2, 0, 0, "Ready to start TLS", "STARTTLS accepted")
	ReplyAuthOK       = row(235, 2, 7, 0, "Authentication succeeded", "AUTH accepted")
	ReplyAuthContinue = &Reply{Code: 334, Text: "%s", When: "AUTH challenge (base64)", Args: []any{"<challenge>"}}

	// Protocol errors.
	ReplyUnrecognized     = row(500, 5, 5, 2, "Syntax error, command unrecognized", "an unknown or malformed command")
	ReplyNotImplemented   = withArgs(row(502, 5, 5, 1, "%s command not implemented", "HELP, EXPN, BDAT, ETRN and other commands we do not offer"), "HELP")
	ReplyHelloArg         = withArgs(row(501, 5, 5, 4, "Syntax: %s hostname", "HELO or EHLO without a name"), "EHLO")
	ReplyHelloFirst       = row(503, 5, 5, 1, "Send EHLO or HELO first", "MAIL or AUTH before EHLO")
	ReplyNestedMail       = row(503, 5, 5, 1, "Nested MAIL command", "MAIL inside a transaction")
	ReplyNeedMail         = row(503, 5, 5, 1, "Need MAIL command first", "RCPT or DATA before MAIL")
	ReplyPathSyntax       = withArgs(row(501, 5, 5, 2, "Syntax: %s:<address>", "MAIL or RCPT without a path"), "MAIL FROM")
	ReplyParamSyntax      = withArgs(row(501, 5, 5, 4, "Malformed %s parameter", "a MAIL or RCPT parameter with a bad value, or given twice"), "SIZE")
	ReplyParamUnknown     = withArgs(row(555, 5, 5, 4, "Unsupported %s parameter %s", "a MAIL or RCPT parameter we do not know"), "MAIL FROM", "FOO")
	ReplyNoArguments      = withArgs(row(501, 5, 5, 4, "%s takes no arguments", "DATA or STARTTLS with an argument"), "DATA")
	ReplyNoValidRcpts     = row(554, 5, 5, 1, "No valid recipients", "DATA after every RCPT was refused")
	ReplyNeedSMTPUTF8     = row(553, 5, 6, 7, "Must declare SMTPUTF8 to send a UTF-8 address", "a UTF-8 address without MAIL ... SMTPUTF8 (RFC 6531)")
	ReplyTooManyRcpts     = withArgs(row(452, 4, 5, 3, "Too many recipients, at most %d per message", "too many recipients"), 100)
	ReplyTooLarge         = row(552, 5, 3, 4, "Message size exceeds the limit", "message too large (SIZE= or actual)")
	ReplyBareLineEnding   = row(554, 5, 6, 0, "Message contains a bare CR or LF; use CRLF line endings", "bare CR (or bare LF with policy.bare_newline: reject) in DATA; the connection closes and the message is refused whole, never split")
	ReplyDataNUL          = row(554, 5, 6, 0, "Message contains a NUL character", "NUL in DATA; the connection closes")
	ReplyDataLineTooLong  = row(554, 5, 6, 0, "Message has a line that is too long", "a message line over 2000 bytes with policy.long_lines: reject; the connection closes")
	ReplyLineTooLong      = row(500, 5, 5, 2, "Line too long, closing connection", "a command line over 2000 bytes")
	ReplyCmdBareLine      = row(500, 5, 5, 2, "Bare CR or LF in command line, closing connection", "bare CR or LF in a command line")
	ReplyCmdNUL           = row(500, 5, 5, 2, "NUL character in command line, closing connection", "NUL in a command line")
	ReplyTooManyErrors    = row(421, 4, 7, 0, "Too many errors, closing connection", "a fourth unknown, malformed or out-of-sequence command, or MAIL refused for good (530, 553)")
	ReplyTooManyCommands  = row(421, 4, 7, 0, "Too many commands without a transaction, closing connection", "a 26th command without a MAIL (NOOP, RSET, EHLO, AUTH ...)")
	ReplyIdleTimeout      = row(421, 4, 4, 2, "Idle timeout, closing connection", "silent for the idle timeout (5 min)")
	ReplyShuttingDown     = row(421, 4, 3, 2, "Service shutting down, closing connection", "shutting down")
	ReplyTooManyConnsIP   = row(421, 4, 7, 0, "Too many connections from your address, closing connection", "too many connections from one address")
	ReplyTooManyConns     = row(421, 4, 7, 0, "Too many connections, try again later", "too many connections in all")
	ReplyPanic            = row(421, 4, 3, 0, "Internal server error, closing connection", "a bug caught while serving a command")
	ReplyTLSActive        = row(503, 5, 5, 1, "TLS already active", "STARTTLS inside TLS")
	ReplyTLSUnavailable   = row(502, 5, 5, 1, "TLS not available", "STARTTLS on a plain listener")
	ReplyEncryptionNeeded = row(538, 5, 7, 11, "Encryption required", "AUTH before TLS (AUTH is not advertised then)")
	ReplyAuthDone         = row(503, 5, 5, 1, "Already authenticated", "a second AUTH")
	ReplyAuthInMail       = row(503, 5, 5, 1, "AUTH not allowed during a mail transaction", "AUTH after MAIL")
	ReplyAuthSyntax       = row(501, 5, 5, 4, "Syntax: AUTH mechanism [initial-response]", "AUTH without a mechanism")
	ReplyAuthMechanism    = row(504, 5, 5, 4, "Unrecognized authentication mechanism", "AUTH with a mechanism we do not offer")
	ReplyAuthMalformed    = row(501, 5, 5, 2, "Malformed authentication response", "AUTH response not valid base64, or a malformed PLAIN or LOGIN payload (counted as a failed login)")
	ReplyAuthCancelled    = row(501, 5, 0, 0, "Authentication cancelled", "the client answered a challenge with *")

	// Policy, limits and queueing (the relay's; see relay/reply.go).
	ReplyAuthRequired   = row(530, 5, 7, 0, "Authentication required", "MAIL without AUTH (and not from a trusted network)")
	ReplyBadCredentials = row(535, 5, 7, 8, "Authentication credentials invalid", "bad credentials (or an AUTH identity other than the user)")
	ReplyAuthTempFail   = row(454, 4, 7, 0, "Temporary authentication failure", "the user backend (LDAP) fails or times out")
	ReplyAuthLocked     = withArgs(row(454, 4, 7, 0, "Too many failed authentications from your address; try again in %s", "too many failed logins from the address"), "<time>")
	ReplySenderNotOwned = row(553, 5, 7, 1, "Sender address rejected: not owned by user", "MAIL FROM not owned by the user (also <>)")
	ReplyBadSender      = row(553, 5, 1, 7, "Bad sender address syntax", "MAIL FROM not a plain address")
	ReplyBadRecipient   = row(501, 5, 1, 3, "Bad recipient address syntax", "recipient with routing tricks (%, !, quotes, two @)")
	ReplyRelayDenied    = row(554, 5, 7, 1, "Relay access denied", "recipient domain not allowed")
	ReplyRcptNotAllowed = row(550, 5, 7, 1, "Recipient not allowed for this sender", "the user's or its class's recipient rules refuse the recipient")
	ReplyHeaderNotOwned = row(550, 5, 7, 1, "From or Sender header address not owned by user", "From:/Sender: not owned (after DATA)")
	ReplyHeaderMissing  = row(550, 5, 7, 1, "Message needs exactly one From header with an address you own", "no From:, or more than one (after DATA)")
	ReplyBadHeader      = row(554, 5, 6, 0, "Malformed message header", "a header block that cannot be parsed")
	ReplyNoDKIMKey      = row(550, 5, 7, 1, "Sender domain has no signing key here", "no DKIM key and dkim.on_missing_key: reject")
	ReplyRateLimited    = withArgs(row(450, 4, 7, 1, "Rate limit reached for %s; try again in %s", "rate limit reached"), "<limit>", "<time>")
	ReplyLimiterDown    = row(451, 4, 4, 3, "Rate limit service unavailable, try again later", "Redis unreachable with on_backend_error: tempfail")
	ReplyDiskFull       = row(452, 4, 3, 1, "Insufficient system storage, try again later", "the spool's disk is full")
	ReplySpoolFailed    = row(451, 4, 3, 0, "Could not queue the message, try again later", "spool write failed otherwise")
	ReplyInternal       = row(451, 4, 3, 0, "Internal error, try again later", "anything unexpected (the cause goes to the log only)")
)

// Table is every row, in the order docs/replies.md lists them.
var Table = []*Reply{
	ReplyGreeting, ReplyHello, ReplyOK, ReplySenderOK, ReplyRecipientOK, ReplyStartData, ReplyQueued,
	ReplyCannotVRFY, ReplyBye, ReplyReadyTLS, ReplyAuthOK, ReplyAuthContinue,

	ReplyAuthRequired, ReplyEncryptionNeeded, ReplyBadCredentials, ReplyAuthTempFail, ReplyAuthLocked,
	ReplyAuthMalformed, ReplyAuthCancelled, ReplySenderNotOwned, ReplyBadSender, ReplyNeedSMTPUTF8,
	ReplyBadRecipient, ReplyRelayDenied, ReplyRcptNotAllowed, ReplyTooManyRcpts, ReplyRateLimited,
	ReplyLimiterDown, ReplyTooLarge, ReplyHeaderNotOwned, ReplyHeaderMissing, ReplyBadHeader,
	ReplyNoDKIMKey, ReplyBareLineEnding, ReplyDataNUL, ReplyDataLineTooLong, ReplyDiskFull,
	ReplySpoolFailed, ReplyInternal,

	ReplyUnrecognized, ReplyNotImplemented, ReplyHelloArg, ReplyHelloFirst, ReplyNestedMail,
	ReplyNeedMail, ReplyPathSyntax, ReplyParamSyntax, ReplyParamUnknown, ReplyNoArguments,
	ReplyNoValidRcpts, ReplyTLSActive, ReplyTLSUnavailable, ReplyAuthDone, ReplyAuthInMail,
	ReplyAuthSyntax, ReplyAuthMechanism, ReplyLineTooLong, ReplyCmdBareLine, ReplyCmdNUL,
	ReplyTooManyErrors, ReplyTooManyCommands, ReplyIdleTimeout, ReplyShuttingDown,
	ReplyTooManyConnsIP, ReplyTooManyConns, ReplyPanic,
}

// DefaultReplyFor maps the errors of this package, and a *Reply as it is;
// anything else is ReplyInternal. A Hooks.ReplyFor of one's own can end
// with it.
func DefaultReplyFor(_ string, err error) *Reply {
	var r *Reply
	switch {
	case errors.As(err, &r):
		return r
	case errors.Is(err, ErrBareLineEnding):
		return ReplyBareLineEnding
	case errors.Is(err, ErrNUL):
		return ReplyDataNUL
	case errors.Is(err, ErrLineTooLong):
		return ReplyDataLineTooLong
	case errors.Is(err, ErrDataTooLarge):
		return ReplyTooLarge
	case errors.Is(err, ErrAuthMalformed):
		return ReplyAuthMalformed
	case errors.Is(err, ErrAuthCancelled):
		return ReplyAuthCancelled
	}
	return ReplyInternal
}
