package relaytest

import (
	"bytes"
	"fmt"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"
)

// Service returns the value of an environment variable that
// scripts/test-services.sh sets (SMARTHOST_TEST_LDAP_URL and the like). A
// test without it is skipped, except under CI (CI=true), where a missing
// service is a failure.
func Service(t testing.TB, name string) string {
	t.Helper()
	v := os.Getenv(name)
	if v == "" {
		if os.Getenv("CI") == "true" {
			t.Fatalf("%s is not set under CI: scripts/test.sh starts the test services", name)
		}
		t.Skipf("%s not set; run scripts/test.sh", name)
	}
	return v
}

// Freeze stops the test service whose pid file the environment variable
// pidfileVar names (SIGSTOP), so that it hangs as a dead server would. The
// returned function resumes it; it runs at the end of the test anyway, and
// a second call does nothing.
func Freeze(t testing.TB, pidfileVar string) (resume func()) {
	t.Helper()
	b, err := os.ReadFile(Service(t, pidfileVar))
	if err != nil {
		t.Fatal(err)
	}
	pid, err := strconv.Atoi(strings.TrimSpace(string(b)))
	if err != nil {
		t.Fatalf("%s: %v", pidfileVar, err)
	}
	if err := syscall.Kill(pid, syscall.SIGSTOP); err != nil {
		t.Fatal(err)
	}
	// kill returns before the signal has stopped every thread, which may
	// still answer a request meanwhile.
	Eventually(t, fmt.Sprintf("pid %d to stop", pid), 5*time.Second, func() bool { return stopped(pid) })
	var once sync.Once
	resume = func() { once.Do(func() { syscall.Kill(pid, syscall.SIGCONT) }) }
	t.Cleanup(resume)
	return resume
}

// stopped reports whether every thread of pid is stopped (state T).
func stopped(pid int) bool {
	tasks, _ := filepath.Glob(fmt.Sprintf("/proc/%d/task/*/stat", pid))
	for _, task := range tasks {
		b, err := os.ReadFile(task)
		i := bytes.LastIndexByte(b, ')')
		if err != nil || i < 0 || i+2 >= len(b) || b[i+2] != 'T' {
			return false
		}
	}
	return len(tasks) > 0
}
