package main

// The compose stack of docker-compose.yml, as a user runs it: two relays
// behind HAProxy, Redis, OpenLDAP, Mailpit. scripts/test.sh builds the
// images first where a Docker engine answers: smarthost's with
// scripts/image.sh, and, since no registry can be reached here, local
// stand-ins for the public redis, haproxy and mailpit images under the same
// names (scripts/standins.sh: Debian's packages on a debootstrap base, and
// Mailpit from the Go module proxy). The test says which were used.

import (
	"bufio"
	"context"
	"crypto/tls"
	"encoding/json"
	"errors"
	"fmt"
	"net/http"
	"os"
	"os/exec"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/emersion/go-sasl"
	"github.com/emersion/go-smtp"

	"github.com/smarthost/smarthost/relay/relaytest"
)

type stack struct {
	t       *testing.T
	cmd     []string // docker compose, or docker-compose
	project string
	flags   []string // before every compose command: --profile ad
	env     []string
	smtp    string // the load balancer
	smtps   string // its implicit-TLS port
	mailpit string // http://...
}

// newStack is a compose project of its own for this test binary, taken
// down with its volumes at the end of the test.
func newStack(t *testing.T, name string) *stack {
	relaytest.Service(t, "SMARTHOST_TEST_COMPOSE")
	s := &stack{t: t, project: fmt.Sprintf("%s-%d", name, os.Getpid())}
	if exec.Command("docker", "compose", "version").Run() == nil {
		s.cmd = []string{"docker", "compose"}
	} else {
		s.cmd = []string{"docker-compose"}
	}
	return s
}

func startStack(t *testing.T) *stack {
	s := newStack(t, "smarthost-test")
	s.smtp, s.smtps = freePort(t), freePort(t)
	web := freePort(t)
	s.mailpit = "http://" + web
	s.env = append(os.Environ(),
		"SMTP_PORT="+port(s.smtp), "SMTPS_PORT="+port(s.smtps), "MAILPIT_PORT="+port(web),
		"SMARTHOST_BACK_SUBNET=172.29.54.0/24", "SMARTHOST_HAPROXY_IP=172.29.54.10",
		"SMARTHOST_DEFAULT_MESSAGES=20/h",
		// A drained relay exits 0 and must stay down for the drain
		// subtest to see it; users get unless-stopped.
		"SMARTHOST_RESTART=no")
	for _, img := range []string{"redis:7.0", "haproxy:2.6", "axllent/mailpit:v1.33.1", "debian:bookworm-slim"} {
		out, _ := exec.Command("docker", "image", "inspect", "--format", "{{.Comment}} {{.Author}}", img).CombinedOutput()
		t.Logf("image %s: %s", img, strings.TrimSpace(string(out)))
	}
	t.Logf("stand-ins built by scripts/standins.sh replace the public redis, haproxy and mailpit images here (no registry)")
	t.Cleanup(func() {
		if t.Failed() {
			out, _ := s.compose("logs", "--no-color", "--tail", "40", "relay1", "relay2", "haproxy", "mailpit")
			t.Logf("compose logs:\n%s", out)
			// Last, where a truncated CI log still shows it: what each
			// relay holds now, and why.
			for _, r := range []string{"relay1", "relay2"} {
				out, _ := s.compose("exec", "-T", r, "/smarthost", "queue", "list", "--config", "/etc/smarthost/smarthost.yaml")
				lines := strings.Split(strings.TrimSpace(out), "\n")
				t.Logf("%s's queue now (first 12 lines of %d):\n%s", r, len(lines), strings.Join(lines[:min(12, len(lines))], "\n"))
			}
		}
		s.compose("down", "-v", "--remove-orphans")
	})
	if out, err := s.compose("up", "-d"); err != nil {
		t.Fatalf("compose up: %v\n%s", err, out)
	}
	eventually(t, "the load balancer", 90*time.Second, func() bool { return s.smtpUp() })
	return s
}

