package queue

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"mime"
	"mime/multipart"
	"net/mail"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/smarthost/smarthost/relay/relaytest"
)

// scripted is a Deliverer whose outcomes the test sets per recipient.
type scripted struct {
	mu       sync.Mutex
	outcome  map[string]error
	attempts map[string]int
	got      []string // "id from rcpt data" per accepted recipient
}

func newScripted() *scripted {
	return &scripted{outcome: map[string]error{}, attempts: map[string]int{}}
}

func (s *scripted) set(rcpt string, err error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	s.outcome[rcpt] = err
}

func (s *scripted) Deliver(_ context.Context, m *Message) []Outcome {
	r, err := m.Open()
	if err != nil {
		panic(err)
	}
	data, _ := io.ReadAll(r)
	r.Close()
	s.mu.Lock()
	defer s.mu.Unlock()
	var out []Outcome
	for _, rc := range m.Pending() {
		s.attempts[rc]++
		err := s.outcome[rc]
		reply := "250 2.0.0 Ok: queued as S" + m.ID[:4]
		if err == nil {
			s.got = append(s.got, m.ID+" "+m.From+" "+rc+" "+string(data))
		} else {
			reply = ""
		}
		out = append(out, Outcome{Err: err, Upstream: "scripted", Reply: reply})
	}
	return out
}

func (s *scripted) delivered() []string {
	s.mu.Lock()
	defer s.mu.Unlock()
	return append([]string(nil), s.got...)
}

func quiet() *slog.Logger { return slog.New(slog.NewTextHandler(io.Discard, nil)) }

func openQ(t *testing.T, dir string, d Deliverer, maxAge time.Duration) *Queue {
	t.Helper()
	q, err := Open(Config{Dir: dir, Workers: 2, Retry: []time.Duration{20 * time.Millisecond}, MaxAge: maxAge,
		Hostname: "relay.test", Rescan: 50 * time.Millisecond}, d, quiet())
	if err != nil {
		t.Fatal(err)
	}
	return q
}

func run(t *testing.T, q *Queue) {
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan struct{})
	go func() { q.Run(ctx); close(done) }()
	t.Cleanup(func() { cancel(); <-done; q.Close() })
}

func enqueue(t *testing.T, q *Queue, from string, to []string, prepend, data string) string {
	t.Helper()
	d, err := q.Create()
	if err != nil {
		t.Fatal(err)
	}
	io.WriteString(d, data)
	id, err := d.Commit(Envelope{From: from, To: to}, []byte(prepend))
	if err != nil {
		t.Fatal(err)
	}
	return id
}

// inBackground is how long a test waits for what the queue does in the
// background (relaytest.Eventually).
const inBackground = 10 * time.Second

func TestCommitIsDurableAndDelivered(t *testing.T) {
	dir := t.TempDir()
	q := openQ(t, dir, newScripted(), time.Hour)
	id := enqueue(t, q, "a@x.org", []string{"b@y.org"}, "X-Added: 1\r\n", "Subject: s\r\n\r\nbody\r\n")
	q.Close()

	// A new process finds it and delivers prepend + data byte for byte.
	d := newScripted()
	q2 := openQ(t, dir, d, time.Hour)
	run(t, q2)
	relaytest.Eventually(t, "delivery", inBackground, func() bool { return len(d.delivered()) == 1 })
	if want := id + " a@x.org b@y.org X-Added: 1\r\nSubject: s\r\n\r\nbody\r\n"; d.delivered()[0] != want {
		t.Fatalf("delivered %q, want %q", d.delivered()[0], want)
	}
	relaytest.Eventually(t, "removal", inBackground, func() bool { return q2.Len() == 0 })
	if ents, _ := os.ReadDir(filepath.Join(dir, "msg")); len(ents) != 0 {
		t.Fatalf("spool not empty after delivery: %v", ents)
	}
}

func TestSecondProcessLockedOut(t *testing.T) {
	dir := t.TempDir()
	q := openQ(t, dir, newScripted(), time.Hour)
	defer q.Close()
	if _, err := Open(Config{Dir: dir}, newScripted(), quiet()); err == nil || !strings.Contains(err.Error(), "in use") {
		t.Fatalf("second Open: %v, want in use", err)
	}
}

