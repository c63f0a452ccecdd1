package headers

import (
	"regexp"
	"strings"
	"testing"
)

const block = "Received: from web-03.corp.internal (web-03.corp.internal [10.1.2.3])\r\n" +
	"\tby mx.corp.internal; Mon, 30 Nov 2026 10:00:00 +0000\r\n" +
	"Received: from outside.example by gw.example.com; Mon, 30 Nov 2026 10:00:00 +0000\r\n" +
	"X-Originating-IP: [10.1.2.3]\r\n" +
	"X-Mailer: InternalApp 1.2 (build host web-03.corp.internal)\r\n" +
	"From: App One <app1@web-03.corp.internal>\r\n" +
	"Reply-To: app1@web-03.corp.internal, help@example.com\r\n" +
	"Subject: hello\r\n" +
	"\r\n"

func TestApply(t *testing.T) {
	r := &Rules{
		Remove: []Rule{
			{Name: "x-originating-ip"},
			{Name: "Received", Matching: regexp.MustCompile(`\.corp\.internal`)},
		},
		Replace: []Rule{{Name: "X-Mailer", Matching: regexp.MustCompile(`^(\S+ [0-9.]+).*`), With: "$1"}},
	}
	out, changed := r.Apply([]byte(block))
	want := "Received: from outside.example by gw.example.com; Mon, 30 Nov 2026 10:00:00 +0000\r\n" +
		"X-Mailer: InternalApp 1.2\r\n" +
		"From: App One <app1@web-03.corp.internal>\r\n" +
		"Reply-To: app1@web-03.corp.internal, help@example.com\r\n" +
		"Subject: hello\r\n" +
		"\r\n"
	if !changed || string(out) != want {
		t.Fatalf("changed=%v\n%q\nwant\n%q", changed, out, want)
	}
}

func TestApplyKeepsBytesWhenNothingMatches(t *testing.T) {
	r := &Rules{Remove: []Rule{{Name: "X-Secret"}}, Replace: []Rule{{Name: "Subject", Matching: regexp.MustCompile("nomatch"), With: "x"}}}
	out, changed := r.Apply([]byte(block))
	if changed || string(out) != block {
		t.Fatalf("changed=%v %q", changed, out)
	}
	if out, changed := (*Rules)(nil).Apply([]byte(block)); changed || string(out) != block {
		t.Fatal("nil rules changed the block")
	}
}

func TestReplaceWithoutMatching(t *testing.T) {
	r := &Rules{Replace: []Rule{{Name: "subject", With: "[redacted]"}}}
	out, _ := r.Apply([]byte(block))
	if !strings.Contains(string(out), "\r\nSubject: [redacted]\r\n\r\n") {
		t.Fatalf("%q", out)
	}
}

func TestRewriteAddresses(t *testing.T) {
	old := "app1@web-03.corp.internal"
	out, changed := RewriteAddresses([]byte(block), []string{"From", "Sender", "Reply-To"},
		func(a string) bool { return strings.EqualFold(a, old) }, func(string) string { return "noreply@example.com" })
	s := string(out)
	if !changed || strings.Contains(s, "corp.internal>") || strings.Contains(s, "Reply-To: app1") {
		t.Fatalf("%q", s)
	}
	for _, want := range []string{
		"\r\nFrom: \"App One\" <noreply@example.com>\r\n",
		"\r\nReply-To: <noreply@example.com>, <help@example.com>\r\n",
		"\r\nX-Mailer: InternalApp 1.2 (build host web-03.corp.internal)\r\n", // not an address field
	} {
		if !strings.Contains(s, want) {
			t.Errorf("missing %q in\n%s", want, s)
		}
	}
	if _, changed := RewriteAddresses([]byte(block), []string{"From"}, func(string) bool { return false }, func(string) string { return "x@example.com" }); changed {
		t.Error("changed with nothing to replace")
	}
}

func TestFoldedFieldIsMatchedUnfolded(t *testing.T) {
	b := "X-Trace: first part\r\n second.corp.internal part\r\nSubject: s\r\n\r\n"
	r := &Rules{Remove: []Rule{{Name: "X-Trace", Matching: regexp.MustCompile(`part second\.corp`)}}}
	out, _ := r.Apply([]byte(b))
	if string(out) != "Subject: s\r\n\r\n" {
		t.Fatalf("%q", out)
	}
}
