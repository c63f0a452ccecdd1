package relaytest

import (
	"context"
	"fmt"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"
)

// Dovecot is a private instance of Debian's Dovecot submission service
// (dovecot-submissiond), the kind of upstream that logs clients in with
// OAuth2: its oauth2 passdb checks every XOAUTH2 or OAUTHBEARER token at
// an authorization server's introspection endpoint, and it relays what it
// accepts to RelayTo. STARTTLS with a self-signed certificate (CertFile);
// AUTH only after it. It needs root (Dovecot's master drops privileges).
type Dovecot struct {
	Addr     string
	CertFile string
	Dir      string
	conf     string
}

// DovecotOptions shape an instance.
type DovecotOptions struct {
	Introspect string // the introspection URL (RFC 7662)
	RelayTo    string // host:port of the SMTP server it relays to
}

// StartDovecot makes and starts an instance.
func StartDovecot(t testing.TB, o DovecotOptions) *Dovecot {
	t.Helper()
	Need(t, "/usr/lib/dovecot/submission")
	if os.Geteuid() != 0 {
		skipOrFail(t, "a private Dovecot instance needs root")
	}
	// Dovecot's unprivileged processes must reach the folder: not under
	// t.TempDir(), whose folders are private.
	dir, err := os.MkdirTemp("", "dovecot-")
	if err != nil {
		t.Fatal(err)
	}
	os.Chmod(dir, 0o755)
	for _, sub := range []string{"run", "state", "home"} {
		os.MkdirAll(filepath.Join(dir, sub), 0o755)
	}
	os.Chmod(filepath.Join(dir, "home"), 0o777)
	d := &Dovecot{Addr: freeAddr(t), CertFile: dir + "/cert.pem", Dir: dir, conf: dir + "/dovecot.conf"}
	run(t, "openssl", "req", "-x509", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:P-256", "-nodes", "-days", "2",
		"-subj", "/CN=127.0.0.1", "-addext", "subjectAltName=IP:127.0.0.1", "-keyout", dir+"/key.pem", "-out", d.CertFile)
	d.writeConf(t, o)
	d.start(t)
	t.Cleanup(func() {
		ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
		defer cancel()
		exec.CommandContext(ctx, "/usr/sbin/dovecot", "-c", d.conf, "stop").Run()
		if t.Failed() {
			t.Logf("dovecot log (%s):\n%s", dir, d.Log())
			return
		}
		os.RemoveAll(dir)
	})
	waitListening(t, "dovecot", d.Addr, d.Log)
	return d
}

// writeConf writes dovecot.conf, a submission service that takes OAuth2
// tokens (checked at o.Introspect) and relays to o.RelayTo.
func (d *Dovecot) writeConf(t testing.TB, o DovecotOptions) {
	rh, rp, _ := net.SplitHostPort(o.RelayTo)
	_, port, _ := net.SplitHostPort(d.Addr)
	write(t, d.Dir+"/oauth2.conf.ext", fmt.Sprintf(`introspection_url = %s
introspection_mode = post
username_attribute = sub
active_attribute = active
active_value = true
`, o.Introspect))
	write(t, d.conf, fmt.Sprintf(`base_dir = %[1]s/run
state_dir = %[1]s/state
log_path = %[1]s/log
protocols = submission
listen = 127.0.0.1
ssl = required
ssl_cert = <%[1]s/cert.pem
ssl_key = <%[1]s/key.pem
auth_mechanisms = xoauth2 oauthbearer
hostname = dovecot.test
mail_location = maildir:%[1]s/home/Maildir
submission_relay_host = %[2]s
submission_relay_port = %[3]s
submission_relay_trusted = no
default_internal_user = dovecot
default_login_user = dovenull
auth_verbose = yes
service submission-login {
  inet_listener submission {
    port = %[4]s
  }
}
passdb {
  driver = oauth2
  mechanisms = xoauth2 oauthbearer
  args = %[1]s/oauth2.conf.ext
}
userdb {
  driver = static
  args = uid=nobody gid=nogroup home=%[1]s/home
}
`, d.Dir, rh, rp, port))
}

// Log is the instance's log so far.
func (d *Dovecot) Log() string {
	b, _ := os.ReadFile(filepath.Join(d.Dir, "log"))
	return string(b)
}

// Logins counts the successful logins by mechanism (XOAUTH2, OAUTHBEARER)
// in the log.
func (d *Dovecot) Logins(mech string) int {
	return strings.Count(d.Log(), "method="+mech+",")
}

// Refusals counts the tokens the oauth2 passdb refused.
func (d *Dovecot) Refusals() int {
	return strings.Count(d.Log(), "oauth2 failed")
}

// DropSessions ends every client session, as a server that restarts or
// times clients out does: the submission processes are killed, and the
// clients' next command finds the connection closed.
func (d *Dovecot) DropSessions(t testing.TB) {
	t.Helper()
	b, err := os.ReadFile(filepath.Join(d.Dir, "run", "master.pid"))
	if err != nil {
		t.Fatal(err)
	}
	master := strings.TrimSpace(string(b))
	procs, _ := filepath.Glob("/proc/[0-9]*/stat")
	killed := 0
	for _, p := range procs {
		st, err := os.ReadFile(p)
		if err != nil {
			continue
		}
		// pid (comm) state ppid ...
		s := string(st)
		open, close := strings.IndexByte(s, '('), strings.LastIndexByte(s, ')')
		if open < 0 || close < open {
			continue
		}
		f := strings.Fields(s[close+1:])
		if s[open+1:close] == "submission" && len(f) > 1 && f[1] == master {
			if pid, err := strconv.Atoi(strings.TrimSpace(s[:open])); err == nil && syscall.Kill(pid, syscall.SIGKILL) == nil {
				killed++
			}
		}
	}
	if killed == 0 {
		t.Fatalf("dovecot: no session to drop")
	}
}

// start runs the master, which goes into the background. Its output goes
// to a file: a pipe would stay open in the daemon, and Wait with it.
func (d *Dovecot) start(t testing.TB) {
	t.Helper()
	out, err := os.Create(filepath.Join(d.Dir, "start.out"))
	if err != nil {
		t.Fatal(err)
	}
	defer out.Close()
	cmd := exec.Command("/usr/sbin/dovecot", "-c", d.conf)
	cmd.Stdout, cmd.Stderr = out, out
	if err := cmd.Run(); err != nil {
		b, _ := os.ReadFile(out.Name())
		t.Fatalf("dovecot: %v\n%s", err, b)
	}
}