func (s *stack) compose(args ...string) (string, error) {
	cmd := exec.Command(s.cmd[0], append(append(append(s.cmd[1:], "-p", s.project), s.flags...), args...)...)
	cmd.Dir = "../.."
	cmd.Env = s.env
	out, err := cmd.CombinedOutput()
	return string(out), err
}

// container is the ID of a service's container (Compose v1 and v2 name
// them differently).
func (s *stack) container(service string) string {
	s.t.Helper()
	out, err := s.compose("ps", "-q", service)
	id := strings.TrimSpace(out)
	if err != nil || id == "" {
		s.t.Fatalf("no container for %s: %v %s", service, err, out)
	}
	return id
}

func (s *stack) docker(args ...string) string {
	s.t.Helper()
	out, err := exec.Command("docker", args...).CombinedOutput()
	if err != nil {
		s.t.Fatalf("docker %s: %v\n%s", strings.Join(args, " "), err, out)
	}
	return string(out)
}

func (s *stack) smtpUp() bool {
	c, err := smtp.Dial(s.smtp)
	if err != nil {
		return false
	}
	defer c.Close()
	return c.Hello("probe.test") == nil
}

// send submits one message on a connection of its own; it returns the
// reply to the end of DATA (or the refusal on the way).
func (s *stack) send(user, pass, from, msgID string) error {
	c, err := smtp.DialStartTLS(s.smtp, &tls.Config{InsecureSkipVerify: true})
	if err != nil {
		return err
	}
	defer c.Close()
	c.CommandTimeout = 20 * time.Second
	if err := c.Auth(sasl.NewPlainClient("", user, pass)); err != nil {
		return err
	}
	if err := c.Mail(from, nil); err != nil {
		return err
	}
	if err := c.Rcpt("someone@example.org", nil); err != nil {
		return err
	}
	w, err := c.Data()
	if err != nil {
		return err
	}
	fmt.Fprintf(w, "From: %s\r\nTo: someone@example.org\r\nSubject: compose\r\nMessage-ID: <%s>\r\n\r\nthrough the stack\r\n", from, msgID)
	if err := w.Close(); err != nil {
		return err
	}
	return c.Quit()
}

// burst sends n messages from bob (class bulk) over sessions at once,
// each on a connection of its own, trying each message until it is
// acknowledged (the load balancer sends a retry to the other relay) or
// ctx ends; it returns the acknowledged Message-IDs, and counts them in
// progress as it goes (if not nil).
func (s *stack) burst(ctx context.Context, tag string, n, sessions int, progress ...*atomic.Int64) []string {
	var mu sync.Mutex
	var acked []string
	var wg sync.WaitGroup
	work := make(chan int)
	for range sessions {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for i := range work {
				id := fmt.Sprintf("%s-%d@compose.test", tag, i)
				for ctx.Err() == nil {
					if s.send("bob", "bob-secret", "bob@example.com", id) == nil {
						mu.Lock()
						acked = append(acked, id)
						mu.Unlock()
						for _, p := range progress {
							p.Add(1)
						}
						break
					}
					time.Sleep(100 * time.Millisecond)
				}
			}
		}()
	}
	for i := range n {
		work <- i
	}
	close(work)
	wg.Wait()
	return acked
}

// arrived counts the Message-IDs Mailpit holds.
func (s *stack) arrived() map[string]int {
	s.t.Helper()
	resp, err := http.Get(s.mailpit + "/api/v1/messages?limit=5000")
	if err != nil {
		s.t.Fatal(err)
	}
	defer resp.Body.Close()
	var list struct{ Messages []relaytest.MailpitMessage }
	if err := json.NewDecoder(resp.Body).Decode(&list); err != nil {
		s.t.Fatal(err)
	}
	ids := map[string]int{}
	for _, m := range list.Messages {
		ids[m.MessageID]++
	}
	return ids
}

// logsOf logs a service's last 150 lines, leaving out the load balancer's
// health checks.
func (s *stack) logsOf(service string) {
	var keep []string
	for _, line := range strings.Split(s.docker("logs", s.container(service)), "\n") {
		if !strings.Contains(line, `"connection ended"`) {
			keep = append(keep, line)
		}
	}
	s.t.Logf("%s's log:\n%s", service, strings.Join(keep[max(0, len(keep)-150):], "\n"))
}