func TestAbortedAndOrphansCleaned(t *testing.T) {
	dir := t.TempDir()
	q := openQ(t, dir, newScripted(), time.Hour)
	d, _ := q.Create()
	io.WriteString(d, "half a message")
	d.Abort()
	d2, _ := q.Create()
	io.WriteString(d2, "never committed") // the process "dies" here
	q.Close()
	// A crash inside remove() may keep the envelope and lose the data: the
	// message was delivered, and must not be tried again.
	os.WriteFile(filepath.Join(dir, "msg", "0123456789ABCDEF0124.env"), []byte(`{"ID":"0123456789ABCDEF0124","From":"a@b.c","Recipients":[{"Addr":"x@y.z","Status":"pending"}]}`), 0o600)

	q2 := openQ(t, dir, newScripted(), time.Hour)
	defer q2.Close()
	for _, sub := range []string{"tmp", "msg"} {
		if ents, _ := os.ReadDir(filepath.Join(dir, sub)); len(ents) != 0 {
			t.Errorf("%s not cleaned: %v", sub, ents)
		}
	}
}

func TestTemporaryFailureRetried(t *testing.T) {
	d := newScripted()
	d.set("b@y.org", errors.New("451 try later"))
	dir := t.TempDir()
	q := openQ(t, dir, d, time.Hour)
	run(t, q)
	enqueue(t, q, "a@x.org", []string{"b@y.org", "c@y.org"}, "", "Subject: s\r\n\r\nbody\r\n")
	relaytest.Eventually(t, "two attempts", inBackground, func() bool {
		d.mu.Lock()
		defer d.mu.Unlock()
		return d.attempts["b@y.org"] >= 2
	})
	d.set("b@y.org", nil)
	relaytest.Eventually(t, "delivery after retry", inBackground, func() bool { return len(d.delivered()) == 2 })
	// The saved state (.env) goes with the data.
	relaytest.Eventually(t, "an empty spool", inBackground, func() bool {
		ents, _ := os.ReadDir(filepath.Join(dir, "msg"))
		return len(ents) == 0
	})
	d.mu.Lock()
	defer d.mu.Unlock()
	if d.attempts["c@y.org"] != 1 {
		t.Errorf("accepted recipient attempted %d times, want 1", d.attempts["c@y.org"])
	}
}

func TestPermanentFailureBounces(t *testing.T) {
	d := newScripted()
	d.set("gone@y.org", Permanent(errors.New("550 5.1.1 no such user")))
	q := openQ(t, t.TempDir(), d, time.Hour)
	run(t, q)
	id := enqueue(t, q, "a@x.org", []string{"gone@y.org", "ok@y.org"}, "", "Subject: original\r\nMessage-ID: <m@x>\r\n\r\nbody\r\n")
	relaytest.Eventually(t, "bounce", inBackground, func() bool { return len(d.delivered()) == 2 })
	var bounce string
	for _, g := range d.delivered() {
		if strings.Contains(g, "  a@x.org ") { // null sender
			bounce = g
		}
	}
	if bounce == "" {
		t.Fatalf("no bounce to the sender: %q", d.delivered())
	}
	for _, want := range []string{"report-type=delivery-status", "Final-Recipient: rfc822; gone@y.org", "Status: 5.1.1",
		"Action: failed", "Subject: original", "X-Queue-ID: " + id} {
		if !strings.Contains(bounce, want) {
			t.Errorf("bounce lacks %q:\n%s", want, bounce)
		}
	}
	if strings.Contains(bounce, "ok@y.org") {
		t.Error("bounce names the recipient that was delivered")
	}
}

