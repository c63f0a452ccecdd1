package smtpd

import (
	"errors"
	"io"
)

// Backend starts a Session when a client greets (EHLO or HELO), and again
// after STARTTLS.
type Backend interface {
	NewSession(c *Conn) (Session, error)
}

// Session is what one SMTP session means; the server owns the protocol.
// The server calls it from one goroutine. Every error a method returns
// becomes a reply through Hooks.ReplyFor: a *Reply as it is, anything else
// as that function maps it, so no error text ever reaches the client
// unchecked.
type Session interface {
	// AuthMechanisms are the SASL mechanisms EHLO advertises.
	AuthMechanisms() []string
	// Auth runs one SASL exchange for mech. initial is the initial
	// response (nil: none given; empty: "="). next sends a challenge (334)
	// and returns the client's decoded answer, or ErrAuthMalformed (not
	// base64), ErrAuthCancelled ("*") or the connection's error. A nil
	// return is success.
	Auth(mech string, initial []byte, next func(challenge []byte) ([]byte, error)) error
	Mail(from string, opts MailOptions) error
	Rcpt(to string, opts RcptOptions) error
	// Data reads the message (dot-stuffing undone, framing checked) and
	// returns the queue ID it was acknowledged under.
	Data(r io.Reader) (id string, err error)
	// Reset ends the transaction (RSET, EHLO, after DATA).
	Reset()
	// Close ends the session (QUIT, STARTTLS, the connection closing).
	Close()
}

// MailOptions are the parameters of MAIL FROM.
type MailOptions struct {
	Size       int64   // SIZE= (RFC 1870); 0: not given
	UTF8       bool    // SMTPUTF8 (RFC 6531)
	Body       string  // BODY=7BIT or 8BITMIME; "": not given
	Return     string  // RET=FULL or HDRS (RFC 3461)
	EnvelopeID string  // ENVID=, xtext decoded
	Auth       *string // AUTH= (RFC 4954 5), decoded; "" for <>
}

// RcptOptions are the parameters of RCPT TO.
type RcptOptions struct {
	Notify []string // NOTIFY= (RFC 3461): NEVER, or SUCCESS, FAILURE, DELAY
	// ORCPT= (RFC 3461, RFC 6533): the address type, "rfc822" or
	// "utf-8", and the address, decoded.
	ORcptType string
	ORcpt     string
}

// Errors a Session may see.
var (
	// From the message reader in Data. The connection is closed after the
	// reply: the client and we no longer agree where the message ends.
	ErrBareLineEnding = errors.New("smtpd: bare CR or LF")
	ErrNUL            = errors.New("smtpd: NUL character")
	ErrLineTooLong    = errors.New("smtpd: line too long")
	// From the message reader in Data, past Limits.MaxMessageBytes; the
	// rest of the message is read and dropped by the server.
	ErrDataTooLarge = errors.New("smtpd: message too large")
	// From next in Auth.
	ErrAuthMalformed = errors.New("smtpd: AUTH response is not valid base64")
	ErrAuthCancelled = errors.New("smtpd: AUTH cancelled by the client")
)