// retryAll asks a relay to try every message in its queue now, with
// `smarthost queue retry --all`, and logs the queue as it was.
func (s *stack) retryAll(service string) {
	s.t.Helper()
	const config = "/etc/smarthost/smarthost.yaml"
	list, err := s.compose("exec", "-T", service, "/smarthost", "queue", "list", "--config", config)
	if err != nil {
		s.t.Fatalf("queue list on %s: %v\n%s", service, err, list)
	}
	s.t.Logf("%s's queue:\n%s", service, list)
	if out, err := s.compose("exec", "-T", service, "/smarthost", "queue", "retry", "--all", "--config", config); err != nil {
		s.t.Fatalf("queue retry --all on %s: %v\n%s", service, err, out)
	}
}

// allArrive waits until every acknowledged message is in Mailpit, and
// reports duplicates.
func (s *stack) allArrive(what string, acked []string) {
	s.t.Helper()
	var got map[string]int
	eventually(s.t, what, 120*time.Second, func() bool {
		got = s.arrived()
		for _, id := range acked {
			if got[id] == 0 {
				return false
			}
		}
		return true
	})
	dups := 0
	for _, id := range acked {
		dups += got[id] - 1
	}
	s.t.Logf("%s: %d acknowledged, all arrived, %d duplicates", what, len(acked), dups)
}

