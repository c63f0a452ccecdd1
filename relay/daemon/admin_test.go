package daemon

import (
	"context"
	"encoding/json"
	"io"
	"net/http"
	"testing"
	"time"

	"github.com/smarthost/smarthost/relay/inspect"
	"github.com/smarthost/smarthost/relay/queue"
	"github.com/smarthost/smarthost/relay/relaytest"
)

// On a loopback admin listener no token is asked for, so a web page in
// the administrator's browser could post to it. What changes the queue
// refuses what such a page can send (a form, without the header, marked
// cross-site, or under a rebound name) with 403, and the message stays;
// smarthost's own client still acts, and the status page still opens from
// a link on another site. pprof takes no POST.
func TestAdminWritesRefuseCrossSite(t *testing.T) {
	r := runDaemon(t, relayConfig(t, t.TempDir(), "127.0.0.1:1", map[string]string{"alice": "alice-pw"}))
	send(t, r.d.Addrs().SMTP[0].String(), []string{"bob@dest.test"}, "From: alice@example.com\r\nSubject: keep\r\n\r\nx\r\n")
	base := "http://" + r.d.Addrs().Admin.String()
	queued := func() []queue.Queued {
		var out []queue.Queued
		if err := json.Unmarshal(r.get(t, "/v1/queue"), &out); err != nil {
			t.Fatal(err)
		}
		return out
	}
	relaytest.Eventually(t, "the message queued", 10*time.Second, func() bool { return len(queued()) == 1 })
	id := queued()[0].ID
	del := "/v1/queue/delete?" + inspect.FilterValues(queue.Filter{IDs: []string{id}}).Encode()
	for _, c := range []struct {
		name, path string
		header     map[string]string
	}{
		{"a form from another site", del, map[string]string{"Content-Type": "application/x-www-form-urlencoded", "Origin": "http://evil.example"}},
		{"a form with no Origin", del, map[string]string{"Content-Type": "application/x-www-form-urlencoded"}},
		{"marked cross-site", del, map[string]string{RequestHeader: "1", "Sec-Fetch-Site": "cross-site"}},
		{"from another origin", del, map[string]string{RequestHeader: "1", "Origin": "http://evil.example"}},
		{"a rebound name", del, map[string]string{RequestHeader: "1", "Host": "evil.example:9587"}},
		{"a drain from another site", "/v1/drain", map[string]string{"Content-Type": "text/plain", "Origin": "http://evil.example"}},
	} {
		req, _ := http.NewRequest(http.MethodPost, base+c.path, nil)
		for k, v := range c.header {
			req.Header.Set(k, v)
		}
		req.Host = req.Header.Get("Host")
		resp, err := http.DefaultClient.Do(req)
		if err != nil {
			t.Fatal(err)
		}
		body, _ := io.ReadAll(resp.Body)
		resp.Body.Close()
		if resp.StatusCode != http.StatusForbidden {
			t.Errorf("%s: %s %s, want 403", c.name, resp.Status, body)
		}
	}
	if q := queued(); len(q) != 1 || q[0].ID != id {
		t.Fatalf("after the refused requests the queue holds %+v, want %s", q, id)
	}

	// pprof answers GET alone (and is off here: 404).
	if resp, err := http.Post(base+"/debug/pprof/heap?gc=1", "text/plain", nil); err != nil || resp.StatusCode != http.StatusMethodNotAllowed {
		t.Errorf("POST to pprof: %v %v, want 405", resp, err)
	} else {
		resp.Body.Close()
	}
	if httpStatus(r.d.Addrs().Admin, "/debug/pprof/") != http.StatusNotFound {
		t.Error("GET pprof without metrics.pprof: want 404")
	}

	req, _ := http.NewRequest(http.MethodGet, base+"/status", nil)
	req.Header.Set("Sec-Fetch-Site", "cross-site")
	if resp, err := http.DefaultClient.Do(req); err != nil || resp.StatusCode != http.StatusOK {
		t.Errorf("the status page from a link elsewhere: %v %v", resp, err)
	} else {
		resp.Body.Close()
	}

	ctl := &QueueControl{client: &AdminClient{base: base}}
	ids, err := ctl.Manage(context.Background(), queue.OpDelete, queue.Filter{IDs: []string{id}}, "the test")
	if err != nil || len(ids) != 1 || ids[0] != id {
		t.Fatalf("smarthost queue delete: %v %v", ids, err)
	}
	if q := queued(); len(q) != 0 {
		t.Errorf("after the delete the queue holds %+v", q)
	}
}
