package smtpd

import (
	"bufio"
	"bytes"
	"crypto/tls"
	"errors"
	"fmt"
	"io"
	"net"
	"runtime/debug"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"github.com/emersion/go-smtp"
)

// Errors a Session's Data may see from the message reader. The connection
// is closed after the reply: the client and we disagree about where the
// message ends.
var (
	ErrBareLineEnding = errors.New("smtpd: bare CR or LF")
	ErrNUL            = errors.New("smtpd: NUL character")
	ErrLineTooLong    = errors.New("smtpd: line too long")
)

// Conn is one client connection.
type Conn struct {
	srv  *Server
	raw  net.Conn // as accepted
	conn net.Conn // the TLS connection after STARTTLS
	br   *bufio.Reader
	bw   *bufio.Writer

	helo    string
	mu      sync.Mutex // guards session, which Close may end from another goroutine
	session smtp.Session
	didAuth bool

	fromReceived bool
	recipients   int

	errors   int  // unknown or malformed commands
	commands int  // since connecting or since the last MAIL
	quit     bool // the loop ends after this reply
	// waiting is set while the loop waits for a command outside a mail
	// transaction, when Shutdown may interrupt it.
	waiting atomic.Bool
}

func newConn(c net.Conn, s *Server) *Conn {
	sc := &Conn{srv: s, raw: c, conn: c}
	sc.init()
	return sc
}

// init (re)starts the buffered reader and writer on c.conn. After STARTTLS
// this throws away whatever the client pipelined behind the command before
// the handshake (CVE-2011-0411).
func (c *Conn) init() {
	// Room for the longest allowed line, so that ReadSlice never splits one.
	c.br = bufio.NewReaderSize(c.conn, max(4096, c.srv.cfg.MaxLineLength+2))
	c.bw = bufio.NewWriterSize(c.conn, 1024)
}

// Hostname is the name the client gave in EHLO or HELO.
func (c *Conn) Hostname() string { return c.helo }

// Conn is the client connection (a *tls.Conn once TLS is up).
func (c *Conn) Conn() net.Conn { return c.conn }

// TLSConnectionState reports the TLS state; ok is false without TLS.
func (c *Conn) TLSConnectionState() (state tls.ConnectionState, ok bool) {
	tc, ok := c.conn.(*tls.Conn)
	if !ok {
		return state, false
	}
	return tc.ConnectionState(), true
}

// Close ends the session and the connection.
func (c *Conn) Close() error {
	c.setSession(nil)
	return c.conn.Close()
}

func (c *Conn) setSession(s smtp.Session) {
	c.mu.Lock()
	old := c.session
	c.session = s
	c.mu.Unlock()
	if old != nil {
		old.Logout()
	}
}

func (c *Conn) serve() error {
	defer c.flush() // replies held for a pipelined command that never came
	if tc, ok := c.conn.(*tls.Conn); ok {
		if err := c.handshake(tc); err != nil {
			return err
		}
	}
	c.reply(220, smtp.NoEnhancedCode, fmt.Sprintf("%s ESMTP Service Ready", c.srv.cfg.Domain))
	for !c.quit {
		idle := !c.fromReceived
		c.waiting.Store(idle)
		if idle && c.srv.shutting.Load() {
			c.reply(421, smtp.EnhancedCode{4, 3, 2}, "Service shutting down, closing connection")
			return nil
		}
		line, err := c.readLine()
		c.waiting.Store(false)
		switch {
		case err == nil:
			c.handle(line)
		case errors.Is(err, io.EOF), errors.Is(err, net.ErrClosed):
			return nil
		case errors.Is(err, ErrLineTooLong):
			c.reply(500, smtp.EnhancedCode{5, 5, 2}, "Line too long, closing connection")
			return nil
		case errors.Is(err, ErrBareLineEnding):
			c.reply(500, smtp.EnhancedCode{5, 5, 2}, "Bare CR or LF in command line, closing connection")
			return nil
		case errors.Is(err, ErrNUL):
			c.reply(500, smtp.EnhancedCode{5, 5, 2}, "NUL character in command line, closing connection")
			return nil
		case isTimeout(err) && c.srv.shutting.Load():
			c.reply(421, smtp.EnhancedCode{4, 3, 2}, "Service shutting down, closing connection")
			return nil
		case isTimeout(err):
			c.reply(421, smtp.EnhancedCode{4, 4, 2}, "Idle timeout, closing connection")
			return nil
		default:
			return err
		}
	}
	return nil
}

