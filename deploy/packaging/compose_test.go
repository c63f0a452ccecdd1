//go:build release

package packaging

import (
	"encoding/json"
	"fmt"
	"io"
	"net/http"
	"os"
	"os/exec"
	"strings"
	"testing"
	"time"

	"github.com/smarthost/smarthost/relay/relaytest"
)

// compose runs Compose (v2's `docker compose` where it is, else v1's
// docker-compose) on deploy/compose/single/ as project p.
type composeProject struct {
	t    *testing.T
	name string
	env  []string
}

func (c composeProject) run(args ...string) (string, error) {
	base := []string{"docker", "compose"}
	if exec.Command("docker", "compose", "version").Run() != nil {
		base = []string{"docker-compose"}
	}
	args = append(append(base[1:], "-p", c.name, "-f", "../../deploy/compose/single/docker-compose.yml"), args...)
	cmd := exec.Command(base[0], args...)
	cmd.Env = c.env
	out, err := cmd.CombinedOutput()
	return string(out), err
}

func (c composeProject) must(args ...string) string {
	c.t.Helper()
	out, err := c.run(args...)
	if err != nil {
		c.t.Fatalf("compose %s: %v\n%s", strings.Join(args, " "), err, out)
	}
	return out
}

// mailpitMessages lists the subjects Mailpit holds, with their IDs.
func mailpitMessages(web string) (map[string]string, error) {
	resp, err := http.Get(web + "/api/v1/messages")
	if err != nil {
		return nil, err
	}
	defer resp.Body.Close()
	var list struct {
		Messages []struct{ ID, Subject string } `json:"messages"`
	}
	if err := json.NewDecoder(resp.Body).Decode(&list); err != nil {
		return nil, err
	}
	m := map[string]string{}
	for _, msg := range list.Messages {
		m[msg.Subject] = msg.ID
	}
	return m, nil
}

// deploy/compose/single: one relay, a users file, Mailpit. A message
// arrives signed; with Mailpit stopped a message waits in the queue,
// survives a restart of the relay, and arrives once Mailpit is back.
func TestComposeSingle(t *testing.T) {
	v := env(t, "SMARTHOST_VERSION")
	// The image as users get it: the release's amd64 archive.
	docker(t, "load", "-i", artifact(t, "smarthost_"+v+"_linux_amd64.image.tar"))
	smtpAddr, web := freePort(t), freePort(t)
	c := composeProject{t: t, name: fmt.Sprintf("shipsingle%d", os.Getpid())}
	c.env = append(os.Environ(), "SMARTHOST_IMAGE=smarthost:"+v,
		"SMARTHOST_SUBMISSION_PORT="+smtpAddr, "SMARTHOST_SUBMISSIONS_PORT="+freePort(t), "MAILPIT_UI_PORT="+web)
	defer func() {
		if t.Failed() {
			out, _ := c.run("logs", "--no-color")
			t.Log(out)
		}
		c.run("down", "-v", "--timeout", "5")
	}()
	file, _ := os.ReadFile("../../deploy/compose/single/docker-compose.yml")
	if !strings.Contains(string(file), "${SMARTHOST_IMAGE:-smarthost:"+v+"}") {
		t.Errorf("deploy/compose/single runs another image than smarthost:%s by default", v)
	}
	c.must("up", "-d")
	mailpit := "http://" + web
	relaytest.EventuallyEvery(t, "the relay listening", 90*time.Second, 500*time.Millisecond, func() bool {
		return sendMail(smtpAddr, "demo", "demo-password", "demo@example.com", "someone@example.org", "Subject: first\r\n") == nil
	})
	var raw []byte
	relaytest.EventuallyEvery(t, "the message in Mailpit", 60*time.Second, 500*time.Millisecond, func() bool {
		m, err := mailpitMessages(mailpit)
		if err != nil || m["first"] == "" {
			return false
		}
		resp, err := http.Get(mailpit + "/api/v1/message/" + m["first"] + "/raw")
		if err != nil {
			return false
		}
		defer resp.Body.Close()
		raw, _ = io.ReadAll(resp.Body)
		return true
	})
	if !strings.Contains(string(raw), "DKIM-Signature:") || !strings.Contains(string(raw), "d=example.com") {
		t.Errorf("the message arrived unsigned:\n%s", raw)
	}

	c.must("stop", "mailpit")
	if err := sendMail(smtpAddr, "demo", "demo-password", "demo@example.com", "someone@example.org", "Subject: kept\r\n"); err != nil {
		t.Fatalf("submitting with Mailpit down: %v", err)
	}
	c.must("restart", "relay")
	queue := c.must("exec", "-T", "relay", "/smarthost", "queue", "list", "--config", "/etc/smarthost/smarthost.yaml")
	if !oneMessage.MatchString(queue) {
		t.Fatalf("after the restart the queue holds:\n%s", queue)
	}
	c.must("start", "mailpit")
	relaytest.EventuallyEvery(t, "the kept message in Mailpit", 120*time.Second, 500*time.Millisecond, func() bool {
		m, err := mailpitMessages(mailpit)
		return err == nil && m["kept"] != ""
	})
}