// The bounce is a well-formed RFC 3464 report: multipart/report with a
// human part, a message/delivery-status part and the original header.
func TestBounceIsMultipartReport(t *testing.T) {
	d := newScripted()
	d.set("gone@y.org", Permanent(errors.New("upstream p: SMTP error 550: 5.1.1 no such user")))
	d.set("quiet@y.org", Permanent(errors.New("550 5.1.1 nope")))
	q := openQ(t, t.TempDir(), d, time.Hour)
	run(t, q)
	dd, _ := q.Create()
	io.WriteString(dd, "Subject: original\r\n\r\nbody\r\n")
	if _, err := dd.Commit(Envelope{From: "a@x.org", To: []string{"gone@y.org", "quiet@y.org"}, EnvID: "env-7",
		Notify: [][]string{{"FAILURE"}, {"NEVER"}}, ORcpt: []string{"orig@y.org", ""}}, nil); err != nil {
		t.Fatal(err)
	}
	relaytest.Eventually(t, "bounce", inBackground, func() bool { return len(d.delivered()) == 1 })
	raw := d.delivered()[0]
	raw = raw[strings.Index(raw, "From: Mail Delivery"):]
	msg, err := mail.ReadMessage(strings.NewReader(raw))
	if err != nil {
		t.Fatal(err)
	}
	mt, params, err := mime.ParseMediaType(msg.Header.Get("Content-Type"))
	if err != nil || mt != "multipart/report" || params["report-type"] != "delivery-status" {
		t.Fatalf("Content-Type %q: %v", msg.Header.Get("Content-Type"), err)
	}
	mr := multipart.NewReader(msg.Body, params["boundary"])
	var types []string
	var status string
	for {
		p, err := mr.NextPart()
		if err == io.EOF {
			break
		}
		if err != nil {
			t.Fatal(err)
		}
		types = append(types, p.Header.Get("Content-Type"))
		b, _ := io.ReadAll(p)
		if p.Header.Get("Content-Type") == "message/delivery-status" {
			status = string(b)
		}
	}
	if strings.Join(types, " ") != "text/plain; charset=utf-8 message/delivery-status text/rfc822-headers" {
		t.Fatalf("parts %q", types)
	}
	for _, want := range []string{"Original-Envelope-Id: env-7", "Original-Recipient: rfc822; orig@y.org", "Final-Recipient: rfc822; gone@y.org", "Status: 5.1.1", "Diagnostic-Code: smtp; upstream p: SMTP error 550: 5.1.1 no such user"} {
		if !strings.Contains(status, want) {
			t.Errorf("delivery-status lacks %q:\n%s", want, status)
		}
	}
	if strings.Contains(status, "quiet@y.org") {
		t.Error("a NOTIFY=NEVER recipient is in the bounce")
	}
}

func TestBounceNeverBounces(t *testing.T) {
	d := newScripted()
	d.set("a@x.org", Permanent(errors.New("550 nope")))
	q := openQ(t, t.TempDir(), d, time.Hour)
	run(t, q)
	enqueue(t, q, "", []string{"a@x.org"}, "", "Subject: bounce\r\n\r\nx\r\n")
	relaytest.Eventually(t, "attempt", inBackground, func() bool { d.mu.Lock(); defer d.mu.Unlock(); return d.attempts["a@x.org"] == 1 })
	relaytest.Eventually(t, "removal", inBackground, func() bool { return q.Len() == 0 })
	if len(d.delivered()) != 0 {
		t.Fatalf("a bounce bounced: %q", d.delivered())
	}
}

func TestMaxAgeBounces(t *testing.T) {
	d := newScripted()
	d.set("slow@y.org", errors.New("451 later"))
	q := openQ(t, t.TempDir(), d, 0)
	run(t, q)
	enqueue(t, q, "a@x.org", []string{"slow@y.org"}, "", "Subject: s\r\n\r\nx\r\n")
	relaytest.Eventually(t, "bounce", inBackground, func() bool { return len(d.delivered()) == 1 })
	if g := d.delivered()[0]; !strings.Contains(g, "gave up after") || !strings.Contains(g, "Status: 5.0.0") {
		t.Fatalf("bounce: %s", g)
	}
}