func isTimeout(err error) bool {
	var ne net.Error
	return errors.As(err, &ne) && ne.Timeout()
}

// readLine reads one command line, strictly: it must end in CRLF and hold
// no other CR, LF or NUL.
func (c *Conn) readLine() (string, error) {
	line, err := c.br.ReadSlice('\n')
	if errors.Is(err, bufio.ErrBufferFull) || len(line) > c.srv.cfg.MaxLineLength {
		return "", ErrLineTooLong
	}
	if err != nil {
		if errors.Is(err, io.EOF) && len(line) > 0 {
			return "", io.ErrUnexpectedEOF
		}
		return "", err
	}
	body, ok := bytes.CutSuffix(line, []byte("\r\n"))
	if !ok || bytes.IndexByte(body, '\r') >= 0 {
		return "", ErrBareLineEnding
	}
	if bytes.IndexByte(body, 0) >= 0 {
		return "", ErrNUL
	}
	return string(body), nil
}

// handle runs one command. A panic in a session ends only this connection.
func (c *Conn) handle(line string) {
	defer func() {
		if r := recover(); r != nil {
			c.srv.cfg.Log.Error("panic serving a command", "remote", c.conn.RemoteAddr().String(), "panic", r, "stack", string(debug.Stack()))
			c.reply(421, smtp.EnhancedCode{4, 0, 0}, "Internal server error, closing connection")
			c.quit = true
		}
	}()
	cmd, arg, err := parseCmd(line)
	if err != nil {
		c.protocolError(500, smtp.EnhancedCode{5, 5, 2}, "Bad command syntax")
		return
	}
	// Everything outside a transaction counts; a MAIL starts the count
	// again (a permanently refused one counts as an error instead, see
	// handleMail).
	if cmd != "MAIL" && cmd != "RCPT" && cmd != "DATA" && cmd != "QUIT" {
		if c.commands++; c.commands > c.srv.cfg.MaxCommandsBeforeMail {
			c.reply(421, smtp.EnhancedCode{4, 7, 0}, "Too many commands without a transaction, closing connection")
			c.quit = true
			return
		}
	}
	switch cmd {
	case "HELO", "EHLO":
		c.handleGreet(cmd == "EHLO", arg)
	case "MAIL":
		c.commands = 0
		c.handleMail(arg)
	case "RCPT":
		c.handleRcpt(arg)
	case "DATA":
		c.handleData(arg)
	case "RSET":
		c.reset()
		c.reply(250, smtp.EnhancedCode{2, 0, 0}, "Session reset")
	case "NOOP":
		c.reply(250, smtp.EnhancedCode{2, 0, 0}, "I have successfully done nothing")
	case "VRFY":
		c.reply(252, smtp.EnhancedCode{2, 5, 0}, "Cannot VRFY user, but will accept message")
	case "QUIT":
		c.reply(221, smtp.EnhancedCode{2, 0, 0}, "Bye")
		c.quit = true
	case "AUTH":
		c.handleAuth(arg)
	case "STARTTLS":
		c.handleStartTLS(arg)
	case "HELP", "EXPN", "SEND", "SOML", "SAML", "TURN", "ETRN", "BDAT":
		c.reply(502, smtp.EnhancedCode{5, 5, 1}, cmd+" command not implemented")
	default:
		c.protocolError(500, smtp.EnhancedCode{5, 5, 2}, "Command unrecognized")
	}
}

