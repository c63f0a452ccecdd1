package smtpd

import (
	"bufio"
	"bytes"
	"errors"
	"io"

	"github.com/emersion/go-smtp"
)

func (c *Conn) handleData(arg string) {
	if arg != "" {
		c.protocolError(501, smtp.EnhancedCode{5, 5, 4}, "DATA command should not have any arguments")
		return
	}
	if !c.fromReceived {
		c.protocolError(503, smtp.EnhancedCode{5, 5, 1}, "Missing MAIL FROM command")
		return
	}
	if c.recipients == 0 {
		// A pipelining client sends DATA before it learns that every
		// recipient was refused (RFC 2920 3.1): no protocol error.
		c.reset()
		c.reply(554, smtp.EnhancedCode{5, 5, 1}, "No valid recipients")
		return
	}
	c.reply(354, smtp.NoEnhancedCode, "Go ahead. End your data with <CR><LF>.<CR><LF>")
	defer c.reset()

	r := newDataReader(c.br, c.srv.cfg.MaxLineLength, c.srv.cfg.MaxMessageBytes)
	err := c.currentSession().Data(r)
	if r.err == nil || errors.Is(r.err, smtp.ErrDataTooLarge) {
		// The session may stop reading early (a refused header); the
		// rest of the message is read and dropped, so that the next
		// command is a command.
		r.drain()
	}
	switch {
	case r.err != nil && r.err != io.EOF && !errors.Is(r.err, smtp.ErrDataTooLarge):
		// A bare CR or LF, a NUL, an overlong line, or the client gone:
		// framing is lost, so after the reply the connection ends.
		if err == nil {
			err = r.err
		}
		c.replyErr(err, 554, smtp.EnhancedCode{5, 6, 0}, "Message refused")
		c.quit = true
	case err != nil:
		c.replyErr(err, 451, smtp.EnhancedCode{4, 0, 0}, "Requested action aborted, try again later")
	default:
		c.reply(250, smtp.EnhancedCode{2, 0, 0}, "OK: queued")
	}
	var se *smtp.SMTPError
	if err == nil || errors.As(err, &se) && se.Code/100 == 2 {
		c.errors = 0 // a client that gets mail through is not lost
	}
}

// dataReader reads a message sent with DATA, removes the dot-stuffing and
// stops at CRLF "." CRLF. Anything else that might end a line or a message
// for some other server (a bare CR or LF, NUL) is an error, never data:
// that is how SMTP smuggling hides a second message inside the first.
type dataReader struct {
	br      *bufio.Reader
	state   int
	lineLen int // bytes of the current line read so far, CRLF included
	maxLine int
	limit   int64 // bytes the message may still have; <0: no limit
	err     error // sticky: io.EOF at the end
}

const (
	stBeginLine = iota // after CRLF, or at the start
	stDot              // "." at the start of a line
	stDotCR            // ".\r" at the start of a line
	stCR               // "\r" inside a line
	stData             // inside a line
)

func newDataReader(br *bufio.Reader, maxLine int, maxBytes int64) *dataReader {
	r := &dataReader{br: br, maxLine: maxLine, limit: -1}
	if maxBytes > 0 {
		r.limit = maxBytes
	}
	return r
}

func (r *dataReader) Read(b []byte) (int, error) {
	if r.err != nil {
		return 0, r.err
	}
	n := 0
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
		i := 0
		for i < len(buf) && n < len(b) {
			if run := r.plainRun(buf[i:], len(b)-n); len(run) > 0 {
				copy(b[n:], run)
				n += len(run)
				i += len(run)
				continue
			}
			emit, err := r.step(buf[i])
			if err != nil {
				r.br.Discard(i + 1)
				r.err = err
				return n, err
			}
			if emit {
				if r.limit == 0 {
					r.br.Discard(i + 1) // stepped over already; dropped with the rest
					r.err = smtp.ErrDataTooLarge
					return n, r.err
				}
				if r.limit > 0 {
					r.limit--
				}
				b[n] = buf[i]
				n++
			}
			i++
		}
		r.br.Discard(i)
	}
	return n, nil
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
	p = p[:min(len(p), room, max(r.maxLine-r.lineLen, 0))]
	if r.limit >= 0 {
		p = p[:min(int64(len(p)), r.limit)]
		r.limit -= int64(len(p))
	}
	r.lineLen += len(p)
	return p
}

// step moves the state machine over one byte and says whether the byte is
// part of the message.
func (r *dataReader) step(ch byte) (bool, error) {
	if r.lineLen++; r.lineLen > r.maxLine {
		return false, ErrLineTooLong
	}
	if ch == 0 {
		return false, ErrNUL
	}
	switch r.state {
	case stBeginLine:
		switch ch {
		case '.':
			r.state = stDot
			return false, nil
		case '\r':
			r.state = stCR
		case '\n':
			return false, ErrBareLineEnding
		default:
			r.state = stData
		}
	case stDot:
		switch ch {
		case '\r':
			r.state = stDotCR
			return false, nil
		case '\n':
			return false, ErrBareLineEnding
		default:
			r.state = stData // the stuffed dot is dropped
		}
	case stDotCR:
		if ch != '\n' {
			return false, ErrBareLineEnding
		}
		return false, io.EOF
	case stCR:
		if ch != '\n' {
			return false, ErrBareLineEnding
		}
		r.state = stBeginLine
		r.lineLen = 0
	case stData:
		switch ch {
		case '\r':
			r.state = stCR
		case '\n':
			return false, ErrBareLineEnding
		}
	}
	return true, nil
}

// drain reads the rest of the message, past any size limit, to its end.
func (r *dataReader) drain() {
	if errors.Is(r.err, smtp.ErrDataTooLarge) {
		r.err = nil
	}
	r.limit = -1
	io.Copy(io.Discard, r)
}
