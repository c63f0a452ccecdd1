package smtpclient

import (
	"context"
	"errors"
	"fmt"
	"io"
	"net/textproto"
)

// ErrNotAnswered says the session failed before the server answered the
// transaction's first command: a connection that died while it was idle
// says so at the next message.
var ErrNotAnswered = errors.New("smtpclient: connection failed before the first reply")

// maxGroup bounds the commands sent before their replies are read. RFC
// 2920 3.1: a client that writes without reading can deadlock with a
// server whose replies fill the window; 100 replies fit in any.
const maxGroup = 100

// Send makes one transaction: MAIL, RCPT for each recipient, then the
// message from body (env.Size bytes), and reports an outcome per recipient
// of env.Rcpts: nil if the server took the message for it, else its
// refusal (an *Error) or ErrParam.
//
// To a server that offers PIPELINING, MAIL, every RCPT and DATA go in one
// write (RFC 2920), and with CHUNKING the message itself follows them as
// BDAT ... LAST (RFC 3030): one round trip. Else it is one command per
// round trip.
//
// err is set when the session can go no further (the connection broke,
// a 421, ctx ended). Then out is nil, and err applies to every recipient,
// unless the outcomes were known all the same (a 421 to an RCPT after the
// message was on its way with BDAT: the server's other replies tell what
// it took). With a nil err, the session is ready for the next transaction.
func (c *Conn) Send(ctx context.Context, env *Envelope, body io.Reader) (out []error, err error) {
	c.taken = ""
	mail, err := c.mailCommand(env)
	if err != nil {
		return fill(make([]error, len(env.Rcpts)), err), nil
	}
	tx := &transaction{c: c, env: env, body: body, out: make([]error, len(env.Rcpts))}
	for i := range env.Rcpts {
		cmd, err := c.rcptCommand(&env.Rcpts[i])
		if err != nil {
			tx.out[i] = err
			continue
		}
		tx.rcpts = append(tx.rcpts, cmd)
		tx.index = append(tx.index, i)
	}
	if len(tx.rcpts) == 0 {
		return tx.out, nil
	}
	tx.mail = mail
	err = c.exchange(ctx, tx.run)
	if err == nil && tx.closing != nil {
		return tx.out, tx.closing
	}
	if err == nil && tx.reset {
		err = c.Reset(ctx)
	}
	if err != nil {
		if !tx.answered {
			err = fmt.Errorf("%w: %w", ErrNotAnswered, err)
		}
		return nil, err
	}
	return tx.out, nil
}

// transaction is the state of one Send.
type transaction struct {
	c          *Conn
	env        *Envelope
	body       io.Reader
	mail       string
	rcpts      []string // the RCPT commands that could be sent
	index      []int    // their recipients' places in out
	out        []error
	accepted   int
	answered   bool // the server has answered a command of this transaction
	mailRead   bool // MAIL's reply is read
	mailFailed bool
	reset      bool   // the transaction must be ended with RSET
	inFlight   bool   // the message is sent, before the replies are read
	closing    *Error // a 421 while inFlight
}

func (t *transaction) run() error {
	c := t.c
	pipelined, _ := c.Extension("PIPELINING")
	if !pipelined {
		return t.lockstep()
	}
	chunking, _ := c.Extension("CHUNKING")
	c.w.WriteString(t.mail + "\r\n")
	for i, rc := range t.rcpts {
		// Every group but the last is sent and answered before the next:
		// the last carries DATA or BDAT.
		if i > 0 && i%maxGroup == 0 {
			if err := t.flushAndRead(i-maxGroup, i); err != nil {
				return err
			}
		}
		c.w.WriteString(rc + "\r\n")
	}
	from := len(t.rcpts) - 1 - (len(t.rcpts)-1)%maxGroup
	if chunking {
		return t.bdat(from)
	}
	c.w.WriteString("DATA\r\n")
	if err := t.flushAndRead(from, len(t.rcpts)); err != nil {
		return err
	}
	return t.data()
}

// lockstep is a transaction with a server that does not pipeline.
func (t *transaction) lockstep() error {
	c := t.c
	c.w.WriteString(t.mail + "\r\n")
	if err := t.flushAndRead(0, 0); err != nil || t.mailFailed {
		return err
	}
	for i, rc := range t.rcpts {
		c.w.WriteString(rc + "\r\n")
		if err := t.flushAndRead(i, i+1); err != nil {
			return err
		}
	}
	if t.accepted == 0 {
		t.reset = true
		return nil
	}
	c.w.WriteString("DATA\r\n")
	return t.data()
}

