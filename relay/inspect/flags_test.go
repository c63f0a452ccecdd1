package inspect

import (
	"flag"
	"io"
	"reflect"
	"strings"
	"testing"
	"time"

	"github.com/smarthost/smarthost/relay/queue"
)

// The command line's filter flags give the filter the API's query gives,
// and refuse what the API refuses.
func TestFilterFlags(t *testing.T) {
	read := func(args ...string) (queue.Filter, error) {
		fs := flag.NewFlagSet("queue list", flag.ContinueOnError)
		fs.SetOutput(io.Discard)
		filter := FilterFlags(fs)
		if err := fs.Parse(args); err != nil {
			return queue.Filter{}, err
		}
		return filter(fs.Args())
	}
	id := "0123456789ABCDEF0123"
	got, err := read("--from", "<>", "--to", "@y.org", "--upstream", "mx", "--state", "held", "--older-than", "90m", id)
	want := queue.Filter{IDs: []string{id}, From: "<>", To: "@y.org", Upstream: "mx", State: queue.StateHeld, OlderThan: 90 * time.Minute}
	if err != nil || !reflect.DeepEqual(got, want) {
		t.Errorf("filter: %+v, %v; want %+v", got, err, want)
	}
	if got, err := read(); err != nil || !got.Empty() {
		t.Errorf("no flags: %+v, %v; want the empty filter", got, err)
	}
	for _, bad := range [][]string{{"--state", "frozen"}, {"--older-than", "-1h"}, {"not-an-id"}} {
		if _, err := read(bad...); err == nil {
			t.Errorf("%s: accepted", strings.Join(bad, " "))
		}
	}
}
