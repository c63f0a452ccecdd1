package relay

import (
	"bufio"
	"bytes"
	"context"
	"errors"
	"fmt"
	"io"
	"net/mail"
	"slices"
	"strings"

	"github.com/smarthost/smarthost/dkim"
	"github.com/smarthost/smarthost/policy"
	"github.com/smarthost/smarthost/relay/headers"
	"github.com/smarthost/smarthost/relay/queue"
)

// Data receives a message: it streams it into a spool draft with bounded
// memory (only the header block is held; smtpd's reader has already
// refused bare CR and NUL, and normalized or refused bare LF), checks the
// From:/Sender: owner, adds the RFC 6409 section 8 fields, DKIM-signs, and
// acknowledges only once the queue has fsynced it.
func (s *session) Data(r io.Reader) (string, error) {
	d, err := s.deps.Queue.Create()
	if err != nil {
		return "", fmt.Errorf("%w: %w", errSpool, err)
	}
	id, err := s.receive(d, r)
	if err != nil {
		d.Abort()
		return "", err
	}
	s.log.Info("queued", "msg_id", id, "message_id", s.messageID, "from", s.from, "user", s.userName(),
		"rcpts", len(s.rcpts), "size", d.Size())
	m := s.be.cfg.Metrics
	m.accepted.Inc()
	m.recipients.Add(float64(len(s.rcpts)))
	m.bytes.Add(float64(d.Size()))
	return id, nil
}

func (s *session) receive(d *queue.Draft, r io.Reader) (string, error) {
	br := s.be.reader(r)
	defer s.be.putReader(br)
	header, msg, peer, err := s.readHeader(br)
	if err != nil {
		return "", err
	}
	added, addedNames := s.addedFields(d.ID(), msg.Header, peer)
	s.noteMessageID(d.ID(), msg.Header, addedNames)
	var sign *dkim.Signing
	if s.deps.Signer != nil && !peer {
		sign, err = s.beginSigning(d.ID(), msg.Header, addedNames)
		if err != nil {
			return "", err
		}
	}
	// Both the draft and the signer see every byte; a failed draft write
	// is told apart from a broken client by errSpool.
	var w io.Writer = draftWriter{d}
	if sign != nil {
		defer sign.Abort() // after Finish, a no-op
		w = io.MultiWriter(w, sign)
		if _, err := sign.Write(added); err != nil {
			return "", err
		}
	}
	if _, err := w.Write(header); err != nil {
		return "", err
	}
	if _, err := br.WriteTo(w); err != nil {
		return "", err
	}
	prepend := added
	env := s.envelope(header, added, peer)
	if sign != nil {
		sigs, err := sign.Finish()
		if err != nil {
			s.be.cfg.Metrics.signFailures.Inc()
			return "", err
		}
		prepend = append(sigs, added...)
		env.DKIM = sign.Names()
		s.be.cfg.Metrics.signatures.WithLabelValues(s.signDomain).Inc()
	}
	if q := s.deps.Quotas; q != nil {
		user, class := s.quotaKey()
		if err := q.Bytes(context.Background(), user, class, d.Size()); err != nil {
			return "", err
		}
	}
	id, err := d.Commit(env, prepend)
	if err != nil {
		return "", fmt.Errorf("%w: %w", errSpool, err)
	}
	return id, nil
}

// reader returns a buffered reader of r from the backend's pool, which
// putReader takes back, so that each message does not allocate a 32 KiB
// buffer of its own.
func (b *Backend) reader(r io.Reader) *bufio.Reader {
	br, _ := b.readers.Get().(*bufio.Reader)
	if br == nil {
		br = bufio.NewReaderSize(r, 32<<10)
	}
	br.Reset(r)
	return br
}

func (b *Backend) putReader(br *bufio.Reader) {
	br.Reset(nil)
	b.readers.Put(br)
}

// readHeader reads the message's header block, checks it against the
// policy and, but for a relay peer, edits it (header privacy, the From:
// rewrite). A relay peer hands over mail checked and signed where it was
// submitted: it gets our Received: line and nothing else.
func (s *session) readHeader(br *bufio.Reader) (header []byte, msg *mail.Message, peer bool, err error) {
	header, err = readHeaderBlock(br, s.be.cfg.MaxHeaderSize)
	if err != nil {
		return nil, nil, false, err
	}
	msg, err = mail.ReadMessage(bytes.NewReader(header))
	if err != nil {
		return nil, nil, false, fmt.Errorf("%w: %w", errBadHeader, err)
	}
	if err := s.deps.Policy.CheckHeader(s.client, msg.Header); err != nil {
		return nil, nil, false, err
	}
	peer = s.deps.Policy.Peer(s.client)
	if !peer {
		if edited, changed := s.editHeader(header, msg.Header); changed {
			if msg, err = mail.ReadMessage(bytes.NewReader(edited)); err != nil {
				return nil, nil, false, fmt.Errorf("%w: after rewriting: %w", errBadHeader, err)
			}
			header = edited
		}
	}
	return header, msg, peer, nil
}

// noteMessageID keeps the message's Message-ID (the one we add if it has
// none) for the session's log lines.
func (s *session) noteMessageID(id string, h mail.Header, added []string) {
	s.messageID = strings.TrimSpace(h.Get("Message-Id"))
	if len(s.messageID) > maxLoggedMessageID {
		s.messageID = s.messageID[:maxLoggedMessageID] // it goes in every line of its story
	}
	if s.messageID == "" && slices.Contains(added, "Message-ID") {
		s.messageID = fmt.Sprintf("<%s@%s>", id, s.conn.ServerDomain())
	}
}

