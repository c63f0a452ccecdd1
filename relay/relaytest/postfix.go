package relaytest

import (
	"bytes"
	"context"
	"crypto/tls"
	"errors"
	"fmt"
	"net"
	"net/smtp"
	"net/textproto"
	"os"
	"os/exec"
	"os/user"
	"path/filepath"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"
)

// Postfix is a private instance of Debian's Postfix for a test: its own
// configuration, queue, maildir and log in a folder of its own, nothing
// under /etc touched, started with `postfix -c` and stopped at the end of
// the test. Postfix's master runs as root, so it needs root; without it
// (or without the postfix package) the test is skipped, and under CI
// fails.
type Postfix struct {
	Dir  string // conf/, queue/, data/, mail/ (virtual mailboxes), maillog
	Addr string // its smtpd's address, if it listens
	t    testing.TB
}

// PostfixOptions shape an instance. Main holds main.cf lines added to a
// base that logs every SMTP command of loopback clients (debug_peer_list)
// to Dir/maillog.
type PostfixOptions struct {
	Listen bool     // run an smtpd on a free loopback port
	Main   []string // main.cf lines
	// SASLUsers become Cyrus sasldb2 users of the smtpd (PLAIN and LOGIN
	// unless SASLMechs says otherwise), in realm "upstream.test".
	SASLUsers map[string]string
	SASLMechs string
	// TLS gives the smtpd a self-signed certificate (Dir/conf/cert.pem)
	// and the smtp client's trust settings (smtpd_tls_chain_files).
	TLS bool
	// Mailboxes are domains delivered to Dir/mail/box/ (a maildir).
	Mailboxes []string
}

// StartPostfix makes and starts an instance.
func StartPostfix(t testing.TB, o PostfixOptions) *Postfix {
	t.Helper()
	Need(t, "/usr/sbin/postfix")
	if os.Geteuid() != 0 {
		skipOrFail(t, "a private Postfix instance needs root")
	}
	pu, err := user.Lookup("postfix")
	if err != nil {
		skipOrFail(t, "no postfix user: "+err.Error())
	}
	// Postfix's own processes run as user postfix and must reach the
	// folder: not under t.TempDir(), whose folders are private.
	dir, err := os.MkdirTemp("", "postfix-")
	if err != nil {
		t.Fatal(err)
	}
	p := &Postfix{Dir: dir, t: t}
	for _, sub := range []string{"conf/sasl", "queue", "data", "mail"} {
		os.MkdirAll(filepath.Join(dir, sub), 0o755)
	}
	os.Chmod(dir, 0o755)

	p.writeMasterCF(o)
	write(t, filepath.Join(dir, "conf", "main.cf"), strings.Join(p.mainCF(o, pu), "\n")+"\n")
	run(t, "chown", "-R", "postfix", dir+"/data", dir+"/mail", dir+"/conf/sasl")

	run(t, "/usr/sbin/postfix", "-c", dir+"/conf", "start")
	t.Cleanup(p.stop)
	if o.Listen {
		waitListening(t, "postfix", p.Addr, p.Log)
		p.warmUp(o.TLS)
	}
	return p
}

// writeMasterCF writes conf/master.cf: Debian's services, none chrooted
// (the chroot would lack this folder), and the smtpd on our port only.
func (p *Postfix) writeMasterCF(o PostfixOptions) {
	t := p.t
	master, err := os.ReadFile("/etc/postfix/master.cf")
	if err != nil {
		t.Fatal(err)
	}
	var mcf bytes.Buffer
	for _, line := range strings.Split(string(master), "\n") {
		f := strings.Fields(line)
		if len(f) >= 8 && !strings.HasPrefix(line, "#") && !strings.HasPrefix(line, " ") {
			if f[1] == "inet" {
				continue
			}
			f[4] = "n"
			line = strings.Join(f, " ")
		}
		mcf.WriteString(line + "\n")
	}
	if o.Listen {
		p.Addr = freeAddr(t)
		fmt.Fprintf(&mcf, "%s inet n - n - - smtpd\n", p.Addr)
	}
	write(t, filepath.Join(p.Dir, "conf", "master.cf"), mcf.String())
}

