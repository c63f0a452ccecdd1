package relaytest

import (
	"os"
	"testing"
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
