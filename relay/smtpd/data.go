package smtpd

import (
	"bufio"
	"bytes"
	"errors"
	"io"
)

func (c *Conn) handleData(arg string) {
	if arg != "" {
		c.protocolError("DATA", ReplyNoArguments.With("DATA"))
		return
	}
	if !c.fromReceived {
		c.protocolError("DATA", ReplyNeedMail)
		return
	}
	if c.recipients == 0 {
		// A pipelining client sends DATA before it learns that every
		// recipient was refused (RFC 2920 3.1): no protocol error.
		c.reset()
		c.send("DATA", ReplyNoValidRcpts, nil)
		return
	}
	c.reply(ReplyStartData)
	defer c.reset()

	lim := c.srv.limits.Load()
	r := newDataReader(c.br, c.srv.cfg.MaxLineLength, lim.MaxMessageBytes, lim.NormalizeBareLF)
	r.wrap = lim.WrapLongLines
	id, err := c.Session().Data(r)
	if r.err == nil || errors.Is(r.err, ErrDataTooLarge) {
		// The session may stop reading early (a refused header); the
		// rest of the message is read and dropped, so that the next
		// command is a command.
		r.drain()
	}
	switch {
	case r.err != nil && r.err != io.EOF && !errors.Is(r.err, ErrDataTooLarge):
		// A bare CR or LF, a NUL, an overlong line, or the client gone:
		// framing is lost, so after the reply the connection ends.
		if err == nil {
			err = r.err
		}
		c.fail("DATA", err)
		c.quit = true
	case err != nil:
		c.fail("DATA", err)
	default:
		c.reply(ReplyQueued.With(id))
		c.errors = 0 // a client that gets mail through is not lost
	}
}

// dataReader reads a message sent with DATA, removes the dot-stuffing and
// stops at CRLF "." CRLF. Anything else that might end a line or a message
// for some other server (a bare CR, a NUL, a bare LF unless it is
// normalized) is an error, never data: that is how SMTP smuggling hides a
// second message inside the first.
//
// With lf (normalize), a bare LF ends a line as CRLF would, and is handed
// on as CRLF; but a line after one never ends the message, even if it is
// ".": only CRLF "." CRLF does, as in Postfix 3.9's "normalize". Such a
// "." is a line of the message, dot-stuffed again on the way out.
//
// With wrap, a line may be of any length: past foldAt bytes it is broken
// by CRLF and a space, as Postfix's SMTP client breaks lines longer than
// smtp_line_length_limit. The break comes only before a byte of the line,
// never inside a line end, and the new line starts with a space, so it
// can neither end the message nor hide a CR or LF. Without wrap, a line
// over maxLine is an error.
type dataReader struct {
	br       *bufio.Reader
	state    int
	lineLen  int // bytes of the current line read so far, CRLF included
	maxLine  int
	wrap     bool  // fold lines longer than foldAt instead of refusing them
	col      int   // with wrap, bytes of the current line handed on
	limit    int64 // bytes the message may still have; <0: no limit
	lf       bool  // normalize bare LF to CRLF
	afterLF  bool  // the line began after a bare LF
	pend     []byte
	pendBuf  [4]byte
	err      error // sticky: io.EOF at the end
	stepped1 [1]byte
	folded   [4]byte
}

// foldAt is the longest line wrap leaves whole: RFC 5322's 998 bytes, the
// default of Postfix's smtp_line_length_limit.
const foldAt = 998

const (
	stBeginLine = iota // after CRLF, or at the start
	stDot              // "." at the start of a line
	stDotCR            // ".\r" at the start of a line
	stCR               // "\r" inside a line
	stData             // inside a line
)

func newDataReader(br *bufio.Reader, maxLine int, maxBytes int64, lf bool) *dataReader {
	r := &dataReader{br: br, maxLine: maxLine, limit: -1, lf: lf}
	if maxBytes > 0 {
		r.limit = maxBytes
	}
	return r
}

func (r *dataReader) Read(b []byte) (int, error) {
	n := 0
	for len(r.pend) > 0 && n < len(b) {
		if r.limit == 0 {
			r.pend = nil
			r.err = ErrDataTooLarge
			return n, r.err
		}
		if r.limit > 0 {
			r.limit--
		}
		b[n] = r.pend[0]
		r.pend = r.pend[1:]
		n++
	}
	if r.err != nil {
		if n > 0 {
			return n, nil
		}
		return 0, r.err
	}
	for n < len(b) {
		if r.br.Buffered() == 0 {
			if n > 0 {
				break // give what we have rather than wait for more
			}
			if _, err := r.br.Peek(1); err != nil {
				if errors.Is(err, io.EOF) {
					err = io.ErrUnexpectedEOF
				}
				r.err = err
				return n, err
			}
		}
		buf, _ := r.br.Peek(r.br.Buffered())
		i, m, err := r.scan(buf, b[n:])
		n += m
		r.br.Discard(i)
		if err != nil {
			if err == io.EOF && n > 0 {
				return n, nil
			}
			return n, err
		}
		if len(r.pend) > 0 {
			break
		}
	}
	return n, nil
}

