package relay

import (
	"context"
	"log/slog"

	"github.com/smarthost/smarthost/policy"
	"github.com/smarthost/smarthost/relay/smtpd"
)

// session is one SMTP session: from EHLO (or STARTTLS, which starts a new
// one) to QUIT. smtpd calls it from one goroutine; its errors become replies
// in reply.go, and its refusals are logged and counted by Backend.refused.
type session struct {
	id         string // in every log line of the session
	be         *Backend
	deps       *Deps
	conn       *smtpd.Conn
	log        *slog.Logger
	tls        bool
	tlsVersion uint16
	tlsCipher  uint16
	helo       string

	client     policy.Client
	signDomain string // of the message being signed
	from       string // the envelope sender, rewritten if a rule says so
	// rewrite is the policy's rewrite rule for this transaction (nil:
	// none) and sentFrom the sender as the client gave it.
	rewrite  *policy.Rewrite
	sentFrom string
	rcpts    []string
	utf8     bool // MAIL ... SMTPUTF8
	// givenFrom is the last MAIL address as the client gave it, accepted
	// or not, and givenRcpt the RCPT address being checked (cleared once
	// taken): what the log of a refusal names.
	givenFrom, givenRcpt string
	messageID            string // of the message being received, for the log

	// DSN parameters (RFC 3461), passed upstream and used for bounces.
	dsnRet    string
	dsnEnvID  string
	dsnNotify [][]string // per recipient of rcpts
	dsnORcpt  []orcpt    // per recipient of rcpts
}

type orcpt struct{ typ, addr string }

var _ smtpd.Session = (*session)(nil)

func (s *session) userName() string {
	if s.client.User == nil {
		return ""
	}
	return s.client.User.Name
}

func (s *session) Mail(from string, opts smtpd.MailOptions) error {
	s.Reset()
	s.givenFrom = from
	if err := s.deps.Policy.CheckSender(s.client, from); err != nil {
		return err
	}
	// smtpd has already refused a SIZE= above the limit.
	if q := s.deps.Quotas; q != nil {
		user, class := s.quotaKey()
		// SIZE= first: it only looks, so a refused MAIL costs nothing.
		if opts.Size > 0 {
			if err := q.CheckSize(context.Background(), user, class, opts.Size); err != nil {
				return err
			}
		}
		if err := q.Mail(context.Background(), user, class); err != nil {
			return err
		}
	}
	s.from, s.sentFrom = from, from
	// Ownership was checked on what the client sent; a relay peer's
	// sender was rewritten, if at all, where it was submitted.
	if from != "" && !s.deps.Policy.Peer(s.client) {
		if rw := s.deps.Policy.RewriteFor(s.client, from); rw != nil {
			s.rewrite, s.from = rw, rw.SenderFor(from)
		}
	}
	s.utf8 = opts.UTF8
	s.dsnRet = opts.Return
	s.dsnEnvID = opts.EnvelopeID
	return nil
}

func (s *session) Rcpt(to string, opts smtpd.RcptOptions) error {
	s.givenRcpt = to
	if err := s.deps.Policy.CheckRecipient(s.client, to); err != nil {
		return err
	}
	if q := s.deps.Quotas; q != nil {
		user, class := s.quotaKey()
		if err := q.Rcpt(context.Background(), user, class); err != nil {
			return err
		}
	}
	s.givenRcpt = "" // taken: a later refusal by smtpd is not about it
	s.rcpts = append(s.rcpts, to)
	s.dsnNotify = append(s.dsnNotify, opts.Notify)
	s.dsnORcpt = append(s.dsnORcpt, orcpt{opts.ORcptType, opts.ORcpt})
	return nil
}

// quotaKey is whose budget a transaction spends: the user's, or for a
// trusted network without AUTH, the client address's, with default limits.
func (s *session) quotaKey() (user, class string) {
	if s.client.User != nil {
		return s.client.User.Name, s.client.User.Class
	}
	return "net:" + s.client.Addr.String(), ""
}

func (s *session) Reset() {
	s.from, s.sentFrom, s.rewrite = "", "", nil
	s.givenFrom, s.givenRcpt, s.messageID = "", "", ""
	s.rcpts = nil
	s.utf8 = false
	s.dsnRet, s.dsnEnvID, s.dsnNotify, s.dsnORcpt = "", "", nil, nil
}

func (s *session) Close() {}
