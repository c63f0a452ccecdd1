package smtpd

import (
	"flag"
	"fmt"
	"os"
	"strings"
	"testing"
)

var update = flag.Bool("update", false, "rewrite docs/replies.md's table from Table")

// docTable renders Table as docs/replies.md shows it.
func docTable() string {
	var b strings.Builder
	b.WriteString("| situation | reply |\n|---|---|\n")
	for _, r := range Table {
		line := strings.TrimSuffix(formatReply(r.With(r.Args...)), "\r\n")
		fmt.Fprintf(&b, "| %s | `%s` |\n", strings.ReplaceAll(r.When, "|", "\\|"), line)
	}
	return b.String()
}

const (
	tableBegin = "<!-- replies: generated from relay/smtpd/replies.go by go test ./relay/smtpd -run TestReplyTableDoc -update -->\n"
	tableEnd   = "<!-- replies: end -->\n"
)

// docs/replies.md's table is the table in replies.go, row for row.
func TestReplyTableDoc(t *testing.T) {
	const path = "../../docs/replies.md"
	b, err := os.ReadFile(path)
	if err != nil {
		t.Fatal(err)
	}
	doc := string(b)
	i, j := strings.Index(doc, tableBegin), strings.Index(doc, tableEnd)
	if i < 0 || j < i {
		t.Fatalf("docs/replies.md has no generated reply table between %q and %q", tableBegin, tableEnd)
	}
	want := docTable()
	if got := doc[i+len(tableBegin) : j]; got != want {
		if *update {
			if err := os.WriteFile(path, []byte(doc[:i+len(tableBegin)]+want+doc[j:]), 0o644); err != nil {
				t.Fatal(err)
			}
			return
		}
		t.Errorf("docs/replies.md's reply table is out of date; run go test ./relay/smtpd -run TestReplyTableDoc -update")
	}
}

// Every row is fit for the wire: a code, an enhanced code whose class is
// the code's (RFC 3463) unless the row carries none, one line of text, and
// a refusal exactly when the code is 4xx or 5xx.
func TestReplyRows(t *testing.T) {
	seen := map[*Reply]bool{}
	for _, r := range Table {
		if seen[r] {
			t.Errorf("%v twice in Table", r)
		}
		seen[r] = true
		if r.Code < 200 || r.Code > 599 || r.When == "" || r.Text == "" || strings.ContainsAny(r.Text, "\r\n") {
			t.Errorf("malformed row %q", r.Error())
		}
		if r.Enhanced != (EnhancedCode{}) && r.Enhanced[0] != r.Code/100 {
			t.Errorf("%q: enhanced code class differs from the reply's", r.Error())
		}
		if r.Refusal != (r.Code >= 400) {
			t.Errorf("%q: Refusal is %v", r.Error(), r.Refusal)
		}
		if n := strings.Count(r.Text, "%"); n != len(r.Args) {
			t.Errorf("%q takes %d arguments, has %d examples", r.Text, n, len(r.Args))
		}
	}
}