// mainCF returns the lines of main.cf, and makes the certificate and the
// SASL users they name.
func (p *Postfix) mainCF(o PostfixOptions, pu *user.User) []string {
	t, dir := p.t, p.Dir
	main := []string{
		"compatibility_level = 3.6",
		"queue_directory = " + dir + "/queue",
		"data_directory = " + dir + "/data",
		"mail_owner = postfix",
		"maillog_file = " + dir + "/maillog",
		"maillog_file_prefixes = " + dir,
		"inet_interfaces = 127.0.0.1",
		"inet_protocols = ipv4",
		"mydestination =",
		"mynetworks =",
		"local_transport = error:local delivery is disabled",
		"debug_peer_list = 127.0.0.1",
		"smtpd_relay_restrictions = permit_sasl_authenticated, permit_mynetworks, reject_unauth_destination",
	}
	if o.TLS {
		run(t, "openssl", "req", "-x509", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:P-256", "-nodes", "-days", "2",
			"-subj", "/CN=127.0.0.1", "-addext", "subjectAltName=IP:127.0.0.1",
			"-keyout", dir+"/conf/key.pem", "-out", dir+"/conf/cert.pem")
		main = append(main, "smtpd_tls_chain_files = "+dir+"/conf/key.pem, "+dir+"/conf/cert.pem")
	}
	if len(o.SASLUsers) > 0 {
		p.saslUsers(o)
		main = append(main, "smtpd_sasl_auth_enable = yes", "smtpd_sasl_type = cyrus", "smtpd_sasl_path = smtpd",
			"smtpd_sasl_local_domain = upstream.test")
	}
	if len(o.Mailboxes) > 0 {
		main = append(main, "virtual_mailbox_domains = "+strings.Join(o.Mailboxes, ", "),
			"virtual_mailbox_base = "+dir+"/mail", "virtual_mailbox_maps = static:box/",
			"virtual_uid_maps = static:"+pu.Uid, "virtual_gid_maps = static:"+pu.Gid)
	}
	return append(main, o.Main...)
}

// saslUsers makes the smtpd's Cyrus SASL configuration and its users.
func (p *Postfix) saslUsers(o PostfixOptions) {
	t, dir := p.t, p.Dir
	Need(t, "/usr/sbin/saslpasswd2")
	mechs := o.SASLMechs
	if mechs == "" {
		mechs = "PLAIN LOGIN"
	}
	// Debian's Postfix reads $config_directory/sasl/smtpd.conf.
	write(t, filepath.Join(dir, "conf", "sasl", "smtpd.conf"), fmt.Sprintf(
		"pwcheck_method: auxprop\nauxprop_plugin: sasldb\nsasldb_path: %s/conf/sasl/sasldb2\nmech_list: %s\n", dir, mechs))
	for u, pw := range o.SASLUsers {
		cmd := exec.Command("/usr/sbin/saslpasswd2", "-p", "-c", "-f", dir+"/conf/sasl/sasldb2", "-u", "upstream.test", u)
		cmd.Stdin = strings.NewReader(pw)
		if out, err := cmd.CombinedOutput(); err != nil {
			t.Fatalf("saslpasswd2: %v\n%s", err, out)
		}
	}
}

// stop stops the instance at the end of the test, and removes its folder
// unless the test failed.
func (p *Postfix) stop() {
	dir := p.Dir
	ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
	defer cancel()
	if exec.CommandContext(ctx, "/usr/sbin/postfix", "-c", dir+"/conf", "stop").Run() != nil {
		// A master that will not stop is killed, with its children.
		if b, err := os.ReadFile(dir + "/queue/pid/master.pid"); err == nil {
			if pid, err := strconv.Atoi(strings.TrimSpace(string(b))); err == nil {
				syscall.Kill(-pid, syscall.SIGKILL)
				syscall.Kill(pid, syscall.SIGKILL)
			}
		}
	}
	if p.t.Failed() {
		p.t.Logf("postfix log (%s):\n%s", dir, p.Log())
		return // kept for a look
	}
	os.RemoveAll(dir)
}