func TestSpoolAdmin(t *testing.T) {
	dir := t.TempDir()
	d := newScripted()
	d.set("b@y.org", errors.New("451 later"))
	rec := &recorder{}
	q, err := Open(Config{Dir: dir, Workers: 1, Retry: []time.Duration{time.Hour}, MaxAge: 48 * time.Hour, Rescan: 20 * time.Millisecond, Observer: rec}, d, quiet())
	if err != nil {
		t.Fatal(err)
	}
	run(t, q)
	id := enqueue(t, q, "a@x.org", []string{"b@y.org"}, "X-P: 1\r\n", "Subject: s\r\n\r\nx\r\n")
	id2 := enqueue(t, q, "a@x.org", []string{"b@y.org"}, "", "Subject: t\r\n\r\nx\r\n")
	attempts := func() int { d.mu.Lock(); defer d.mu.Unlock(); return d.attempts["b@y.org"] }
	relaytest.Eventually(t, "first attempts", inBackground, func() bool { return attempts() == 2 })

	sp, err := OpenSpool(dir)
	if err != nil {
		t.Fatal(err)
	}
	ms, err := sp.List()
	if err != nil || len(ms) != 2 || ms[0].ID != id {
		t.Fatalf("List: %v %+v", err, ms)
	}
	m, body, err := sp.Show(id)
	if err != nil || m.Attempts != 1 || string(body) != "X-P: 1\r\nSubject: s\r\n\r\nx\r\n" || !strings.Contains(m.LastError, "451") {
		t.Fatalf("Show: %v %+v %q", err, m, body)
	}
	// retry: the running queue attempts again long before the hour is up.
	if err := sp.Retry(id); err != nil {
		t.Fatal(err)
	}
	relaytest.Eventually(t, "retry on request", inBackground, func() bool { return attempts() == 3 })
	if r := rec.of(EventRetry); len(r) != 1 || r[0].ID != id || r[0].By != "smarthost queue retry" {
		t.Errorf("retry events %+v: want one for %s, by smarthost queue retry", r, id)
	}
	// retry --all: both, and no request is left behind.
	if n, err := sp.RetryAll(); err != nil || n != 2 {
		t.Fatalf("RetryAll: %d, %v; want 2", n, err)
	}
	relaytest.Eventually(t, "retry of all on request", inBackground, func() bool { return attempts() == 5 })
	if left, _ := filepath.Glob(filepath.Join(dir, "msg", "*.retry")); len(left) != 0 {
		t.Fatalf("requests left behind: %v", left)
	}
	if err := sp.Delete(id2); err != nil {
		t.Fatal(err)
	}
	relaytest.Eventually(t, "forgotten after delete", inBackground, func() bool { return q.Len() == 1 })
	// A request for a message delivered (here: deleted) between the scan
	// and the request is taken back.
	if asked, err := sp.askRetry(id2); asked || err != nil {
		t.Fatalf("askRetry of a message gone: %v, %v", asked, err)
	}
	if _, err := os.Stat(filepath.Join(dir, "msg", id2+".retry")); !errors.Is(err, os.ErrNotExist) {
		t.Fatalf("request left for a message gone: %v", err)
	}
	if _, _, err := sp.Show(id2); err == nil {
		t.Fatal("deleted message still shown")
	}
	if err := sp.Delete("../../etc/passwd"); err == nil {
		t.Fatal("Delete accepted a path")
	}
}

// A damaged message (here data with no envelope trailer, as a spool of the
// first release could leave after a crash) is never delivered nor deleted:
// a fresh start sets it aside for a person, and a running queue leaves it.
func TestDamagedMessageSetAsideAtStart(t *testing.T) {
	dir := t.TempDir()
	d := newScripted()
	q := openQ(t, dir, d, time.Hour)
	id := "00112233445566778899"
	os.WriteFile(filepath.Join(dir, "msg", id+".data"), []byte("Subject: x\r\n\r\nno trailer\r\n"), 0o600)
	if err := q.rescan(false); err != nil {
		t.Fatal(err)
	}
	if _, err := os.Stat(filepath.Join(dir, "msg", id+".data")); err != nil {
		t.Fatalf("a running rescan moved it: %v", err)
	}
	q.Close()
	q2 := openQ(t, dir, d, time.Hour)
	run(t, q2)
	if _, err := os.Stat(filepath.Join(dir, "msg", id+".data.bad")); err != nil {
		t.Fatalf("at start it is set aside: %v", err)
	}
	if q2.Len() != 0 || len(d.delivered()) != 0 {
		t.Fatalf("a damaged message was queued (%d) or delivered (%v)", q2.Len(), d.delivered())
	}
}

// A spool written before the envelope moved into the data file (ID.data
// holding the data alone, ID.env the envelope) is still delivered.
func TestSpoolOfFirstReleaseDelivered(t *testing.T) {
	dir := t.TempDir()
	q := openQ(t, dir, newScripted(), time.Hour)
	q.Close()
	id := "00112233445566778899"
	data := "Subject: old\r\n\r\nbody\r\n"
	os.WriteFile(filepath.Join(dir, "msg", id+".data"), []byte(data), 0o600)
	env := fmt.Sprintf(`{"id":%q,"from":"a@x.org","recipients":[{"addr":"b@y.org","status":"pending"}],"prepend":"X-P: 1\r\n","size":%d}`, id, len(data))
	os.WriteFile(filepath.Join(dir, "msg", id+".env"), []byte(env), 0o600)

	d := newScripted()
	q2 := openQ(t, dir, d, time.Hour)
	run(t, q2)
	relaytest.Eventually(t, "delivery", inBackground, func() bool { return len(d.delivered()) == 1 })
	if want := id + " a@x.org b@y.org X-P: 1\r\n" + data; d.delivered()[0] != want {
		t.Fatalf("delivered %q, want %q", d.delivered()[0], want)
	}
	relaytest.Eventually(t, "removal", inBackground, func() bool {
		ents, _ := os.ReadDir(filepath.Join(dir, "msg"))
		return len(ents) == 0
	})
}

