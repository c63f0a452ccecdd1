// Package relaytest has test helpers shared by the project's packages: Sink,
// an SMTP server on loopback that records what it receives (like httptest),
// a self-signed certificate, and the lookup of the test services that
// scripts/test.sh starts.
package relaytest

import (
	"bytes"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/tls"
	"crypto/x509"
	"crypto/x509/pkix"
	"io"
	"math/big"
	"net"
	"strings"
	"sync"
	"time"

	"github.com/emersion/go-sasl"
	"github.com/emersion/go-smtp"
)

// Message is one message a Sink accepted.
type Message struct {
	From string
	To   []string
	Data []byte
	User string // AUTH username, if any
	TLS  bool
	// DSN parameters as received (RFC 3461).
	Ret       string
	EnvID     string
	Notify    map[string]string // recipient → NOTIFY list, comma-joined
	ORcpt     map[string]string
	ORcptType map[string]string // recipient → "rfc822" or "utf-8"
	UTF8      bool              // MAIL ... SMTPUTF8
	Size      int64             // MAIL ... SIZE=
	At        time.Time         // when the sink took it
}

// Envelope is m without its data, for test failure messages.
func (m Message) Envelope() Message {
	m.Data = nil
	return m
}

// Sink is a recording SMTP server. Set the knobs before sending.
type Sink struct {
	Addr string

	mu      sync.Mutex
	msgs    []Message
	rcptErr map[string]error // per recipient
	dataErr error
	gate    func() error // asked at each end of DATA; an error refuses the message
	refused int          // messages the gate refused
	users   map[string]string
	arrived chan struct{}
	last    time.Time // when the last message arrived
	conns   int
	hellos  []string
	srv     *smtp.Server
	ln      net.Listener
}

// SinkOptions choose how the sink listens.
type SinkOptions struct {
	Addr     string            // default 127.0.0.1:0
	TLS      *tls.Certificate  // offer STARTTLS (or implicit TLS) with this
	Implicit bool              // TLS from the first byte
	Users    map[string]string // require AUTH with these
	SMTPUTF8 bool              // offer SMTPUTF8 (RFC 6531)
	MaxSize  int64             // advertised SIZE; default 64 MiB
}

// NewSink starts a sink; Close stops it.
func NewSink(o SinkOptions) (*Sink, error) {
	if o.Addr == "" {
		o.Addr = "127.0.0.1:0"
	}
	s := &Sink{rcptErr: map[string]error{}, users: o.Users, arrived: make(chan struct{}, 1<<16)}
	s.srv = smtp.NewServer(smtp.BackendFunc(func(c *smtp.Conn) (smtp.Session, error) {
		s.mu.Lock()
		s.hellos = append(s.hellos, c.Hostname())
		s.mu.Unlock()
		_, isTLS := c.TLSConnectionState()
		return &sinkSession{s: s, tls: isTLS}, nil
	}))
	s.srv.Domain = "sink.test"
	s.srv.ReadTimeout = 30 * time.Second
	s.srv.WriteTimeout = 30 * time.Second
	s.srv.AllowInsecureAuth = true
	s.srv.MaxMessageBytes = 64 << 20
	if o.MaxSize > 0 {
		s.srv.MaxMessageBytes = o.MaxSize
	}
	s.srv.ErrorLog = nopLog{}
	s.srv.EnableDSN = true
	s.srv.EnableSMTPUTF8 = o.SMTPUTF8
	ln, err := net.Listen("tcp", o.Addr)
	if err != nil {
		return nil, err
	}
	if o.TLS != nil {
		s.srv.TLSConfig = &tls.Config{Certificates: []tls.Certificate{*o.TLS}}
		if o.Implicit {
			ln = tls.NewListener(ln, s.srv.TLSConfig)
		}
	}
	ln = &countingListener{Listener: ln, s: s}
	s.ln = ln
	s.Addr = ln.Addr().String()
	go s.srv.Serve(ln)
	return s, nil
}

func (s *Sink) Close() { s.srv.Close() }

// Hellos are the EHLO/HELO names clients gave, one per session.
func (s *Sink) Hellos() []string {
	s.mu.Lock()
	defer s.mu.Unlock()
	return append([]string(nil), s.hellos...)
}

// Connections is the number of TCP connections accepted so far.
func (s *Sink) Connections() int {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.conns
}

type countingListener struct {
	net.Listener
	s *Sink
}

func (l *countingListener) Accept() (net.Conn, error) {
	c, err := l.Listener.Accept()
	if err == nil {
		l.s.mu.Lock()
		l.s.conns++
		l.s.mu.Unlock()
	}
	return c, err
}

// Messages returns what arrived so far.
func (s *Sink) Messages() []Message {
	s.mu.Lock()
	defer s.mu.Unlock()
	return append([]Message(nil), s.msgs...)
}

// Wait waits until n messages arrived in all, or the timeout passes; it
// returns what arrived. It returns at the n-th message: a test that
// counts duplicates waits with Settled instead.
func (s *Sink) Wait(n int, timeout time.Duration) []Message {
	deadline := time.NewTimer(timeout)
	defer deadline.Stop()
	for {
		if m := s.Messages(); len(m) >= n {
			return m
		}
		select {
		case <-s.arrived:
		case <-deadline.C:
			return s.Messages()
		}
	}
}

