package queue

import (
	"bytes"
	"encoding/json"
	"strings"
	"testing"
	"time"
)

// What `smarthost queue list` and `queue show` print of a stopped relay's
// spool: the filter's pick with each message's state, as a table with the
// count, as one JSON object per line, and one message with its content.
func TestSpoolListingAndShow(t *testing.T) {
	dir := t.TempDir()
	q, err := Open(Config{Dir: dir}, nil, quiet())
	if err != nil {
		t.Fatal(err)
	}
	a := enqueue(t, q, "a@x.org", []string{"b@y.org", "c@z.org"}, "X-P: 1\r\n", "Subject: s\r\n\r\nx\r\n")
	enqueue(t, q, "other@x.org", []string{"d@y.org"}, "", "Subject: t\r\n\r\nx\r\n")
	q.Close()
	sp, err := OpenSpool(dir)
	if err != nil {
		t.Fatal(err)
	}
	now := time.Now().Add(time.Minute)
	ms, err := sp.Select(Filter{To: "@z.org"}, now)
	if err != nil || len(ms) != 1 || ms[0].ID != a || ms[0].State != StateActive {
		t.Fatalf("Select --to @z.org: %v %+v, want %s alone, active", err, ms, a)
	}
	if all, _ := sp.Select(Filter{}, now); len(all) != 2 || all[0].ID != a {
		t.Fatalf("Select of every message: %+v, want 2, oldest first", all)
	}

	var table bytes.Buffer
	if err := WriteList(&table, ms, false, now); err != nil {
		t.Fatal(err)
	}
	lines := strings.Split(strings.TrimSuffix(table.String(), "\n"), "\n")
	if len(lines) != 3 || !strings.HasPrefix(lines[0], "ID ") || !strings.Contains(lines[0], "LAST REPLY") ||
		!strings.Contains(lines[1], a+"  active  1m0s") || !strings.Contains(lines[1], "<a@x.org>  b@y.org=pending,c@z.org=pending") ||
		lines[2] != "1 message(s)" {
		t.Errorf("the table:\n%s", table.String())
	}

	var js bytes.Buffer
	if err := WriteList(&js, ms, true, now); err != nil {
		t.Fatal(err)
	}
	var got map[string]any
	if err := json.Unmarshal(js.Bytes(), &got); err != nil || got["state"] != StateActive || got["from"] != "a@x.org" || strings.Count(js.String(), "\n") != 1 {
		t.Errorf("the JSON line %q: %v %v", js.String(), got, err)
	}

	var shown bytes.Buffer
	if err := sp.WriteShow(&shown, a); err != nil {
		t.Fatal(err)
	}
	want := "ID: " + a + "\nFrom: <a@x.org>\n"
	if s := shown.String(); !strings.HasPrefix(s, want) || !strings.Contains(s, "Recipient: <c@z.org> pending") ||
		!strings.HasSuffix(s, "\n\nX-P: 1\r\nSubject: s\r\n\r\nx\r\n") {
		t.Errorf("show:\n%s", s)
	}
	if err := sp.WriteShow(&shown, "0123456789ABCDEF0123"); err == nil {
		t.Error("show of a message not in the spool: no error")
	}
}
