package queue

import (
	"bufio"
	"bytes"
	"fmt"
	"io"
	"mime/quotedprintable"
	"slices"
	"strings"
	"time"
)

// maxBounceHeader caps how much of the original header a bounce quotes.
const maxBounceHeader = 64 << 10

// wantNotice keeps the recipients that asked to hear about this kind of
// news (RFC 3461): with NOTIFY, only what it names (FAILURE, DELAY); NEVER
// silences it; without, failures only (a delay warning is ours to send).
func wantNotice(rcpts []Recipient, delayed bool) []Recipient {
	want := "FAILURE"
	if delayed {
		want = "DELAY"
	}
	var out []Recipient
	for _, r := range rcpts {
		if len(r.Notify) == 0 || slices.Contains(r.Notify, want) {
			out = append(out, r)
		}
	}
	return out
}

// reportInput is what a delivery status notification is made of.
type reportInput struct {
	m        *Message
	rcpts    []Recipient // failed, or with delayed, still pending
	delayed  bool
	header   []byte // of the original message
	now      time.Time
	hostname string // the reporting MTA
	maxAge   time.Duration
}

// report writes a delivery status notification (RFC 3464, and RFC 6533
// for UTF-8 addresses) from the null sender to m's sender: the recipients
// failed, or with delayed, a warning that delivery goes on. Bounces have
// the null sender, so they never bounce themselves.
func report(in reportInput) []byte {
	m, failed, delayed := in.m, in.rcpts, in.delayed
	header := in.header
	now := in.now
	boundary := "=_" + newID()
	var b bytes.Buffer
	fmt.Fprintf(&b, "From: Mail Delivery System <MAILER-DAEMON@%s>\r\n", in.hostname)
	fmt.Fprintf(&b, "To: <%s>\r\n", m.From)
	subject, action, intro := "Undelivered Mail Returned to Sender", "failed", "could not be delivered to these recipients"
	if delayed {
		subject, action = "Delayed Mail (still being retried)", "delayed"
		intro = fmt.Sprintf("has not yet been delivered to these recipients after %s; delivery will be retried until %s, with no further action needed from you",
			now.Sub(m.Created).Round(time.Minute), m.Created.Add(in.maxAge).Format(time.RFC1123Z))
	}
	fmt.Fprintf(&b, "Subject: %s\r\n", subject)
	fmt.Fprintf(&b, "Date: %s\r\n", now.Format("Mon, 02 Jan 2006 15:04:05 -0700"))
	fmt.Fprintf(&b, "Message-ID: <%s.%s@%s>\r\n", m.ID, action, in.hostname)
	fmt.Fprintf(&b, "Auto-Submitted: auto-replied\r\n")
	fmt.Fprintf(&b, "MIME-Version: 1.0\r\n")
	fmt.Fprintf(&b, "Content-Type: multipart/report; report-type=delivery-status; boundary=\"%s\"\r\n\r\n", boundary)

	fmt.Fprintf(&b, "--%s\r\nContent-Type: text/plain; charset=utf-8\r\nContent-Transfer-Encoding: quoted-printable\r\n\r\n", boundary)
	var text strings.Builder
	fmt.Fprintf(&text, "This is the mail system at %s.\r\n\r\nYour message (queue ID %s) %s:\r\n\r\n", in.hostname, m.ID, intro)
	for _, r := range failed {
		fmt.Fprintf(&text, "<%s>: %s\r\n", r.Addr, r.Error)
	}
	qp := quotedprintable.NewWriter(&b)
	qp.Write([]byte(text.String()))
	qp.Close()
	b.WriteString("\r\n")

	statusType, headersType := partTypes(in)
	fmt.Fprintf(&b, "--%s\r\nContent-Type: %s\r\n\r\n", boundary, statusType)
	deliveryStatus(&b, in, action)
	fmt.Fprintf(&b, "--%s\r\nContent-Type: %s\r\n\r\n", boundary, headersType)
	b.Write(header)
	fmt.Fprintf(&b, "\r\n--%s--\r\n", boundary)

	return b.Bytes()
}

// partTypes returns the content types of the report's status and header
// parts. RFC 6533: a report naming a UTF-8 address is a global one, with
// utf-8 address types, and quotes a UTF-8 header as global-headers.
func partTypes(in reportInput) (status, headers string) {
	global := false
	for _, r := range in.rcpts {
		global = global || !isASCII(r.Addr) || !isASCII(r.ORcpt)
	}
	status, headers = "message/delivery-status", "text/rfc822-headers"
	if global {
		status = "message/global-delivery-status"
	}
	if !isASCII(string(in.header)) {
		headers = "message/global-headers"
	}
	return status, headers
}

