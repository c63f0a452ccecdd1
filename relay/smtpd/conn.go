package smtpd

import (
	"bufio"
	"bytes"
	"crypto/tls"
	"errors"
	"fmt"
	"io"
	"net"
	"net/netip"
	"runtime/debug"
	"strings"
	"sync"
	"sync/atomic"
	"time"
)

// Conn is one client connection.
type Conn struct {
	srv  *Server
	ep   *endpoint // the listener it came through
	raw  net.Conn  // as accepted (a PROXY protocol connection, maybe)
	conn net.Conn  // what is read and written: raw with idle deadlines, then TLS
	br   *bufio.Reader
	bw   *bufio.Writer
	addr netip.Addr // the client's, after a PROXY header
	// idle is the silence allowed before a read fails (a time.Duration);
	// shorter once the server drains.
	idle atomic.Int64

	helo    string
	ehlo    bool       // the client greeted with EHLO
	mu      sync.Mutex // guards session, which Close may end from another goroutine
	session Session
	didAuth bool

	fromReceived bool
	utf8         bool // the transaction is SMTPUTF8
	recipients   int

	errors   int  // unknown or malformed commands
	commands int  // since connecting or since the last MAIL
	quit     bool // the loop ends after this reply
	// waiting is set while the loop waits for a command outside a mail
	// transaction, when Shutdown may interrupt it.
	waiting atomic.Bool
}

func newConn(raw net.Conn, s *Server, ep *endpoint) *Conn {
	c := &Conn{srv: s, ep: ep, raw: raw}
	c.idle.Store(int64(s.cfg.IdleTimeout))
	c.conn = &deadlineConn{Conn: raw, idle: &c.idle}
	c.init()
	return c
}

// deadlineConn sets the read deadline before every read, so a client has
// the idle timeout between bytes, however long its message is.
type deadlineConn struct {
	net.Conn
	idle *atomic.Int64
}