// waitListening waits until addr takes connections, for 20 s at most;
// the test fails with the server's log if it does not.
func waitListening(t testing.TB, what, addr string, log func() string) {
	t.Helper()
	listening := Within(20*time.Second, func() bool {
		c, err := net.Dial("tcp", addr)
		if err == nil {
			c.Close()
		}
		return err == nil
	})
	if !listening {
		t.Fatalf("%s did not listen on %s:\n%s", what, addr, log())
	}
}

// warmUp holds a first session with the smtpd (greeting, EHLO, STARTTLS
// if it has TLS): the master accepts connections before it has started
// an smtpd, and the first STARTTLS also starts tlsmgr. On a loaded
// machine that took longer than a relay's command timeout, so the test's
// first delivery was deferred; later sessions reuse both processes.
func (p *Postfix) warmUp(withTLS bool) {
	p.t.Helper()
	conn, err := net.DialTimeout("tcp", p.Addr, 10*time.Second)
	if err == nil {
		defer conn.Close()
		conn.SetDeadline(time.Now().Add(60 * time.Second))
		var c *smtp.Client
		if c, err = smtp.NewClient(conn, "127.0.0.1"); err == nil {
			err = c.Hello("warmup.test")
			if err == nil && withTLS {
				err = c.StartTLS(&tls.Config{InsecureSkipVerify: true})
			}
			if err == nil {
				err = c.Quit()
			}
		}
	}
	// A refusal is an answer (an instance that wants a client certificate
	// refuses this one); only silence is a failure.
	var refused *textproto.Error
	if err != nil && !errors.As(err, &refused) {
		p.t.Fatalf("postfix on %s did not answer a first session: %v\n%s", p.Addr, err, p.Log())
	}
}

// Log is the instance's maillog so far.
func (p *Postfix) Log() string {
	b, _ := os.ReadFile(filepath.Join(p.Dir, "maillog"))
	return string(b)
}

// Sendmail submits msg with Postfix's own sendmail(1), from and to as the
// envelope.
func (p *Postfix) Sendmail(from string, to []string, msg string) error {
	cmd := exec.Command("/usr/sbin/sendmail", append([]string{"-C", p.Dir + "/conf", "-f", from}, to...)...)
	cmd.Stdin = strings.NewReader(msg)
	if out, err := cmd.CombinedOutput(); err != nil {
		return fmt.Errorf("sendmail: %v: %s", err, out)
	}
	return nil
}

// Mailbox returns the messages delivered to Dir/mail/box/ so far.
func (p *Postfix) Mailbox() [][]byte {
	var out [][]byte
	files, _ := filepath.Glob(filepath.Join(p.Dir, "mail", "box", "new", "*"))
	for _, f := range files {
		if b, err := os.ReadFile(f); err == nil {
			out = append(out, b)
		}
	}
	return out
}

// Need skips the test (fails it under CI) when path does not exist.
func Need(t testing.TB, path string) {
	t.Helper()
	if _, err := os.Stat(path); err != nil {
		skipOrFail(t, path+" is not installed; scripts/test.sh installs it")
	}
}

func skipOrFail(t testing.TB, why string) {
	t.Helper()
	if os.Getenv("CI") == "true" {
		t.Fatal(why + " (CI=true)")
	}
	t.Skip(why)
}

func write(t testing.TB, path, text string) {
	t.Helper()
	if err := os.WriteFile(path, []byte(text), 0o644); err != nil {
		t.Fatal(err)
	}
}

func run(t testing.TB, name string, args ...string) {
	t.Helper()
	if out, err := exec.Command(name, args...).CombinedOutput(); err != nil {
		t.Fatalf("%s %s: %v\n%s", name, strings.Join(args, " "), err, out)
	}
}

// freeAddr is a loopback address with a port nobody listens on now.
func freeAddr(t testing.TB) string {
	t.Helper()
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer l.Close()
	return l.Addr().String()
}
