package policy

import "testing"

// A Sender of "*@domain" keeps each address's local part (Postfix's
// masquerading); a plain address replaces every address.
func TestRewriteSenderFor(t *testing.T) {
	masq := &Rewrite{Sender: "*@example.com", Match: Match{SenderDomains: []string{"host.corp.internal"}}}
	fixed := &Rewrite{Sender: "noreply@example.com"}
	for _, c := range []struct {
		rw         *Rewrite
		addr, want string
		covers     bool
	}{
		{masq, "cron@host.corp.internal", "cron@example.com", true},
		{masq, "Cron@HOST.corp.internal", "Cron@example.com", true},
		{masq, "app1@example.com", "app1@example.com", false},   // another address the user owns: left alone
		{masq, "x@other.corp.internal", "x@example.com", false}, // not a domain of the rule
		{fixed, "cron@host.corp.internal", "noreply@example.com", true},
		{fixed, "anyone@anywhere.example", "noreply@example.com", true},
	} {
		if got := c.rw.SenderFor(c.addr); got != c.want {
			t.Errorf("%s: SenderFor(%s) = %s, want %s", c.rw.Sender, c.addr, got, c.want)
		}
		if got := c.rw.Covers(c.addr); got != c.covers {
			t.Errorf("%s: Covers(%s) = %v, want %v", c.rw.Sender, c.addr, got, c.covers)
		}
	}
	all := &Rewrite{Sender: "*@example.com"} // no sender domains: every address
	if !all.Covers("a@b.example") || all.SenderFor("a@b.example") != "a@example.com" {
		t.Error("masquerading without sender domains should cover every address")
	}
}