// Once delivery has changed a message's state, the saved envelope (.env)
// and not the one committed with the data is what a restart sees.
func TestSavedStateWinsOverTrailer(t *testing.T) {
	dir := t.TempDir()
	d := newScripted()
	d.set("b@y.org", errors.New("451 later"))
	q := openQ(t, dir, d, time.Hour)
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan struct{})
	go func() { q.Run(ctx); close(done) }()
	id := enqueue(t, q, "a@x.org", []string{"b@y.org", "c@y.org"}, "X-P: 1\r\n", "Subject: s\r\n\r\nbody\r\n")
	relaytest.Eventually(t, "saved state", inBackground, func() bool {
		_, err := os.Stat(filepath.Join(dir, "msg", id+".env"))
		return err == nil
	})
	cancel()
	<-done
	q.Close()

	d2 := newScripted()
	d2.set("b@y.org", errors.New("451 later"))
	q2 := openQ(t, dir, d2, time.Hour)
	q2.sched.mu.Lock()
	m := q2.sched.items[id]
	q2.sched.mu.Unlock()
	if m == nil || m.Attempts < 1 || len(m.Pending()) != 1 || m.Pending()[0] != "b@y.org" {
		t.Fatalf("after restart %+v, want c@y.org sent and b@y.org pending after an attempt", m)
	}
	run(t, q2)
	d2.set("b@y.org", nil)
	relaytest.Eventually(t, "delivery after restart", inBackground, func() bool { return len(d2.delivered()) == 1 })
	if want := id + " a@x.org b@y.org X-P: 1\r\nSubject: s\r\n\r\nbody\r\n"; d2.delivered()[0] != want {
		t.Fatalf("delivered %q, want %q", d2.delivered()[0], want)
	}
	relaytest.Eventually(t, "removal", inBackground, func() bool {
		ents, _ := os.ReadDir(filepath.Join(dir, "msg"))
		return len(ents) == 0
	})
}

// A message still pending after delay_warning gets one "delayed" notice
// to its sender, not one per attempt, and delivery goes on.
func TestDelayWarning(t *testing.T) {
	d := newScripted()
	d.set("slow@y.org", errors.New("451 4.4.1 try later"))
	q, err := Open(Config{Dir: t.TempDir(), Workers: 1, Retry: []time.Duration{20 * time.Millisecond}, MaxAge: time.Hour,
		DelayWarning: time.Nanosecond, Hostname: "relay.test", Rescan: time.Second}, d, quiet())
	if err != nil {
		t.Fatal(err)
	}
	run(t, q)
	enqueue(t, q, "a@x.org", []string{"slow@y.org"}, "", "Subject: s\r\n\r\nx\r\n")
	relaytest.Eventually(t, "three attempts", inBackground, func() bool { d.mu.Lock(); defer d.mu.Unlock(); return d.attempts["slow@y.org"] >= 3 })
	warnings := d.delivered()
	if len(warnings) != 1 {
		t.Fatalf("%d notices, want one delay warning", len(warnings))
	}
	for _, want := range []string{"Subject: Delayed Mail (still being retried)", "Action: delayed", "Status: 4.4.1", "Final-Recipient: rfc822; slow@y.org"} {
		if !strings.Contains(warnings[0], want) {
			t.Errorf("warning lacks %q:\n%s", want, warnings[0])
		}
	}
}

// A message committed while a rescan is reading the folder must stay in the
// index: were it dropped, nothing would deliver it until the next rescan
// (10 s by default), which is what the end-to-end benchmark once showed.
func TestRescanKeepsMessagesCommittedMeanwhile(t *testing.T) {
	q := openQ(t, t.TempDir(), newScripted(), time.Hour)
	defer q.Close()
	stop := make(chan struct{})
	done := make(chan struct{})
	go func() {
		defer close(done)
		for {
			select {
			case <-stop:
				return
			default:
				q.rescan(false)
			}
		}
	}()
	const n = 300
	for i := 0; i < n; i++ {
		enqueue(t, q, "a@x.org", []string{"b@y.org"}, "", "Subject: s\r\n\r\nbody\r\n")
	}
	close(stop)
	<-done
	if got := q.Len(); got != n {
		t.Fatalf("%d of %d committed messages in the index after concurrent rescans", got, n)
	}
}