func TestComposeStack(t *testing.T) {
	s := startStack(t)

	t.Run("signed message through the load balancer", func(t *testing.T) {
		s.t = t
		// The README's swaks line, against the load balancer.
		out, code := swaks(t, "--server", s.smtp, "--tls", "--auth-user", "alice", "--auth-password", "alice-secret",
			"--from", "alice@example.com", "--to", "someone@example.org", "--h-Subject", "compose readme")
		if code != 0 {
			t.Fatalf("swaks: %d\n%s", code, out)
		}
		raw := s.signedArrives(t, "compose readme")
		// Our Received: names the client, not HAProxy: PROXY v2 works.
		if !strings.Contains(string(raw), "(using TLSv1.3 with cipher") || strings.Contains(string(raw), "[172.29.54.10]") {
			t.Errorf("Received: does not show the client through PROXY v2:\n%s", raw)
		}
	})

	t.Run("TLS sessions resume on either relay", func(t *testing.T) {
		s.t = t
		// The relays share their session ticket keys
		// (tls.session_ticket_key_file): a client that HAProxy sends to
		// the other relay resumes all the same.
		cache := tls.NewLRUClientSessionCache(4)
		seen := map[string]int{}
		for i := range 6 {
			conn, err := tls.Dial("tcp", s.smtps, &tls.Config{ServerName: "relay.example.com", InsecureSkipVerify: true, ClientSessionCache: cache})
			if err != nil {
				t.Fatal(err)
			}
			greeting, err := bufio.NewReader(conn).ReadString('\n')
			resumed := conn.ConnectionState().DidResume
			conn.Close()
			if err != nil {
				t.Fatalf("connection %d: %v", i, err)
			}
			f := strings.Fields(greeting)
			if len(f) < 2 {
				t.Fatalf("greeting %q", greeting)
			}
			seen[f[1]]++
			if i > 0 && !resumed {
				t.Errorf("connection %d, to %s: a full handshake, not a resumption", i, f[1])
			}
		}
		if len(seen) != 2 {
			t.Fatalf("HAProxy sent every connection to the same relay (%v): nothing shown", seen)
		}
	})

	t.Run("budget exact across both relays", func(t *testing.T) {
		s.t = t
		ok, limited := 0, 0
		for i := range 30 {
			err := s.send("erin", "erin-secret", "erin@example.com", fmt.Sprintf("budget-%d@compose.test", i))
			switch {
			case err == nil:
				ok++
			case errors.As(err, new(*smtp.SMTPError)) && err.(*smtp.SMTPError).Code == 450:
				limited++
			default:
				t.Fatalf("message %d: %v", i, err)
			}
		}
		if ok != 20 || limited != 10 {
			t.Fatalf("%d accepted and %d refused for the limit, want 20 and 10 (20/h in all, shared by both relays)", ok, limited)
		}
		for _, r := range []string{"relay1", "relay2"} {
			logs := s.docker("logs", s.container(r))
			if !strings.Contains(logs, `"msg":"queued"`) {
				t.Errorf("%s queued nothing: the load was not shared", r)
			}
		}
	})

	t.Run("Redis cut off one relay", func(t *testing.T) {
		s.t = t
		for _, mode := range []string{"tempfail", "allow"} {
			if mode == "allow" {
				s.env = append(s.env, "SMARTHOST_ON_BACKEND_ERROR=allow")
				if out, err := s.compose("up", "-d", "relay1", "relay2"); err != nil {
					t.Fatalf("relays with allow: %v\n%s", err, out)
				}
				eventually(t, "the relays back", 60*time.Second, func() bool { return s.smtpUp() && s.healthy("relay1") && s.healthy("relay2") })
			}
			net := s.project + "_redis"
			s.docker("network", "disconnect", net, s.container("relay1"))
			codes := map[string]int{}
			for i := range 10 {
				err := s.send("bob", "bob-secret", "bob@example.com", fmt.Sprintf("redis-%s-%d@compose.test", mode, i))
				var se *smtp.SMTPError
				switch {
				case err == nil:
					codes["250"]++
				case errors.As(err, &se) && se.Code/100 == 4:
					codes["4xx"]++
				default:
					t.Fatalf("%s, message %d: %v", mode, i, err)
				}
			}
			// Round robin: half go to relay1, half to relay2, which is
			// unaffected; relay1 refuses for the moment, or goes on.
			if mode == "tempfail" && (codes["250"] < 3 || codes["4xx"] < 3) || mode == "allow" && codes["250"] != 10 {
				t.Errorf("%s, Redis cut off relay1: %v", mode, codes)
			}
			s.docker("network", "connect", net, s.container("relay1"))
			eventually(t, "relay1 back on Redis", 30*time.Second, func() bool {
				for i := range 4 {
					if s.send("bob", "bob-secret", "bob@example.com", fmt.Sprintf("redis-back-%d-%d@compose.test", time.Now().UnixNano(), i)) != nil {
						return false
					}
				}
				return true
			})
		}
	})

	t.Run("relay killed during a burst", func(t *testing.T) {
		s.t = t
		ctx, cancel := context.WithTimeout(context.Background(), 3*time.Minute)
		defer cancel()
		const n = 300
		var progress atomic.Int64
		done := make(chan []string, 1)
		go func() { done <- s.burst(ctx, "kill", n, 6, &progress) }()
		eventually(t, "the burst under way", 60*time.Second, func() bool { return progress.Load() > 50 })
		relay1 := s.container("relay1")
		s.docker("kill", relay1)
		// The burst goes on against relay2 alone for a while.
		at := progress.Load()
		eventually(t, "the burst going on without relay1", 60*time.Second, func() bool { return progress.Load() > at+30 || progress.Load() == n })
		s.docker("start", relay1)
		acked := <-done
		if len(acked) != n {
			t.Fatalf("%d of %d acknowledged", len(acked), n)
		}
		s.allArrive("after kill and start", acked)
	})

	t.Run("rolling restart under load", func(t *testing.T) {
		s.t = t
		ctx, cancel := context.WithTimeout(context.Background(), 3*time.Minute)
		defer cancel()
		done := make(chan []string)
		go func() { done <- s.burst(ctx, "rolling", 150, 6) }()
		for _, r := range []string{"relay1", "relay2"} {
			if out, err := s.compose("restart", r); err != nil {
				t.Fatalf("restart %s: %v\n%s", r, err, out)
			}
			eventually(t, r+" healthy", 60*time.Second, func() bool { return s.healthy(r) })
		}
		acked := <-done
		if len(acked) != 150 {
			t.Fatalf("%d of 150 acknowledged", len(acked))
		}
		s.allArrive("after a rolling restart", acked)
	})

	t.Run("drain hands the queue to the other relay", func(t *testing.T) {
		s.t = t
		t.Cleanup(func() {
			if t.Failed() {
				s.logsOf("relay2")
				s.logsOf("mailpit")
			}
		})
		// Mailpit refuses every message for a while (451 to MAIL FROM, its
		// chaos triggers), so that relay1 still holds its share when it
		// leaves. Mailpit stays up: a stopped container's name times out in
		// Docker's DNS, which tests Docker rather than the handoff.
		s.chaos(t, `{"Sender": {"ErrorCode": 451, "Probability": 100}}`)
		before := s.docker("logs", s.container("relay1"))
		ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
		acked := s.burst(ctx, "drain", 40, 4)
		cancel()
		held := strings.Count(s.docker("logs", s.container("relay1")), `"msg":"queued"`) - strings.Count(before, `"msg":"queued"`)
		if held == 0 {
			t.Fatal("relay1 holds none of the messages: nothing to hand off")
		}
		out, err := s.compose("exec", "-T", "relay1", "/smarthost", "drain", "--config", "/etc/smarthost/smarthost.yaml", "--timeout", "60s")
		if err != nil || !strings.Contains(out, "drained") {
			t.Fatalf("drain: %v\n%s", err, out)
		}
		relay1 := s.container("relay1")
		eventually(t, "relay1 exited", 30*time.Second, func() bool {
			o, _ := exec.Command("docker", "inspect", "--format", "{{.State.Status}} {{.State.ExitCode}}", relay1).Output()
			return strings.TrimSpace(string(o)) == "exited 0"
		})
		s.chaos(t, `{}`)
		// Mailpit refused for up to a minute, so relay2's own messages may
		// be two or three retries in, and the next one minutes away
		// (deploy/compose/smarthost.yaml: 15s, 1m, 5m). An operator who has
		// fixed the upstream asks for a retry now; so does the test.
		s.retryAll("relay2")
		s.allArrive(fmt.Sprintf("after relay1 handed %d messages to relay2", held), acked)
		got := s.arrived()
		for _, id := range acked {
			if got[id] != 1 {
				t.Errorf("%s arrived %d times", id, got[id])
			}
		}
	})
}