// flushAndRead sends what is buffered and reads the replies to it:
// MAIL's, if not read yet, then those of the RCPTs from to to.
func (t *transaction) flushAndRead(from, to int) error {
	if err := t.c.w.Flush(); err != nil {
		return err
	}
	if !t.mailRead {
		t.mailRead = true
		r, err := t.read()
		if err != nil {
			return err
		}
		if err := r.expect(2); err != nil {
			// Every recipient shares the sender's fate; the RCPTs
			// already sent are answered "no MAIL" (503).
			t.mailFailed = true
			fill(t.out, err)
		}
	}
	for i := from; i < to; i++ {
		r, err := t.read()
		if err != nil {
			return err
		}
		if t.mailFailed {
			continue
		}
		if err := r.expect(2); err != nil {
			t.out[t.index[i]] = err
			continue
		}
		t.accepted++
	}
	return nil
}

// read reads a reply of the transaction. A 421 ends the session (RFC
// 5321 3.8), but once the message is on its way, the replies that follow
// (if the server sends them before it closes) still say what it took.
func (t *transaction) read() (reply, error) {
	r, err := t.c.readReply()
	if err != nil {
		return r, err
	}
	t.answered = true
	if r.code == 421 {
		t.closing = r.err()
		if !t.inFlight {
			return r, t.closing
		}
	}
	return r, nil
}

func fill(out []error, err error) []error {
	for i := range out {
		out[i] = err
	}
	return out
}

// data sends the message after DATA (written, maybe not yet sent), when
// the server says 354, and reads the reply to its end.
func (t *transaction) data() error {
	c := t.c
	if err := c.w.Flush(); err != nil {
		return err
	}
	r, err := t.read()
	if err != nil {
		return err
	}
	if r.code != 354 {
		// Refused (RFC 2920 3.1: with no recipient, DATA must be):
		// the transaction may still be open.
		t.reset = true
		if r.code/100 != 4 && r.code/100 != 5 {
			return textproto.ProtocolError(fmt.Sprintf("DATA answered %d", r.code))
		}
		t.failAccepted(r.err())
		return nil
	}
	if t.accepted == 0 {
		// A server that takes DATA with no recipient: end it empty.
		c.w.WriteString(".\r\n")
		t.reset = true
		return t.end()
	}
	ds := newDotStuffer(c.w)
	if c.buf == nil {
		c.buf = make([]byte, 16<<10)
	}
	if _, err := io.CopyBuffer(ds, bodyReader{t.body}, c.buf); err != nil {
		return err
	}
	ds.finish()
	return t.end()
}

// bdat sends the message as one chunk after the last group of RCPTs,
// which starts at from, and reads the replies to all of it.
func (t *transaction) bdat(from int) error {
	c := t.c
	fmt.Fprintf(c.w, "BDAT %d LAST\r\n", t.env.Size)
	n, err := io.Copy(c.w, io.LimitReader(bodyReader{t.body}, t.env.Size))
	if err != nil {
		return err
	}
	if n != t.env.Size {
		return fmt.Errorf("%w: %d bytes, not the %d announced", ErrBodyRead, n, t.env.Size)
	}
	t.inFlight = true
	if err := t.flushAndRead(from, len(t.rcpts)); err != nil {
		return err
	}
	if t.accepted == 0 {
		// The chunk is refused (503, 554) and its octets discarded.
		t.reset = true
		_, err := t.readEnd()
		return err
	}
	return t.end()
}

// end sends what is buffered and reads the reply to the message's end,
// which may take twice as long (RFC 5321 4.5.3.2.6): the server may be
// handing the message on meanwhile.
func (t *transaction) end() error {
	if err := t.c.w.Flush(); err != nil {
		return err
	}
	r, err := t.readEnd()
	if err != nil {
		return err
	}
	if err := r.expect(2); err != nil {
		t.failAccepted(err)
		t.reset = true
		return nil
	}
	t.c.taken = r.text()
	return nil
}

func (t *transaction) readEnd() (reply, error) {
	r, err := t.c.readReplyWithin(2 * t.c.cfg.Timeout)
	if err == nil && r.code == 421 {
		return r, r.err()
	}
	return r, err
}

// failAccepted gives err to every recipient the server had accepted.
func (t *transaction) failAccepted(err error) {
	if t.mailFailed {
		return
	}
	for _, i := range t.index {
		if t.out[i] == nil {
			t.out[i] = err
		}
	}
}

// ErrBodyRead says the message could not be read: the session is
// left in the middle of it, and done.
var ErrBodyRead = errors.New("smtpclient: reading the message")

// bodyReader marks the errors of reading the message, which would
// otherwise pass for the connection's.
type bodyReader struct{ r io.Reader }

func (b bodyReader) Read(p []byte) (int, error) {
	n, err := b.r.Read(p)
	if err != nil && err != io.EOF {
		err = fmt.Errorf("%w: %w", ErrBodyRead, err)
	}
	return n, err
}
