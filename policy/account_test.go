package policy

import (
	"errors"
	"fmt"
	"slices"
	"testing"
)

func TestAccountErrorIsBadCredentials(t *testing.T) {
	err := fmt.Errorf("bind as CN=grace: %w", &AccountError{Reason: "locked", Detail: "account locked out (data 775)"})
	if !errors.Is(err, ErrBadCredentials) || RefusalReason(err) != "locked" {
		t.Fatalf("%v: reason %q", err, RefusalReason(err))
	}
	if RefusalReason(ErrBadCredentials) != "" || RefusalReason(nil) != "" {
		t.Fatal("a plain refusal has no reason")
	}
}

// Several rules in one value, for single-valued directory attributes.
func TestRecipientRulesInOneValue(t *testing.T) {
	r := ParseRecipientRules([]string{"allow:*@example.org allow: partner.example;deny:ceo@example.org", "deny:x@example.org", "junk", "allow:"})
	if r == nil || !slices.Equal(r.Allow, []string{"*@example.org", "partner.example"}) || !slices.Equal(r.Deny, []string{"ceo@example.org", "x@example.org"}) {
		t.Fatalf("%+v", r)
	}
}
