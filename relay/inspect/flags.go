package inspect

import (
	"flag"
	"net/url"

	"github.com/smarthost/smarthost/relay/queue"
)

// FilterFlags adds to fs the flags of `smarthost queue` that pick queued
// messages (--from, --to, --upstream, --state, --older-than) and returns
// what reads them, with the IDs given, into a filter: through ParseFilter,
// so that the command line and the API take the same filters and refuse
// the same mistakes.
func FilterFlags(fs *flag.FlagSet) func(ids []string) (queue.Filter, error) {
	words := map[string]*string{ // by their names in the API's query
		"from":     fs.String("from", "", "the sender: an address, @domain, or a pattern with * (<> for bounces)"),
		"to":       fs.String("to", "", "a recipient: an address, @domain, or a pattern with *"),
		"upstream": fs.String("upstream", "", "a pending recipient was last tried at this upstream"),
		"state":    fs.String("state", "", "deferred, held or active (awaiting its first attempt, or being delivered)"),
	}
	olderThan := fs.Duration("older-than", 0, "arrived at least this long ago (1h, 30m)")
	return func(ids []string) (queue.Filter, error) {
		v := url.Values{"id": ids}
		for k, s := range words {
			if *s != "" {
				v.Set(k, *s)
			}
		}
		if *olderThan != 0 {
			v.Set("older_than", olderThan.String())
		}
		return ParseFilter(v)
	}
}
