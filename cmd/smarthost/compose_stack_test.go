package main

// The compose stack's handle for TestComposeStack: starting it, sending
// through its load balancer, reading the relays' queues and logs, and
// counting what reached Mailpit once everything has settled.

import (
	"context"
	"crypto/tls"
	"encoding/json"
	"fmt"
	"net/http"
	"os"
	"os/exec"
	"regexp"
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
	// backPrefix is the back network's first three octets (subnet).
	backPrefix string
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
		"SMARTHOST_BACK_SUBNET="+s.subnet(54)+".0/24", "SMARTHOST_HAPROXY_IP="+s.haproxyIP(),
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
	relaytest.Eventually(t, "the load balancer", 90*time.Second, func() bool { return s.smtpUp() })
	return s
}

// subnet picks the stack's back network, 10.213.N.0/24 from N = from up,
// that no Docker network holds. It lies outside Docker's default address
// pools (172.17-31.0.0/16, 192.168.0.0/16), so a network Docker numbers
// itself, this stack's own redis and front networks included, never
// overlaps it however many other networks the machine has.
func (s *stack) subnet(from int) string {
	s.t.Helper()
	out, err := exec.Command("sh", "-c", "docker network inspect --format '{{range .IPAM.Config}}{{.Subnet}} {{end}}' $(docker network ls -q)").CombinedOutput()
	if err != nil {
		s.t.Fatalf("docker network inspect: %v\n%s", err, out)
	}
	for n := from; n < 255; n++ {
		prefix := fmt.Sprintf("10.213.%d", n)
		if !strings.Contains(string(out), prefix+".") {
			s.backPrefix = prefix
			return prefix
		}
	}
	s.t.Fatalf("no free subnet in 10.213.%d-254.0/24:\n%s", from, out)
	return ""
}

// haproxyIP is the load balancer's fixed address on the back network,
// which the relays trust to send the PROXY header.
func (s *stack) haproxyIP() string { return s.backPrefix + ".10" }

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
	_, err := s.sendID(user, pass, from, msgID)
	return err
}

// sendID is send, and the queue ID the relay that took the message gave
// it.
func (s *stack) sendID(user, pass, from, msgID string) (string, error) {
	c, err := smtp.DialStartTLS(s.smtp, &tls.Config{InsecureSkipVerify: true})
	if err != nil {
		return "", err
	}
	defer c.Close()
	c.CommandTimeout = 20 * time.Second
	if err := c.Auth(sasl.NewPlainClient("", user, pass)); err != nil {
		return "", err
	}
	if err := c.Mail(from, nil); err != nil {
		return "", err
	}
	if err := c.Rcpt("someone@example.org", nil); err != nil {
		return "", err
	}
	w, err := c.Data()
	if err != nil {
		return "", err
	}
	fmt.Fprintf(w, "From: %s\r\nTo: someone@example.org\r\nSubject: compose\r\nMessage-ID: <%s>\r\n\r\nthrough the stack\r\n", from, msgID)
	resp, err := w.CloseWithResponse()
	if err != nil {
		return "", err
	}
	id := regexp.MustCompile(`queued as ([0-9A-F]{20})`).FindStringSubmatch(resp.StatusText)
	if id == nil {
		return "", fmt.Errorf("no queue ID in %q", resp.StatusText)
	}
	c.Quit()
	return id[1], nil
}

// burst sends n messages from bob (class bulk) over sessions at once,
// each on a connection of its own, trying each message until it is
// acknowledged (the load balancer sends a retry to the other relay) or
// ctx ends; it returns the acknowledged messages (Message-ID to queue
// ID), and counts them in progress as it goes (if not nil).
func (s *stack) burst(ctx context.Context, tag string, n, sessions int, progress ...*atomic.Int64) map[string]string {
	var mu sync.Mutex
	acked := map[string]string{}
	var wg sync.WaitGroup
	work := make(chan int)
	for range sessions {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for i := range work {
				id := fmt.Sprintf("%s-%d@compose.test", tag, i)
				for ctx.Err() == nil {
					if qid, err := s.sendID("bob", "bob-secret", "bob@example.com", id); err == nil {
						mu.Lock()
						acked[id] = qid
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

// queueLen is the number of messages in a relay's queue (`smarthost queue
// list` in its container).
func (s *stack) queueLen(service string) int {
	s.t.Helper()
	out, err := s.compose("exec", "-T", service, "/smarthost", "queue", "list", "--config", "/etc/smarthost/smarthost.yaml")
	if err != nil {
		s.t.Fatalf("queue list on %s: %v\n%s", service, err, out)
	}
	return counts(s.t, out, `(\d+) message\(s\)`)[0]
}

// settled waits until the queues of relays are empty and Mailpit has
// held the same number of messages for relaytest.Quiet, then returns the
// Message-IDs it holds with how many times each arrived: a copy that
// arrives late is counted too.
func (s *stack) settled(what string, relays ...string) map[string]int {
	s.t.Helper()
	var got map[string]int
	last, since := -1, time.Now()
	relaytest.Eventually(s.t, what+": the queues empty and Mailpit quiet", 180*time.Second, func() bool {
		for _, r := range relays {
			if s.queueLen(r) != 0 {
				return false
			}
		}
		got = s.arrived()
		n := 0
		for _, k := range got {
			n += k
		}
		if n != last {
			last, since = n, time.Now()
		}
		return time.Since(since) >= relaytest.Quiet
	})
	return got
}

// allArrive waits until everything has settled, fails the test unless
// every acknowledged message arrived, and returns the duplicates among
// them, which it logs.
func (s *stack) allArrive(what string, acked map[string]string, relays ...string) int {
	s.t.Helper()
	got := s.settled(what, relays...)
	dups := 0
	for id := range acked {
		if got[id] == 0 {
			s.t.Errorf("%s: %s was acknowledged and never arrived", what, id)
		}
		dups += max(got[id]-1, 0)
	}
	s.t.Logf("%s: %d acknowledged, all arrived, %d duplicates", what, len(acked), dups)
	return dups
}

// signedArrives waits for the message with this subject in Mailpit and
// checks its DKIM signatures against the record the dkim-key service
// logged; it returns the message.
func (s *stack) signedArrives(t *testing.T, subject string) []byte {
	t.Helper()
	var raw []byte
	mp := &relaytest.Mailpit{API: s.mailpit}
	relaytest.Eventually(t, "the message in Mailpit", 30*time.Second, func() bool {
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