// deliveryStatus writes the fields of the report's status part (RFC 3464):
// those of the message, then those of each recipient.
func deliveryStatus(b *bytes.Buffer, in reportInput, action string) {
	m := in.m
	if m.EnvID != "" {
		fmt.Fprintf(b, "Original-Envelope-Id: %s\r\n", m.EnvID)
	}
	fmt.Fprintf(b, "Reporting-MTA: dns; %s\r\nX-Queue-ID: %s\r\nArrival-Date: %s\r\n\r\n",
		in.hostname, m.ID, m.Created.Format("Mon, 02 Jan 2006 15:04:05 -0700"))
	for _, r := range in.rcpts {
		if r.ORcpt != "" {
			fmt.Fprintf(b, "Original-Recipient: %s; %s\r\n", addrType(r.ORcpt, r.ORcptType), r.ORcpt)
		}
		status := dsnStatus(r.Error)
		if in.delayed {
			status = "4" + status[1:]
		}
		fmt.Fprintf(b, "Final-Recipient: %s; %s\r\nAction: %s\r\nStatus: %s\r\nDiagnostic-Code: smtp; %s\r\n\r\n",
			addrType(r.Addr, ""), r.Addr, action, status, oneLine(r.Error))
	}
}

// readHeader returns the header block of a message, cut at max bytes.
func readHeader(r io.Reader, max int) []byte {
	br := bufio.NewReader(io.LimitReader(r, int64(max)))
	var h bytes.Buffer
	for {
		line, err := br.ReadBytes('\n')
		if len(bytes.TrimRight(line, "\r\n")) == 0 || err != nil {
			h.Write(line)
			break
		}
		h.Write(line)
	}
	return h.Bytes()
}

// dsnStatus is the Status: of a failed recipient: the enhanced status code
// in its error text as class 5 (it failed for good), or 5.0.0.
func dsnStatus(errText string) string { return statusOf(EventBounced, errText) }

// addrType is the DSN address type of a (RFC 6533 3): utf-8 for a UTF-8
// address or one the client gave as such.
func addrType(a, given string) string {
	if given == "utf-8" || !isASCII(a) {
		return "utf-8"
	}
	return "rfc822"
}

func isASCII(s string) bool {
	for i := 0; i < len(s); i++ {
		if s[i] >= 0x80 {
			return false
		}
	}
	return true
}

func oneLine(s string) string {
	return strings.Join(strings.Fields(s), " ")
}

// notify queues a delivery status notification to m's sender about
// rcpts: failed, or with delayed, still being tried (bounce.go). It tells
// the observer which message carries it.
func (q *Queue) notify(m *Message, rcpts []Recipient, delayed bool) error {
	rcpts = wantNotice(rcpts, delayed)
	if len(rcpts) == 0 {
		return nil
	}
	orig, err := m.Open()
	if err != nil {
		return err
	}
	header := readHeader(orig, maxBounceHeader)
	orig.Close()
	text := report(reportInput{m: m, rcpts: rcpts, delayed: delayed, header: header, now: q.now(),
		hostname: q.cfg.Hostname, maxAge: q.cfg.MaxAge})
	d, err := q.Create()
	if err != nil {
		return err
	}
	if _, err := d.Write(text); err != nil {
		d.Abort()
		return err
	}
	// To a UTF-8 sender the report's own header is UTF-8: SMTPUTF8.
	utf8 := !isASCII(m.From)
	id, err := d.Commit(Envelope{To: []string{m.From}, SMTPUTF8: utf8, UTF8Required: utf8,
		MessageID: fmt.Sprintf("<%s.%s@%s>", m.ID, map[bool]string{false: "failed", true: "delayed"}[delayed], q.cfg.Hostname)}, nil)
	if err == nil {
		q.log.Info("delivery status notification queued", "msg_id", m.ID, "dsn_id", id, "delayed", delayed, "to", m.From)
		e := m.event(EventDSN, q.now())
		e.DSNID, e.Rcpt = id, m.From
		if delayed {
			e.Reason = "delayed"
		}
		q.observe(e)
	}
	return err
}

// warnDelayed sends the sender one warning, once, when m is still pending
// after DelayWarning (time on hold not counted), and tells the observer
// that each of its recipients is delayed.
func (q *Queue) warnDelayed(m *Message, now time.Time) {
	w := m.senderRecipients()
	if len(w) == 0 || q.cfg.DelayWarning <= 0 || m.Warned || m.age(now) < q.cfg.DelayWarning {
		return
	}
	if m.From != "" {
		if err := q.notify(m, w, true); err != nil {
			q.log.Error("queue: cannot queue delay warning", "msg_id", m.ID, "err", err)
			return
		}
	}
	m.Warned = true // saved with the message's state
	for _, r := range w {
		e := m.event(EventDelayed, now)
		e.Rcpt, e.Attempt, e.Delay, e.Error = r.Addr, m.Attempts, seconds(now.Sub(m.Created)), r.Error
		e.Status = statusOf(EventDeferred, r.Error)
		q.observe(e)
	}
}
