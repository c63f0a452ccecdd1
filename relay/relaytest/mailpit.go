package relaytest

import (
	"encoding/json"
	"fmt"
	"io"
	"net"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
	"time"
)

// Mailpit is a running Mailpit (github.com/axllent/mailpit), the SMTP sink
// with a web UI and an HTTP API that many teams use as their upstream in
// development. scripts/test.sh builds it from the Go module proxy and names
// the binary in SMARTHOST_TEST_MAILPIT.
type Mailpit struct {
	SMTP string // its SMTP address (plain, no AUTH)
	API  string // http://host:port
}

// StartMailpit starts one for the test, with its database in a temporary
// folder.
func StartMailpit(t testing.TB) *Mailpit {
	t.Helper()
	bin := Service(t, "SMARTHOST_TEST_MAILPIT")
	m := &Mailpit{SMTP: freeAddr(t)}
	web := freeAddr(t)
	m.API = "http://" + web
	cmd := exec.Command(bin, "--smtp", m.SMTP, "--listen", web, "--database", filepath.Join(t.TempDir(), "mailpit.db"),
		"--smtp-disable-rdns", "--disable-version-check", "--enable-chaos")
	startLogged(t, "mailpit", cmd)
	Eventually(t, "mailpit to start", 20*time.Second, func() bool {
		c, err := net.Dial("tcp", m.SMTP)
		if err != nil {
			return false
		}
		c.Close()
		r, err := http.Get(m.API + "/api/v1/info")
		if err != nil {
			return false
		}
		r.Body.Close()
		return true
	})
	return m
}

// MailpitMessage is what the API's message list says of one message.
type MailpitMessage struct {
	ID        string
	MessageID string
	Subject   string
	From      struct{ Address string }
	To        []struct{ Address string }
}

// Messages lists what Mailpit holds, newest first.
func (m *Mailpit) Messages() ([]MailpitMessage, error) {
	var list struct{ Messages []MailpitMessage }
	if err := m.get("/api/v1/messages", &list); err != nil {
		return nil, err
	}
	return list.Messages, nil
}

// Raw is one message as Mailpit received it.
func (m *Mailpit) Raw(id string) ([]byte, error) {
	resp, err := http.Get(m.API + "/api/v1/message/" + id + "/raw")
	if err != nil {
		return nil, err
	}
	defer resp.Body.Close()
	if resp.StatusCode != http.StatusOK {
		return nil, fmt.Errorf("mailpit raw %s: %s", id, resp.Status)
	}
	return io.ReadAll(resp.Body)
}

func (m *Mailpit) get(path string, v any) error {
	resp, err := http.Get(m.API + path)
	if err != nil {
		return err
	}
	defer resp.Body.Close()
	if resp.StatusCode != http.StatusOK {
		return fmt.Errorf("mailpit %s: %s", path, resp.Status)
	}
	return json.NewDecoder(resp.Body).Decode(v)
}

// Chaos sets Mailpit's chaos triggers, a JSON object such as
// {"Sender": {"ErrorCode": 451, "Probability": 100}} (a 451 to every MAIL
// FROM); "{}" turns them all off. Mailpit must run with --enable-chaos.
func (m *Mailpit) Chaos(triggers string) error {
	req, err := http.NewRequest(http.MethodPut, m.API+"/api/v1/chaos", strings.NewReader(triggers))
	if err != nil {
		return err
	}
	req.Header.Set("Content-Type", "application/json")
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		return err
	}
	defer resp.Body.Close()
	if resp.StatusCode != http.StatusOK {
		body, _ := io.ReadAll(resp.Body)
		return fmt.Errorf("mailpit chaos %s: %s %s", triggers, resp.Status, body)
	}
	return nil
}

// startLogged starts a server for the test with its output in a file,
// kills it at the end, and shows the output if the test failed. It
// returns the output file's path.
func startLogged(t testing.TB, name string, cmd *exec.Cmd) string {
	t.Helper()
	log, err := os.Create(filepath.Join(t.TempDir(), name+".log"))
	if err != nil {
		t.Fatal(err)
	}
	cmd.Stdout, cmd.Stderr = log, log
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		cmd.Process.Kill()
		cmd.Wait()
		log.Close()
		if t.Failed() {
			b, _ := os.ReadFile(log.Name())
			t.Logf("%s log:\n%s", name, b)
		}
	})
	return log.Name()
}
