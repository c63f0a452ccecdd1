// Package relay is what the SMTP front door means: the Backend whose
// sessions (served by relay/smtpd, which owns the listeners, the
// connections and the protocol) apply AUTH, the submission policy and the
// rate limits, and the DATA pipeline that signs a message and queues it;
// the mapping of their errors to replies; and the front door's metrics.
package relay

import (
	"context"
	"crypto/rand"
	"encoding/hex"
	"errors"
	"fmt"
	"log/slog"
	"sync"
	"sync/atomic"
	"time"

	"github.com/prometheus/client_golang/prometheus"

	"github.com/smarthost/smarthost/dkim"
	"github.com/smarthost/smarthost/policy"
	"github.com/smarthost/smarthost/ratelimit"
	"github.com/smarthost/smarthost/relay/headers"
	"github.com/smarthost/smarthost/relay/queue"
	"github.com/smarthost/smarthost/relay/smtpd"
)

// BackendConfig is what the sessions keep for the whole process; Deps
// change at reload.
type BackendConfig struct {
	AllowInsecureAuth bool          // AUTH without TLS (tests only)
	AuthTimeout       time.Duration // per credential check; default 30s
	MaxHeaderSize     int           // header block kept in memory; default 1MiB
	Metrics           *Metrics      // nil: counted on a private registry, never shown
	Log               *slog.Logger
}

// Received: field forms.
const (
	ReceivedFull      = "full"
	ReceivedAnonymous = "anonymous"
)

// Deps are the parts a session works with. They are swapped as a whole on
// reload; a session keeps the set it started with.
type Deps struct {
	Policy      *policy.Policy
	Signer      *dkim.Signer // nil: no signing
	RejectNoKey bool         // on_missing_key: reject
	Queue       *queue.Queue
	Quotas      *ratelimit.Quotas // nil: no limits
	Headers     *headers.Rules    // header privacy; nil: none
	// Received is how much the Received: field says of the client:
	// ReceivedFull (name and address, also for "") or ReceivedAnonymous
	// (neither).
	Received string
}

// Backend gives the SMTP protocol its meaning: smtpd.Server asks it for a
// session at each EHLO, and its Hooks log and count what the server does.
type Backend struct {
	cfg  BackendConfig
	deps atomic.Pointer[Deps]
	// readers recycles the 32 KiB buffers DATA reads messages through.
	readers sync.Pool
}

var _ smtpd.Backend = (*Backend)(nil)

// NewBackend makes the sessions' backend with deps.
func NewBackend(cfg BackendConfig, deps Deps) *Backend {
	if cfg.AuthTimeout == 0 {
		cfg.AuthTimeout = 30 * time.Second
	}
	if cfg.MaxHeaderSize == 0 {
		cfg.MaxHeaderSize = 1 << 20
	}
	if cfg.Metrics == nil {
		cfg.Metrics = NewMetrics(prometheus.NewRegistry())
	}
	if cfg.Log == nil {
		cfg.Log = slog.New(slog.DiscardHandler)
	}
	b := &Backend{cfg: cfg}
	b.deps.Store(&deps)
	return b
}

// Reload swaps the dependencies; open sessions keep their snapshot.
func (b *Backend) Reload(deps Deps) { b.deps.Store(&deps) }

// Hooks are what smtpd.Config.Hooks takes from the relay: its reply
// mapping, and the refusals, connections and TLS handshakes it logs and
// counts.
func (b *Backend) Hooks() smtpd.Hooks {
	m := b.cfg.Metrics
	return smtpd.Hooks{
		ReplyFor: reply,
		Refused:  b.refused,
		Accepted: func(listener string) { m.connections.WithLabelValues(listener).Inc() },
		ConnState: func(listener string, open bool) {
			if open {
				m.connectionsNow.WithLabelValues(listener).Inc()
			} else {
				m.connectionsNow.WithLabelValues(listener).Dec()
			}
		},
		TLSHandshake: func(done bool) {
			if done {
				m.tls.WithLabelValues("ok").Inc()
			} else {
				m.tls.WithLabelValues("started").Inc()
			}
		},
	}
}

// NewSession starts a session at EHLO or HELO (and again after STARTTLS),
// with the Deps of this moment.
func (b *Backend) NewSession(c *smtpd.Conn) (smtpd.Session, error) {
	state, isTLS := c.TLSConnectionState()
	var id [6]byte
	rand.Read(id[:])
	sess := &session{
		id:   hex.EncodeToString(id[:]),
		be:   b,
		deps: b.deps.Load(),
		conn: c,
		tls:  isTLS,
		helo: c.Hostname(),
	}
	if isTLS {
		sess.tlsVersion, sess.tlsCipher = state.Version, state.CipherSuite
	}
	sess.client.Addr = c.RemoteAddr()
	sess.log = b.cfg.Log.With("session", sess.id, "remote", sess.client.Addr.String(), "tls", isTLS)
	sess.log.Info("session", "helo", sanitizeHelo(c.Hostname()), "listener", c.Listener())
	return sess, nil
}

// refused logs and counts a refusal (smtpd.Hooks.Refused): every reply
// marked as one, protocol and policy alike.
func (b *Backend) refused(c *smtpd.Conn, cmd string, r *smtpd.Reply, cause error) {
	m := b.cfg.Metrics
	m.replies.WithLabelValues(cmd, fmt.Sprint(r.Code), fmt.Sprintf("%d.%d.%d", r.Enhanced[0], r.Enhanced[1], r.Enhanced[2])).Inc()
	log := b.cfg.Log.With("remote", c.RemoteAddr().String())
	sess, _ := c.Session().(*session)
	if sess != nil {
		// Each key once (a JSON decoder may refuse a line with two), and
		// the addresses as the client gave them: a refused sender too.
		log = sess.log.With("user", sess.userName(), "from", sess.givenFrom)
		if cmd == "RCPT" && sess.givenRcpt != "" {
			log = log.With("rcpt", sess.givenRcpt) // the one Rcpt refused
		}
		if sess.messageID != "" {
			log = log.With("message_id", sess.messageID)
		}
		var ex *ratelimit.ExceededError
		if errors.As(cause, &ex) {
			_, class := sess.quotaKey()
			m.limitHits.WithLabelValues(ex.What, sess.deps.Quotas.ClassOf(class)).Inc()
		}
		if errors.Is(cause, policy.ErrRecipientRefused) {
			m.rcptRules.WithLabelValues(sess.deps.Policy.RulesOf(sess.client)).Inc()
		}
	}
	lvl := slog.LevelInfo
	switch r.Row() {
	case smtpd.ReplyInternal, smtpd.ReplySpoolFailed, smtpd.ReplyDiskFull, smtpd.ReplyAuthTempFail, smtpd.ReplyPanic:
		lvl = slog.LevelError
	}
	args := []any{"cmd", cmd, "code", r.Code, "enhanced", fmt.Sprintf("%d.%d.%d", r.Enhanced[0], r.Enhanced[1], r.Enhanced[2]), "reply", r.Text}
	if cause != nil {
		args = append(args, "err", cause)
	}
	if reason := policy.RefusalReason(cause); reason != "" {
		args = append(args, "reason", reason) // disabled, locked, ...: the account's state
	}
	log.Log(context.Background(), lvl, "rejected", args...)
}
