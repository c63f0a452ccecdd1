package main

import (
	"bytes"
	"crypto/tls"
	"errors"
	"flag"
	"fmt"
	"os"
	"sort"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"github.com/emersion/go-sasl"
	"github.com/emersion/go-smtp"
)

type loadConfig struct {
	addr       string
	starttls   bool
	implicit   bool
	user, pass string
	from, to   string
	sessions   int
	perSession int // 0: as many as possible on one connection
	size       int
	total      int
	// rate > 0 makes the load open: message i is due at start + i/rate
	// whether or not earlier ones have been answered, and its latency runs
	// from when it was due, so a slow server cannot hide its queueing delay
	// by slowing the load down (coordinated omission).
	rate      float64
	start     time.Time
	tlsConfig *tls.Config
}

type stats struct {
	mu       sync.Mutex
	setup    []time.Duration
	message  []time.Duration
	accepted atomic.Int64
	refused  atomic.Int64
	errors   atomic.Int64
	firstErr atomic.Value
}

func runLoad(args []string) error {
	var c loadConfig
	fs := flag.NewFlagSet("run", flag.ContinueOnError)
	fs.StringVar(&c.addr, "addr", "127.0.0.1:2587", "SMTP address")
	fs.BoolVar(&c.starttls, "starttls", false, "STARTTLS before AUTH")
	fs.BoolVar(&c.implicit, "implicit", false, "TLS from the first byte")
	fs.StringVar(&c.user, "user", "", "AUTH PLAIN user (empty: no AUTH)")
	fs.StringVar(&c.pass, "pass", "", "AUTH PLAIN password")
	fs.StringVar(&c.from, "from", "load@example.com", "envelope sender and From:")
	fs.StringVar(&c.to, "to", "sink@example.org", "recipient")
	fs.IntVar(&c.sessions, "sessions", 20, "concurrent sessions")
	fs.IntVar(&c.perSession, "per-session", 0, "messages per connection (0: all on one)")
	fs.IntVar(&c.size, "size", 10240, "message size in bytes")
	fs.IntVar(&c.total, "total", 5000, "messages in all")
	fs.Float64Var(&c.rate, "rate", 0, "messages per second in all, on a fixed schedule (0: each session sends as soon as its last message is answered)")
	resume := fs.Bool("resume", true, "resume TLS sessions across connections, as mail clients and MTAs do")
	if err := fs.Parse(args); err != nil {
		return err
	}
	// Load testing a relay with a self-signed certificate: no verification.
	c.tlsConfig = &tls.Config{InsecureSkipVerify: true}
	if *resume {
		c.tlsConfig.ClientSessionCache = tls.NewLRUClientSessionCache(64)
	}
	if c.rate < 0 {
		return fmt.Errorf("--rate %g: must be 0 or more", c.rate)
	}
	st, took := load(&c)
	acc := st.accepted.Load()
	offered, latency := "", "message"
	if c.rate > 0 {
		offered = fmt.Sprintf("offered %.1f msg/s: ", c.rate)
		latency = "message from when due"
	}
	fmt.Printf("%ssent %d accepted %d refused %d errors %d in %.2fs: %.1f msg/s; setup p50 %s p99 %s; %s p50 %s p99 %s\n",
		offered, c.total, acc, st.refused.Load(), st.errors.Load(), took.Seconds(), float64(acc)/took.Seconds(),
		pct(st.setup, 50), pct(st.setup, 99), latency, pct(st.message, 50), pct(st.message, 99))
	if e := st.firstErr.Load(); e != nil {
		fmt.Fprintln(os.Stderr, "first error:", e)
	}
	return nil
}

// load runs the sessions and returns what they saw and how long it took.
func load(c *loadConfig) (*stats, time.Duration) {
	msg := makeMessage(c.from, c.to, c.size)
	var next atomic.Int64
	st := &stats{}
	start := time.Now()
	// On a schedule with long sessions, every session connects first, so
	// that the first logins are not counted as queueing delay.
	var ready sync.WaitGroup
	begin := make(chan struct{})
	var wg sync.WaitGroup
	for i := 0; i < c.sessions; i++ {
		wg.Add(1)
		ready.Add(1)
		go func() {
			defer wg.Done()
			worker(c, msg, &next, st, &ready, begin)
		}()
	}
	ready.Wait()
	if c.rate > 0 {
		start = time.Now()
	}
	c.start = start
	close(begin)
	wg.Wait()
	return st, time.Since(start)
}