// signedArrives waits for the message with this subject in Mailpit and
// checks its DKIM signatures against the record the dkim-key service
// logged; it returns the message.
func (s *stack) signedArrives(t *testing.T, subject string) []byte {
	t.Helper()
	var raw []byte
	mp := &relaytest.Mailpit{API: s.mailpit}
	eventually(t, "the message in Mailpit", 30*time.Second, func() bool {
		msgs, _ := mp.Messages()
		for _, m := range msgs {
			if m.Subject == subject {
				raw, _ = mp.Raw(m.ID)
			}
		}
		return raw != nil
	})
	logs, _ := s.compose("logs", "--no-color", "dkim-key")
	var zone []string
	for _, l := range strings.Split(logs, "\n") {
		if _, rec, ok := strings.Cut(l, "| "); ok && strings.Contains(rec, " IN TXT ") {
			zone = append(zone, rec)
		}
	}
	if len(zone) == 0 {
		t.Fatalf("no DNS record in the dkim-key logs:\n%s", logs)
	}
	dkimVerify(t, zoneToRecords(strings.Join(zone, "\n")), raw)
	return raw
}

// chaos sets Mailpit's chaos triggers (docker-compose.yml enables them);
// "{}" turns them off.
func (s *stack) chaos(t *testing.T, triggers string) {
	t.Helper()
	if err := (&relaytest.Mailpit{API: s.mailpit}).Chaos(triggers); err != nil {
		t.Fatal(err)
	}
}

func (s *stack) healthy(service string) bool {
	out, _ := exec.Command("docker", "inspect", "--format", "{{.State.Health.Status}}", s.container(service)).Output()
	return strings.TrimSpace(string(out)) == "healthy"
}
