package relay

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"strconv"

	"github.com/emersion/go-smtp"

	"github.com/smarthost/smarthost/policy"
	"github.com/smarthost/smarthost/ratelimit"
	"github.com/smarthost/smarthost/relay/smtpd"
)

// session is one SMTP session: from EHLO (or STARTTLS, which starts a new
// one) to QUIT. smtpd calls it from one goroutine.
type session struct {
	id   string // in every log line of the session
	srv  *Server
	deps *Deps
	conn *smtpd.Conn
	log  *slog.Logger
	tls  bool
	helo string

	client     policy.Client
	signDomain string // of the message being signed
	from       string
	rcpts      []string
	utf8       bool

	// DSN parameters (RFC 3461), passed upstream and used for bounces.
	dsnRet    string
	dsnEnvID  string
	dsnNotify [][]string // per recipient of rcpts
	dsnORcpt  []string   // per recipient of rcpts
}

var (
	_ smtp.Session     = (*session)(nil)
	_ smtp.AuthSession = (*session)(nil)
)

// fail logs a refusal and returns its reply.
func (s *session) fail(cmd string, err error) error {
	r := reply(cmd, err)
	m := s.srv.cfg.Metrics
	m.replies.WithLabelValues(cmd, strconv.Itoa(r.Code), fmt.Sprintf("%d.%d.%d", r.EnhancedCode[0], r.EnhancedCode[1], r.EnhancedCode[2])).Inc()
	var ex *ratelimit.ExceededError
	if errors.As(err, &ex) {
		_, class := s.quotaKey()
		m.limitHits.WithLabelValues(ex.What, s.deps.Quotas.ClassOf(class)).Inc()
	}
	lvl := slog.LevelInfo
	if r == replyInternal || r == replySpool || r == replyAuthTempFail {
		lvl = slog.LevelError
	}
	s.log.Log(context.Background(), lvl, "rejected", "cmd", cmd, "code", r.Code,
		"enhanced", r.EnhancedCode, "user", s.userName(), "from", s.from, "err", err)
	return r
}

func (s *session) userName() string {
	if s.client.User == nil {
		return ""
	}
	return s.client.User.Name
}

func (s *session) Mail(from string, opts *smtp.MailOptions) error {
	s.Reset()
	if s.srv.closing.Load() {
		// Draining: finish what is under way, start nothing new.
		return s.fail("MAIL", errShuttingDown)
	}
	if err := s.deps.Policy.CheckSender(s.client, from); err != nil {
		return s.fail("MAIL", err)
	}
	// smtpd has already refused a SIZE= above MaxMessageBytes.
	if q := s.deps.Quotas; q != nil {
		user, class := s.quotaKey()
		// SIZE= first: it only looks, so a refused MAIL costs nothing.
		if opts != nil && opts.Size > 0 {
			if err := q.CheckSize(context.Background(), user, class, opts.Size); err != nil {
				return s.fail("MAIL", err)
			}
		}
		if err := q.Mail(context.Background(), user, class); err != nil {
			return s.fail("MAIL", err)
		}
	}
	s.from = from
	if opts != nil {
		s.utf8 = opts.UTF8
		s.dsnRet = string(opts.Return)
		s.dsnEnvID = opts.EnvelopeID
	}
	return nil
}

func (s *session) Rcpt(to string, opts *smtp.RcptOptions) error {
	if err := s.deps.Policy.CheckRecipient(s.client, to); err != nil {
		return s.fail("RCPT", err)
	}
	if q := s.deps.Quotas; q != nil {
		user, class := s.quotaKey()
		if err := q.Rcpt(context.Background(), user, class); err != nil {
			return s.fail("RCPT", err)
		}
	}
	s.rcpts = append(s.rcpts, to)
	var notify []string
	var orcpt string
	if opts != nil {
		for _, n := range opts.Notify {
			notify = append(notify, string(n))
		}
		orcpt = opts.OriginalRecipient
	}
	s.dsnNotify = append(s.dsnNotify, notify)
	s.dsnORcpt = append(s.dsnORcpt, orcpt)
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
	s.from = ""
	s.rcpts = nil
	s.utf8 = false
	s.dsnRet, s.dsnEnvID, s.dsnNotify, s.dsnORcpt = "", "", nil, nil
}

func (s *session) Logout() error { return nil }
