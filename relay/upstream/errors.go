package upstream

import (
	"context"
	"crypto/tls"
	"crypto/x509"
	"errors"
	"io"
	"io/fs"
	"net"
	"net/textproto"
	"syscall"

	"github.com/smarthost/smarthost/relay/queue"
	"github.com/smarthost/smarthost/relay/upstream/smtpclient"
)

// class is what a delivery error means for a recipient.
type class int

const (
	// temporary: retry later, and first try the route's next upstream.
	temporary class = iota
	// permanent: bounce now.
	permanent
	// unsupported: this upstream cannot take the message (no SMTPUTF8,
	// too large for its SIZE). The route's next upstream is tried; if
	// none can take it, it is permanent.
	unsupported
)

func (c class) String() string {
	return [...]string{"temporary", "permanent", "unsupported"}[c]
}

// Errors of our own making, before the upstream said anything about the
// message. Their texts carry the enhanced code that a bounce reports.
var (
	// errNoSMTPUTF8: the message needs SMTPUTF8 (RFC 6531 3.4) and the
	// upstream does not offer it.
	errNoSMTPUTF8 = errors.New("5.6.7 SMTPUTF8 required but not offered")
	// errTooLarge: the message is larger than the upstream's SIZE.
	errTooLarge = errors.New("5.3.4 message larger than the upstream's SIZE limit")
	// errConnect wraps whatever refused us before MAIL FROM: the
	// connection, TLS, AUTH. That is about the upstream, not the message.
	errConnect = errors.New("connecting")
	// errSpoolRead wraps a failure to read the message from the spool.
	errSpoolRead = errors.New("reading the spooled message")
)

// classes is the one table that decides what a delivery error means. The
// first row that matches wins. What is plainly transient (no answer, a
// broken connection, a timeout, TLS, a 4xx) is retried; an upstream's 5xx
// and an address or parameter our client cannot send (smtpclient.ErrParam)
// fail the recipient at once, rather than retrying something that cannot
// change until max_age. Whatever else is unknown is retried: a backend
// outage is never a bounce.
var classes = []struct {
	name  string
	match func(error) bool
	class class
}{
	{"the upstream cannot take the message (SMTPUTF8, SIZE)", isAny(errNoSMTPUTF8, errTooLarge), unsupported},
	{"connecting, TLS or AUTH failed before MAIL FROM", isAny(errConnect), temporary},
	{"the message could not be read from the spool", isAny(errSpoolRead), temporary},
	{"the upstream answered 4xx", isReply(4), temporary},
	{"the upstream answered 5xx", isReply(5), permanent},
	{"a local file error", isAs[*fs.PathError], temporary},
	{"cancelled or timed out", isAny(context.Canceled, context.DeadlineExceeded), temporary},
	{"the connection broke or timed out", isNetwork, temporary},
	{"TLS failed", isTLS, temporary},
	{"the upstream's reply was malformed", isAs[textproto.ProtocolError], temporary},
	{"our client cannot send the address or a parameter", isAny(smtpclient.ErrParam), permanent},
	{"anything else", func(error) bool { return true }, temporary},
}

// classify returns the class of err and the name of the row that decided.
func classify(err error) (class, string) {
	for _, c := range classes {
		if c.match(err) {
			return c.class, c.name
		}
	}
	panic("unreachable: the last row matches everything")
}

// outcome turns an error into what the queue and the router act on:
// permanent ones are marked with queue.Permanent.
func outcome(err error) error {
	if err == nil {
		return nil
	}
	if c, _ := classify(err); c == permanent {
		return queue.Permanent(err)
	}
	return err
}

// replyOf is the upstream's reply in err as it was sent, codes
// included, or "" when err is not a reply.
func replyOf(err error) string {
	var se *smtpclient.Error
	if !errors.As(err, &se) {
		return ""
	}
	return se.Error()
}

func isAny(targets ...error) func(error) bool {
	return func(err error) bool {
		for _, t := range targets {
			if errors.Is(err, t) {
				return true
			}
		}
		return false
	}
}

func isReply(class int) func(error) bool {
	return func(err error) bool {
		var se *smtpclient.Error
		return errors.As(err, &se) && se.Code/100 == class
	}
}

func isAs[T error](err error) bool {
	var t T
	return errors.As(err, &t)
}

func isNetwork(err error) bool {
	var ne net.Error
	var errno syscall.Errno
	return errors.As(err, &ne) || errors.As(err, &errno) || errors.Is(err, io.EOF) ||
		errors.Is(err, io.ErrUnexpectedEOF) || errors.Is(err, io.ErrClosedPipe) || errors.Is(err, net.ErrClosed)
}

func isTLS(err error) bool {
	var alert tls.AlertError
	var rec tls.RecordHeaderError
	var verify *tls.CertificateVerificationError
	var unknown x509.UnknownAuthorityError
	var host x509.HostnameError
	var invalid x509.CertificateInvalidError
	return errors.As(err, &alert) || errors.As(err, &rec) || errors.As(err, &verify) ||
		errors.As(err, &unknown) || errors.As(err, &host) || errors.As(err, &invalid)
}