func makeMessage(from, to string, size int) []byte {
	var b bytes.Buffer
	fmt.Fprintf(&b, "From: <%s>\r\nTo: <%s>\r\nSubject: load\r\nMessage-ID: <%d@smtpload>\r\nDate: %s\r\n\r\n",
		from, to, time.Now().UnixNano(), time.Now().Format(time.RFC1123Z))
	line := strings.Repeat("0123456789abcdef", 4) + "0123456789ab\r\n" // 78 bytes
	for b.Len()+len(line) <= size {
		b.WriteString(line)
	}
	return b.Bytes()
}

func (c *loadConfig) dial() (*smtp.Client, error) {
	tc := c.tlsConfig
	var cl *smtp.Client
	var err error
	switch {
	case c.implicit:
		cl, err = smtp.DialTLS(c.addr, tc)
	case c.starttls:
		cl, err = smtp.DialStartTLS(c.addr, tc)
	default:
		cl, err = smtp.Dial(c.addr)
	}
	if err != nil {
		return nil, err
	}
	if err := cl.Hello("smtpload"); err != nil && !strings.Contains(err.Error(), "called after") {
		cl.Close()
		return nil, err
	}
	if c.user != "" {
		if err := cl.Auth(sasl.NewPlainClient("", c.user, c.pass)); err != nil {
			cl.Close()
			return nil, err
		}
	}
	return cl, nil
}

// connect dials and logs in, counting the setup time, or the failure
// (then it returns nil).
func (c *loadConfig) connect(st *stats) *smtp.Client {
	t0 := time.Now()
	cl, err := c.dial()
	if err != nil {
		st.fail(err)
		return nil
	}
	st.add(&st.setup, time.Since(t0))
	return cl
}

func worker(c *loadConfig, msg []byte, next *atomic.Int64, st *stats, ready *sync.WaitGroup, begin <-chan struct{}) {
	var cl *smtp.Client
	sent := 0
	defer func() {
		if cl != nil {
			cl.Quit()
		}
	}()
	if c.rate > 0 && c.perSession == 0 {
		cl = c.connect(st)
	}
	ready.Done()
	<-begin
	for {
		i := next.Add(1)
		if i > int64(c.total) {
			break
		}
		var due time.Time
		if c.rate > 0 {
			due = c.start.Add(time.Duration(float64(i-1) / c.rate * float64(time.Second)))
			time.Sleep(time.Until(due))
		}
		if cl == nil || (c.perSession > 0 && sent >= c.perSession) {
			if cl != nil {
				cl.Quit()
			}
			if cl = c.connect(st); cl == nil {
				continue
			}
			sent = 0
		}
		t0 := time.Now()
		if c.rate > 0 {
			t0 = due
		}
		err := send(cl, c.from, c.to, msg)
		sent++
		var se *smtp.SMTPError
		switch {
		case err == nil:
			st.accepted.Add(1)
			st.add(&st.message, time.Since(t0))
		case errors.As(err, &se):
			st.refused.Add(1)
			st.firstErr.CompareAndSwap(nil, err.Error())
			cl.Reset()
		default:
			st.fail(err)
			cl.Close()
			cl = nil
		}
	}
}

func send(cl *smtp.Client, from, to string, msg []byte) error {
	if err := cl.Mail(from, nil); err != nil {
		return err
	}
	if err := cl.Rcpt(to, nil); err != nil {
		return err
	}
	w, err := cl.Data()
	if err != nil {
		return err
	}
	if _, err := w.Write(msg); err != nil {
		return err
	}
	return w.Close()
}

func (st *stats) add(list *[]time.Duration, d time.Duration) {
	st.mu.Lock()
	*list = append(*list, d)
	st.mu.Unlock()
}

func (st *stats) fail(err error) {
	st.errors.Add(1)
	st.firstErr.CompareAndSwap(nil, err.Error())
}

func pct(ds []time.Duration, p int) time.Duration {
	if len(ds) == 0 {
		return 0
	}
	s := append([]time.Duration(nil), ds...)
	sort.Slice(s, func(i, j int) bool { return s[i] < s[j] })
	return s[(len(s)-1)*p/100].Round(10 * time.Microsecond)
}