// protocolError answers an unknown or malformed command; past MaxErrors
// the client is let go instead.
func (c *Conn) protocolError(code int, ec smtp.EnhancedCode, msg string) {
	if c.errors++; c.errors > c.srv.cfg.MaxErrors {
		c.reply(421, smtp.EnhancedCode{4, 7, 0}, "Too many errors, closing connection")
		c.quit = true
		return
	}
	c.reply(code, ec, msg)
}

// reply writes one reply, every line but the last with a "-". The enhanced
// code goes on each line (RFC 2034); a missing one becomes X.0.0.
func (c *Conn) reply(code int, ec smtp.EnhancedCode, text ...string) {
	if ec == smtp.EnhancedCodeNotSet {
		if cl := code / 100; cl == 2 || cl == 4 || cl == 5 {
			ec = smtp.EnhancedCode{cl, 0, 0}
		} else {
			ec = smtp.NoEnhancedCode
		}
	}
	// A reply text is one line each; a multi-line string from a session
	// must not become a second reply.
	var lines []string
	for _, t := range text {
		lines = append(lines, strings.Split(strings.ReplaceAll(t, "\r", ""), "\n")...)
	}
	if d := c.srv.cfg.WriteTimeout; d > 0 {
		c.conn.SetWriteDeadline(time.Now().Add(d))
	}
	for i, l := range lines {
		sep := " "
		if i < len(lines)-1 {
			sep = "-"
		}
		if ec == smtp.NoEnhancedCode {
			fmt.Fprintf(c.bw, "%d%s%s\r\n", code, sep, l)
		} else {
			fmt.Fprintf(c.bw, "%d%s%d.%d.%d %s\r\n", code, sep, ec[0], ec[1], ec[2], l)
		}
	}
	// A pipelining client (RFC 2920) has its next command in already: this
	// reply waits to go out with that one's, in one write. Replies it must
	// see before it may send more (334, 354, 220 before TLS) and last words
	// (221, 421) go at once; serve flushes whatever is left when it ends.
	switch code {
	case 220, 221, 334, 354, 421:
	default:
		if c.pipelined() {
			return
		}
	}
	c.flush()
}

// pipelined reports whether a whole command line is waiting to be read, so
// that reading it will not block on the client.
func (c *Conn) pipelined() bool {
	n := c.br.Buffered()
	if n == 0 {
		return false
	}
	b, _ := c.br.Peek(n)
	return bytes.IndexByte(b, '\n') >= 0
}

func (c *Conn) flush() {
	if c.bw.Buffered() == 0 {
		return
	}
	if d := c.srv.cfg.WriteTimeout; d > 0 {
		c.conn.SetWriteDeadline(time.Now().Add(d))
	}
	if err := c.bw.Flush(); err != nil {
		c.quit = true
	}
}

// replyErr writes err if it is an *smtp.SMTPError, else the fallback: the
// text of a plain error never reaches the client.
func (c *Conn) replyErr(err error, code int, ec smtp.EnhancedCode, msg string) {
	var se *smtp.SMTPError
	if errors.As(err, &se) {
		c.reply(se.Code, se.EnhancedCode, se.Message)
		return
	}
	c.reply(code, ec, msg)
}

// reset ends the mail transaction (RSET, a new EHLO, after DATA).
func (c *Conn) reset() {
	c.mu.Lock()
	s := c.session
	c.mu.Unlock()
	if s != nil {
		s.Reset()
	}
	c.fromReceived = false
	c.recipients = 0
}

func (c *Conn) currentSession() smtp.Session {
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.session
}

// handshake runs the TLS handshake (implicit TLS, or after STARTTLS) under
// WriteTimeout, which no reply write covers here.
func (c *Conn) handshake(tc *tls.Conn) error {
	if d := c.srv.cfg.WriteTimeout; d > 0 {
		tc.SetDeadline(time.Now().Add(d))
		defer tc.SetDeadline(time.Time{})
	}
	return tc.Handshake()
}