// envelope is what the message is queued with: the transaction's sender,
// recipients and DSN parameters, and the archive copies it gets.
func (s *session) envelope(header, added []byte, peer bool) queue.Envelope {
	env := queue.Envelope{From: s.from, To: s.rcpts, Ret: s.dsnRet, EnvID: s.dsnEnvID, Notify: s.dsnNotify,
		SMTPUTF8: s.utf8, UTF8Required: s.utf8 && needsUTF8(s.from, s.rcpts, header, added),
		MessageID: s.messageID, User: s.userName(), Client: s.client.Addr.String()}
	for _, o := range s.dsnORcpt {
		env.ORcpt = append(env.ORcpt, o.addr)
		env.ORcptType = append(env.ORcptType, o.typ)
	}
	if s.client.User != nil {
		env.Class, env.User = s.client.User.Class, s.client.User.Name
	}
	if !peer {
		for _, a := range s.deps.Policy.ArchivesFor(s.client, s.sentFrom) {
			env.Archive = append(env.Archive, queue.ArchiveCopy{Addr: a.Address, Upstreams: a.Upstreams})
		}
	}
	return env
}

// editHeader applies the header privacy rules and the sender rewrite to
// the header block, before it is signed; h is the block as parsed.
func (s *session) editHeader(block []byte, h mail.Header) ([]byte, bool) {
	out, changed := s.deps.Headers.Apply(block)
	rw := s.rewrite
	if rw == nil {
		return out, changed
	}
	if rw.HeaderFrom {
		var c bool
		out, c = headers.RewriteAddresses(out, []string{"From", "Sender"}, rw.Covers, rw.SenderFor)
		changed = changed || c
	}
	if rw.ReplyTo {
		// Replies to the old sender's addresses would go to a host
		// nobody reads: those become the new sender too.
		old := []string{s.sentFrom}
		if from, err := h.AddressList("From"); err == nil {
			for _, a := range from {
				old = append(old, a.Address)
			}
		}
		var c bool
		out, c = headers.RewriteAddresses(out, []string{"Reply-To"}, func(a string) bool {
			return slices.ContainsFunc(old, func(o string) bool { return strings.EqualFold(o, a) })
		}, rw.SenderFor)
		changed = changed || c
	}
	return out, changed
}

// beginSigning starts the signatures over message id's fields and the
// ones we add (named by added).
func (s *session) beginSigning(id string, h mail.Header, added []string) (*dkim.Signing, error) {
	from, err := h.AddressList("From")
	if err != nil || len(from) == 0 {
		return nil, s.noKey(id, unsignedNoFrom, fmt.Errorf("%w: no From address", dkim.ErrNoKey))
	}
	_, domain, _ := policy.SplitAddress(from[0].Address)
	fields := added
	for k, v := range h {
		for range v {
			fields = append(fields, k)
		}
	}
	sign, err := s.deps.Signer.Begin(domain, fields)
	if err != nil {
		if !errors.Is(err, dkim.ErrNoKey) {
			s.be.cfg.Metrics.signFailures.Inc()
		}
		return nil, s.noKey(id, unsignedNoKey, err)
	}
	s.signDomain = sign.Domain() // a configured domain: a bounded label
	return sign, nil
}

// Why a message goes out unsigned: the reason label of
// smarthost_dkim_unsigned_total.
const (
	unsignedNoKey  = "no_key"  // no key for the From: domain
	unsignedNoFrom = "no_from" // no From: address to take a domain from
)

// noKey applies on_missing_key: with send_unsigned a missing key is not an
// error (nil signing), but a warning and a count, since receivers that
// check DMARC may refuse the message; any other signing failure always is
// an error.
func (s *session) noKey(id, reason string, err error) error {
	if errors.Is(err, dkim.ErrNoKey) && !s.deps.RejectNoKey {
		s.log.Warn("sending unsigned", "msg_id", id, "reason", reason, "err", err)
		s.be.cfg.Metrics.unsigned.WithLabelValues(reason).Inc()
		return nil
	}
	return err
}

// maxLoggedMessageID bounds the Message-ID kept for the log and the
// history; real ones are far shorter.
const maxLoggedMessageID = 250

// draftWriter marks write errors of the draft, so that a full disk is told
// apart from a broken client.
type draftWriter struct{ d *queue.Draft }

func (w draftWriter) Write(p []byte) (int, error) {
	n, err := w.d.Write(p)
	if err != nil {
		err = fmt.Errorf("%w: %w", errSpool, err)
	}
	return n, err
}

// readHeaderBlock reads the header up to and including the empty line that
// ends it. A message without a body gets that empty line added, so that the
// header block is always well formed for signing and for the upstream.
func readHeaderBlock(br *bufio.Reader, max int) ([]byte, error) {
	var h bytes.Buffer
	for {
		line, err := br.ReadSlice('\n')
		if errors.Is(err, bufio.ErrBufferFull) {
			err = nil // a long line: keep reading it
		}
		h.Write(line)
		if h.Len() > max {
			return nil, errHeaderTooLarge
		}
		if errors.Is(err, io.EOF) {
			if h.Len() > 0 && !bytes.HasSuffix(h.Bytes(), []byte("\r\n")) {
				h.WriteString("\r\n")
			}
			h.WriteString("\r\n")
			return h.Bytes(), nil
		}
		if err != nil {
			return nil, err
		}
		if bytes.Equal(line, []byte("\r\n")) {
			return h.Bytes(), nil
		}
	}
}