func (d *deadlineConn) Read(b []byte) (int, error) {
	d.Conn.SetReadDeadline(time.Now().Add(time.Duration(d.idle.Load())))
	return d.Conn.Read(b)
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

// ESMTP reports whether the client greeted with EHLO rather than HELO.
func (c *Conn) ESMTP() bool { return c.ehlo }

// RemoteAddr is the client's address (from the PROXY header, if any).
func (c *Conn) RemoteAddr() netip.Addr { return c.addr }

// Listener is the configured address of the listener the client came
// through.
func (c *Conn) Listener() string { return c.ep.l.Address }

// ServerDomain is our host name (Config.Domain), as the greeting gives it.
func (c *Conn) ServerDomain() string { return c.srv.cfg.Domain }

// TLSConnectionState reports the TLS state; ok is false without TLS.
func (c *Conn) TLSConnectionState() (state tls.ConnectionState, ok bool) {
	tc, ok := c.conn.(*tls.Conn)
	if !ok {
		return state, false
	}
	return tc.ConnectionState(), true
}

// Session is the current session, nil before EHLO.
func (c *Conn) Session() Session {
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.session
}

// Close ends the session and the connection.
func (c *Conn) Close() error {
	c.setSession(nil)
	return c.conn.Close()
}

func (c *Conn) setSession(s Session) {
	c.mu.Lock()
	old := c.session
	c.session = s
	c.mu.Unlock()
	if old != nil {
		old.Close()
	}
}

// drain shortens the allowed silence for the server's shutdown, and wakes
// a read waiting for a command outside a transaction.
func (c *Conn) drain() {
	c.idle.Store(int64(drainIdle))
	if c.waiting.Load() {
		c.raw.SetReadDeadline(time.Now())
	} else {
		c.raw.SetReadDeadline(time.Now().Add(drainIdle))
	}
}

func (c *Conn) serve() error {
	defer c.flush() // replies held for a pipelined command that never came
	if c.ep.implicit() {
		tc := tls.Server(c.conn, c.ep.tls)
		c.conn = tc
		if err := c.handshake(tc); err != nil {
			return err
		}
		c.init()
	}
	c.reply(ReplyGreeting.With(c.srv.cfg.Domain))
	for !c.quit {
		idle := !c.fromReceived
		c.waiting.Store(idle)
		if idle && c.srv.shutting.Load() {
			c.send("", ReplyShuttingDown, nil)
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
			c.send("", ReplyLineTooLong, nil)
			return nil
		case errors.Is(err, ErrBareLineEnding):
			c.send("", ReplyCmdBareLine, nil)
			return nil
		case errors.Is(err, ErrNUL):
			c.send("", ReplyCmdNUL, nil)
			return nil
		case isTimeout(err) && c.srv.shutting.Load():
			c.send("", ReplyShuttingDown, nil)
			return nil
		case isTimeout(err):
			c.send("", ReplyIdleTimeout, nil)
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
	cmd, arg, err := parseCmd(line)
	defer func() {
		if r := recover(); r != nil {
			c.srv.cfg.Log.Error("panic serving a command", "remote", c.addr.String(), "cmd", cmd, "panic", r, "stack", string(debug.Stack()))
			c.send(cmd, ReplyPanic, fmt.Errorf("panic: %v", r))
			c.quit = true
		}
	}()
	if err != nil {
		c.protocolError("", ReplyUnrecognized)
		return
	}
	// Everything outside a transaction counts; a MAIL starts the count
	// again (a permanently refused one counts as an error instead, see
	// handleMail).
	if cmd != "MAIL" && cmd != "RCPT" && cmd != "DATA" && cmd != "QUIT" {
		if c.commands++; c.commands > c.srv.cfg.MaxCommandsBeforeMail {
			c.send(cmd, ReplyTooManyCommands, nil)
			c.quit = true
			return
		}
	}
	switch cmd {
	case "HELO", "EHLO":
		c.handleGreet(cmd, arg)
	case "MAIL":
		c.commands = 0
		c.handleMail(arg)
	case "RCPT":
		c.handleRcpt(arg)
	case "DATA":
		c.handleData(arg)
	case "RSET":
		c.reset()
		c.reply(ReplyOK)
	case "NOOP":
		c.reply(ReplyOK)
	case "VRFY":
		c.reply(ReplyCannotVRFY)
	case "QUIT":
		c.reply(ReplyBye)
		c.quit = true
	case "AUTH":
		c.handleAuth(arg)
	case "STARTTLS":
		c.handleStartTLS(arg)
	case "HELP", "EXPN", "SEND", "SOML", "SAML", "TURN", "ETRN", "BDAT":
		c.send(cmd, ReplyNotImplemented.With(cmd), nil)
	default:
		c.protocolError(cmd, ReplyUnrecognized)
	}
}

// protocolError answers an unknown or malformed command; past MaxErrors
// the client is let go instead.
func (c *Conn) protocolError(cmd string, r *Reply) {
	if c.errors++; c.errors > c.srv.cfg.MaxErrors {
		c.send(cmd, ReplyTooManyErrors, nil)
		c.quit = true
		return
	}
	c.send(cmd, r, nil)
}

// fail answers a session's error for cmd and returns the reply sent.
func (c *Conn) fail(cmd string, err error) *Reply {
	r := c.srv.cfg.Hooks.ReplyFor(cmd, err)
	c.send(cmd, r, err)
	return r
}

// send writes a reply, telling Hooks.Refused of a refusal.
func (c *Conn) send(cmd string, r *Reply, cause error) {
	if h := c.srv.cfg.Hooks.Refused; r.Refusal && h != nil {
		h(c, cmd, r, cause)
	}
	c.reply(r)
}

// formatReply renders a reply, every line but the last with a "-". The
// enhanced code goes on each line (RFC 2034). A text with line breaks
// stays one reply: a line a session gives can never forge a second one.
func formatReply(r *Reply, extra ...string) string {
	lines := strings.Split(strings.ReplaceAll(r.Text, "\r", ""), "\n")
	lines = append(lines, extra...)
	var b strings.Builder
	for i, l := range lines {
		sep := " "
		if i < len(lines)-1 {
			sep = "-"
		}
		if r.Enhanced == (EnhancedCode{}) {
			fmt.Fprintf(&b, "%d%s%s\r\n", r.Code, sep, l)
		} else {
			fmt.Fprintf(&b, "%d%s%d.%d.%d %s\r\n", r.Code, sep, r.Enhanced[0], r.Enhanced[1], r.Enhanced[2], l)
		}
	}
	return b.String()
}

// reply writes one reply; extra lines follow the row's (EHLO's keywords).
func (c *Conn) reply(r *Reply, extra ...string) {
	c.conn.SetWriteDeadline(time.Now().Add(c.srv.cfg.WriteTimeout))
	c.bw.WriteString(formatReply(r, extra...))
	// A pipelining client (RFC 2920) has its next command in already: this
	// reply waits to go out with that one's, in one write. Replies it must
	// see before it may send more (334, 354, 220 before TLS) and last words
	// (221, 421) go at once; serve flushes whatever is left when it ends.
	switch r.Code {
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
	c.conn.SetWriteDeadline(time.Now().Add(c.srv.cfg.WriteTimeout))
	if err := c.bw.Flush(); err != nil {
		c.quit = true
	}
}

// reset ends the mail transaction (RSET, a new EHLO, after DATA).
func (c *Conn) reset() {
	if s := c.Session(); s != nil {
		s.Reset()
	}
	c.fromReceived = false
	c.utf8 = false
	c.recipients = 0
}

func remoteAddr(c net.Conn) netip.Addr {
	if ap, err := netip.ParseAddrPort(c.RemoteAddr().String()); err == nil {
		return ap.Addr().Unmap()
	}
	return netip.Addr{}
}