// readTrailer takes only a complete, consistent trailer, whatever the data
// before it looks like.
func TestReadTrailer(t *testing.T) {
	id := "00112233445566778899"
	var good bytes.Buffer
	data := "Subject: x\r\n\r\n\n{}\n0000000004 smarthost-envelope\n" // data that mimics a trailer
	good.WriteString(data)
	if err := writeTrailer(&good, &Message{ID: id, From: "a@x.org", Size: int64(len(data))}); err != nil {
		t.Fatal(err)
	}
	g := good.String()
	cases := map[string]struct {
		file string
		ok   bool
	}{
		"complete":       {g, true},
		"empty":          {"", false},
		"footer cut":     {g[:len(g)-1], false},
		"trailer cut":    {g[:len(data)+3] + g[len(g)-int(footerLen):], false},
		"no trailer":     {data, false},
		"wrong size":     {strings.Replace(g, `"size":`+fmt.Sprint(len(data)), `"size":`+fmt.Sprint(len(data)-1), 1), false},
		"length too big": {"x" + g[len(g)-int(footerLen):], false},
	}
	for name, c := range cases {
		m, err := readTrailer(strings.NewReader(c.file), int64(len(c.file)), id)
		if c.ok != (err == nil) {
			t.Errorf("%s: %v", name, err)
			continue
		}
		if c.ok && (m.ID != id || m.From != "a@x.org" || m.Size != int64(len(data))) {
			t.Errorf("%s: read %+v", name, m)
		}
	}
}

// FuzzReadTrailer: whatever a damaged data file holds, readTrailer returns
// an error or an envelope whose data size accounts for the rest of the file
// exactly; it never panics nor reads past the file.
func FuzzReadTrailer(f *testing.F) {
	var good bytes.Buffer
	good.WriteString("Subject: x\r\n\r\nbody\r\n")
	writeTrailer(&good, &Message{ID: "00112233445566778899", Size: 20})
	f.Add(good.Bytes())
	f.Add([]byte("0000000004 smarthost-envelope\n"))
	f.Add([]byte("\n{}\n0000000004 smarthost-envelope\n"))
	f.Fuzz(func(t *testing.T, b []byte) {
		m, err := readTrailer(bytes.NewReader(b), int64(len(b)), "00112233445566778899")
		if err != nil {
			return
		}
		tail := b[m.Size:]
		if m.Size < 0 || int64(len(b)) < m.Size+footerLen || !bytes.HasSuffix(tail, []byte(footerTag)) || tail[0] != '\n' {
			t.Fatalf("accepted %q as an envelope after %d bytes of data", tail, m.Size)
		}
	})
}

// stalled is a deliverer whose every delivery waits until its context
// ends (an upstream that tarpits), and reports why it ended.
type stalled struct {
	started chan string
	causes  chan error
}

func (s *stalled) Deliver(ctx context.Context, m *Message) []Outcome {
	s.started <- m.ID
	<-ctx.Done()
	s.causes <- context.Cause(ctx)
	return Failed(len(m.Pending()), context.Cause(ctx))
}

// A node that leaves does not wait for the deliveries in flight through
// the routes: Handoff ends them (ErrLeaving), and their messages go to the
// peers with the rest.
func TestHandoffCutsShortDeliveriesInFlight(t *testing.T) {
	routes := &stalled{started: make(chan string, 8), causes: make(chan error, 8)}
	q := openQ(t, t.TempDir(), routes, time.Hour)
	run(t, q)
	id := enqueue(t, q, "a@x.org", []string{"b@y.org"}, "", "Subject: s\r\n\r\nx\r\n")
	select {
	case got := <-routes.started:
		if got != id {
			t.Fatalf("attempt at %s, want %s", got, id)
		}
	case <-time.After(10 * time.Second):
		t.Fatal("no delivery attempt")
	}
	peers := newScripted()
	q.Handoff(peers, 10*time.Millisecond)
	select {
	case cause := <-routes.causes:
		if !errors.Is(cause, ErrLeaving) {
			t.Fatalf("the delivery in flight ended with %v, want ErrLeaving", cause)
		}
	case <-time.After(10 * time.Second):
		t.Fatal("the delivery in flight was not cut short")
	}
	relaytest.Eventually(t, "the message handed to the peers", inBackground, func() bool { return len(peers.delivered()) == 1 })
	relaytest.Eventually(t, "an empty queue", inBackground, func() bool { return q.Len() == 0 })
}