// scan moves over the buffered bytes buf, filling b with what of the
// message they make; what does not fit waits in r.pend. It returns the
// bytes of buf it went over and of b it filled, and the error that ends
// the message (kept in r.err too).
func (r *dataReader) scan(buf, b []byte) (i, n int, err error) {
	for i < len(buf) && n < len(b) {
		if run := r.plainRun(buf[i:], len(b)-n); len(run) > 0 {
			copy(b[n:], run)
			n += len(run)
			i += len(run)
			continue
		}
		emit, err := r.step(buf[i])
		i++
		if err != nil {
			r.err = err
			return i, n, err
		}
		for k, ch := range emit {
			if n == len(b) {
				r.pend = append(r.pendBuf[:0], emit[k:]...)
				break
			}
			if r.limit == 0 { // stepped over already; dropped with the rest
				r.err = ErrDataTooLarge
				return i, n, r.err
			}
			if r.limit > 0 {
				r.limit--
			}
			b[n] = ch
			n++
		}
		if len(r.pend) > 0 {
			break
		}
	}
	return i, n, nil
}

// plainRun is the longest prefix of p, inside a line, that holds no CR,
// LF or NUL and fits in room, the size limit and the line limit: bytes the
// state machine would pass one by one without a decision. It accounts for
// them; the caller copies them.
func (r *dataReader) plainRun(p []byte, room int) []byte {
	if r.state != stData {
		return nil
	}
	for _, c := range []byte{'\r', '\n', 0} {
		if k := bytes.IndexByte(p, c); k >= 0 {
			p = p[:k]
		}
	}
	if r.wrap {
		p = p[:min(len(p), room, max(foldAt-r.col, 0))]
	} else {
		p = p[:min(len(p), room, max(r.maxLine-r.lineLen, 0))]
	}
	if r.limit >= 0 {
		p = p[:min(int64(len(p)), r.limit)]
		r.limit -= int64(len(p))
	}
	r.lineLen += len(p)
	r.col += len(p)
	return p
}

var (
	crlf    = []byte("\r\n")
	dotCRLF = []byte(".\r\n")
)

// step moves the state machine over one byte and returns what of the
// message it makes: nothing, the byte itself, or a normalized line end.
// io.EOF is the end of the message.
func (r *dataReader) step(ch byte) ([]byte, error) {
	if r.lineLen++; r.lineLen > r.maxLine && !r.wrap {
		return nil, ErrLineTooLong
	}
	if ch == 0 {
		return nil, ErrNUL
	}
	switch r.state {
	case stBeginLine, stDot, stDotCR:
		return r.stepLineStart(ch)
	case stCR:
		if ch != '\n' {
			return nil, ErrBareLineEnding
		}
		r.state, r.lineLen, r.col, r.afterLF = stBeginLine, 0, 0, false
	case stData:
		switch ch {
		case '\r':
			r.state = stCR
		case '\n':
			return r.bareLF(crlf)
		default:
			return r.text(ch), nil
		}
	}
	return r.one(ch), nil
}

// stepLineStart is step at the start of a line, where a dot is either
// stuffed or, alone on its line, the end of the message.
func (r *dataReader) stepLineStart(ch byte) ([]byte, error) {
	switch r.state {
	case stBeginLine:
		switch ch {
		case '.':
			r.state = stDot
			return nil, nil
		case '\r':
			r.state = stCR
		case '\n':
			return r.bareLF(crlf)
		default:
			r.state = stData
			return r.text(ch), nil
		}
	case stDot:
		switch ch {
		case '\r':
			r.state = stDotCR
			return nil, nil
		case '\n':
			return r.bareLF(dotCRLF)
		default:
			r.state = stData // the stuffed dot is dropped
			return r.text(ch), nil
		}
	case stDotCR:
		if ch != '\n' {
			return nil, ErrBareLineEnding
		}
		if r.afterLF {
			// "." CRLF after a bare LF: a line of the message, not its
			// end, or the two ends would disagree about where it is.
			r.state, r.lineLen, r.col, r.afterLF = stBeginLine, 0, 0, false
			return dotCRLF, nil
		}
		return nil, io.EOF
	}
	return r.one(ch), nil
}

// one returns ch alone.
func (r *dataReader) one(ch byte) []byte {
	r.stepped1[0] = ch
	return r.stepped1[:]
}

// text returns ch, a byte of the line's text: with wrap, past foldAt it
// starts a new line that begins with a space.
func (r *dataReader) text(ch byte) []byte {
	if !r.wrap {
		return r.one(ch)
	}
	if r.col >= foldAt {
		r.col = 2
		r.folded = [4]byte{'\r', '\n', ' ', ch}
		return r.folded[:]
	}
	r.col++
	return r.one(ch)
}

// bareLF returns out for a bare LF, which ends the line (normalized) or
// the message's framing.
func (r *dataReader) bareLF(out []byte) ([]byte, error) {
	if !r.lf {
		return nil, ErrBareLineEnding
	}
	r.state, r.lineLen, r.col, r.afterLF = stBeginLine, 0, 0, true
	return out, nil
}

// drain reads the rest of the message, past any size limit, to its end.
func (r *dataReader) drain() {
	if errors.Is(r.err, ErrDataTooLarge) {
		r.err = nil
	}
	r.pend = nil
	r.limit = -1
	io.Copy(io.Discard, r)
}