// FailRcpt makes the sink answer RCPT TO:<addr> with err (nil: accept).
func (s *Sink) FailRcpt(addr string, err error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	s.rcptErr[strings.ToLower(addr)] = err
}

// FailData makes the sink answer the end of DATA with err (nil: accept).
func (s *Sink) FailData(err error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	s.dataErr = err
}

// Gate makes the sink ask f at each end of DATA, in turn: an error is the
// answer (an upstream that throttles, say), nil takes the message.
func (s *Sink) Gate(f func() error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	s.gate = f
}

// Refused is the number of messages the gate refused.
func (s *Sink) Refused() int {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.refused
}

type sinkSession struct {
	s    *Sink
	tls  bool
	user string
	msg  Message
}

func (ss *sinkSession) AuthMechanisms() []string {
	if ss.s.users == nil {
		return nil
	}
	return []string{sasl.Plain}
}

func (ss *sinkSession) Auth(mech string) (sasl.Server, error) {
	return sasl.NewPlainServer(func(_, user, pass string) error {
		if p, ok := ss.s.users[user]; !ok || p != pass {
			return smtp.ErrAuthFailed
		}
		ss.user = user
		return nil
	}), nil
}

func (ss *sinkSession) Mail(from string, o *smtp.MailOptions) error {
	if ss.s.users != nil && ss.user == "" {
		return smtp.ErrAuthRequired
	}
	ss.msg = Message{From: from, User: ss.user, TLS: ss.tls, Notify: map[string]string{}, ORcpt: map[string]string{}, ORcptType: map[string]string{}}
	if o != nil {
		ss.msg.Ret, ss.msg.EnvID = string(o.Return), o.EnvelopeID
		ss.msg.UTF8, ss.msg.Size = o.UTF8, o.Size
	}
	return nil
}

func (ss *sinkSession) Rcpt(to string, o *smtp.RcptOptions) error {
	ss.s.mu.Lock()
	err := ss.s.rcptErr[strings.ToLower(to)]
	ss.s.mu.Unlock()
	if err != nil {
		return err
	}
	ss.msg.To = append(ss.msg.To, to)
	if o != nil {
		var n []string
		for _, x := range o.Notify {
			n = append(n, string(x))
		}
		ss.msg.Notify[to] = strings.Join(n, ",")
		ss.msg.ORcpt[to] = o.OriginalRecipient
		ss.msg.ORcptType[to] = strings.ToLower(string(o.OriginalRecipientType))
	}
	return nil
}

func (ss *sinkSession) Data(r io.Reader) error {
	var b bytes.Buffer
	if _, err := io.Copy(&b, r); err != nil {
		return err
	}
	ss.s.mu.Lock()
	defer ss.s.mu.Unlock()
	if ss.s.dataErr != nil {
		return ss.s.dataErr
	}
	if ss.s.gate != nil {
		if err := ss.s.gate(); err != nil {
			ss.s.refused++
			return err
		}
	}
	ss.msg.Data = b.Bytes()
	ss.msg.At = time.Now()
	ss.s.msgs = append(ss.s.msgs, ss.msg)
	ss.s.last = time.Now()
	select {
	case ss.s.arrived <- struct{}{}:
	default:
	}
	return nil
}

func (ss *sinkSession) Reset()        { ss.msg = Message{} }
func (ss *sinkSession) Logout() error { return nil }

type nopLog struct{}

func (nopLog) Printf(string, ...any) {}
func (nopLog) Println(...any)        {}

// ErrTemp and ErrPerm are ready-made upstream refusals.
var (
	ErrTemp = &smtp.SMTPError{Code: 451, EnhancedCode: smtp.EnhancedCode{4, 3, 0}, Message: "try later"}
	ErrPerm = &smtp.SMTPError{Code: 550, EnhancedCode: smtp.EnhancedCode{5, 1, 1}, Message: "no such user"}
)

// Cert makes a self-signed certificate for 127.0.0.1 and localhost, and the
// pool that trusts it.
func Cert() (*tls.Certificate, *x509.CertPool, error) {
	key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		return nil, nil, err
	}
	tmpl := &x509.Certificate{
		SerialNumber:          big.NewInt(time.Now().UnixNano()),
		Subject:               pkix.Name{CommonName: "127.0.0.1"},
		NotBefore:             time.Now().Add(-time.Hour),
		NotAfter:              time.Now().Add(24 * time.Hour),
		KeyUsage:              x509.KeyUsageDigitalSignature | x509.KeyUsageCertSign,
		ExtKeyUsage:           []x509.ExtKeyUsage{x509.ExtKeyUsageServerAuth},
		IsCA:                  true,
		BasicConstraintsValid: true,
		DNSNames:              []string{"localhost"},
		IPAddresses:           []net.IP{net.IPv4(127, 0, 0, 1)},
	}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, tmpl, key.Public(), key)
	if err != nil {
		return nil, nil, err
	}
	leaf, _ := x509.ParseCertificate(der)
	pool := x509.NewCertPool()
	pool.AddCert(leaf)
	return &tls.Certificate{Certificate: [][]byte{der}, PrivateKey: key, Leaf: leaf}, pool, nil
}