// At a stop, an attempt in flight gets stopGrace to finish; one that
// stalls longer is cut short, and its message stays queued.
func TestStopCutsShortStalledAttempts(t *testing.T) {
	dir := t.TempDir()
	routes := &stalled{started: make(chan string, 8), causes: make(chan error, 8)}
	q := openQ(t, dir, routes, time.Hour)
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan struct{})
	go func() { q.Run(ctx); close(done) }()
	enqueue(t, q, "a@x.org", []string{"b@y.org"}, "", "Subject: s\r\n\r\nx\r\n")
	<-routes.started
	cancel()
	select {
	case <-done:
	case <-time.After(3 * stopGrace):
		t.Fatal("Run waits for a stalled attempt")
	}
	if cause := <-routes.causes; !errors.Is(cause, errStopping) {
		t.Fatalf("the stalled attempt ended with %v, want errStopping", cause)
	}
	q.Close()
	q = openQ(t, dir, newScripted(), time.Hour)
	defer q.Close()
	if q.Len() != 1 {
		t.Fatalf("%d messages queued after the stop, want the one cut short", q.Len())
	}
}

// slow takes a moment over every delivery, and succeeds unless its
// context ended first.
type slow struct{ started chan struct{} }

func (s *slow) Deliver(ctx context.Context, m *Message) []Outcome {
	s.started <- struct{}{}
	time.Sleep(300 * time.Millisecond)
	return Failed(len(m.Pending()), context.Cause(ctx))
}

// An attempt that ends within stopGrace is not cut short by a stop: its
// message is delivered, not sent again after the restart.
func TestStopLetsAttemptsFinish(t *testing.T) {
	dir := t.TempDir()
	d := &slow{started: make(chan struct{}, 8)}
	q := openQ(t, dir, d, time.Hour)
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan struct{})
	go func() { q.Run(ctx); close(done) }()
	enqueue(t, q, "a@x.org", []string{"b@y.org"}, "", "Subject: s\r\n\r\nx\r\n")
	<-d.started
	cancel()
	<-done
	q.Close()
	q = openQ(t, dir, newScripted(), time.Hour)
	defer q.Close()
	if q.Len() != 0 {
		t.Fatalf("%d messages queued after the stop, want the one delivered during it gone", q.Len())
	}
}

// A message the server moves from the journal to msg/ (its first attempt
// deferred it) while `queue list` reads the spool is listed all the same:
// each listing taken during the moves holds every message exactly once.
func TestSpoolListWhileMessagesMove(t *testing.T) {
	dir := t.TempDir()
	d := newScripted()
	d.set("b@y.org", errors.New("451 later"))
	q, err := Open(Config{Dir: dir, Workers: 2, Retry: []time.Duration{time.Hour}, MaxAge: 48 * time.Hour, Rescan: time.Hour}, d, quiet())
	if err != nil {
		t.Fatal(err)
	}
	const n = 300
	for range n {
		enqueue(t, q, "a@x.org", []string{"b@y.org"}, "", "Subject: s\r\n\r\nx\r\n")
	}
	run(t, q)
	attempts := func() int { d.mu.Lock(); defer d.mu.Unlock(); return d.attempts["b@y.org"] }
	listings := 0
	for deadline := time.Now().Add(30 * time.Second); attempts() < n; listings++ {
		if time.Now().After(deadline) {
			t.Fatalf("%d of %d first attempts in 30 s", attempts(), n)
		}
		sp, err := OpenSpool(dir)
		if err != nil {
			t.Fatal(err)
		}
		ms, err := sp.List()
		if err != nil {
			t.Fatal(err)
		}
		ids := map[string]bool{}
		for _, m := range ms {
			ids[m.ID] = true
		}
		if len(ms) != n || len(ids) != n {
			t.Fatalf("listing %d, %d first attempts made: %d messages listed, %d distinct; want %d", listings, attempts(), len(ms), len(ids), n)
		}
	}
	t.Logf("%d listings while %d messages moved to msg/", listings, n)
}
