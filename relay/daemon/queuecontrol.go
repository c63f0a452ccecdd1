package daemon

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net/http"
	"os/user"
	"strings"

	"github.com/smarthost/smarthost/configs"
	"github.com/smarthost/smarthost/relay/history"
	"github.com/smarthost/smarthost/relay/inspect"
	"github.com/smarthost/smarthost/relay/queue"
)

// QueueControl lists and acts on a relay's queue for `smarthost queue
// hold|release|delete|bounce`: the running relay's, through its admin
// API, so that its scheduler and history see it; or, when no relay runs
// on the spool, the spool itself, with its lock and the history's taken,
// so that the history records the act all the same.
type QueueControl struct {
	client *AdminClient // the running relay's; nil: offline
	q      *queue.Queue // offline: the spool, opened
	h      *history.History
}

// OpenQueueControl finds out whether a relay runs on f's spool (its lock
// is taken) and opens the way to act on it.
func OpenQueueControl(f *configs.File, log *slog.Logger) (*QueueControl, error) {
	a, probs := assemble(f, false, log, nil)
	if len(probs) > 0 {
		return nil, probs
	}
	h, err := offlineHistory(a)
	if err != nil {
		return nil, err
	}
	c := &QueueControl{h: h}
	qc := a.queue
	if h != nil {
		qc.Observer = h
	}
	// No deliverer: the spool is only looked at and changed, never
	// delivered from (Run is not called).
	q, err := queue.Open(qc, nil, log)
	if errors.Is(err, queue.ErrInUse) {
		c.Close()
		return onlineControl(f)
	}
	if err != nil {
		c.Close()
		return nil, err
	}
	c.q = q
	return c, nil
}

// offlineHistory opens the history for a command that works on the
// spool of a stopped relay, so that what it does is recorded as the relay
// would record it: nil when the history is off, or another process (a
// running relay) writes it.
func offlineHistory(a *Assembly) (*history.History, error) {
	if a.history == nil {
		return nil, nil
	}
	h, err := history.Open(*a.history)
	if errors.Is(err, history.ErrInUse) {
		return nil, nil
	}
	return h, err
}

// onlineControl is the control of the relay running on the spool.
func onlineControl(f *configs.File) (*QueueControl, error) {
	client, err := NewAdminClient(f)
	if err != nil {
		return nil, fmt.Errorf("a relay runs on %s, and it cannot be asked: %w", f.Queue.Dir, err)
	}
	return &QueueControl{client: client}, nil
}

// Close releases what OpenQueueControl took.
func (c *QueueControl) Close() {
	if c.q != nil {
		c.q.Close()
	}
	if c.h != nil {
		c.h.Close()
	}
}

// List returns the queued messages filter picks, oldest first.
func (c *QueueControl) List(ctx context.Context, filter queue.Filter) ([]queue.Queued, error) {
	if c.client == nil {
		return c.q.List(filter), nil
	}
	var out []queue.Queued
	err := c.client.getJSON(ctx, "/v1/queue?"+inspect.FilterValues(filter).Encode(), &out)
	return out, err
}

// Manage does op (queue.OpHold, OpRelease, OpDelete, OpBounce) to every
// message filter picks, for by (who asked, for the history), and returns
// their IDs.
func (c *QueueControl) Manage(ctx context.Context, op string, filter queue.Filter, by string) ([]string, error) {
	if c.client == nil {
		return c.q.Manage(op, filter, by)
	}
	v := inspect.FilterValues(filter)
	v.Set("by", by)
	resp, err := c.client.do(ctx, http.MethodPost, "/v1/queue/"+op+"?"+v.Encode())
	if err != nil {
		return nil, err
	}
	defer resp.Body.Close()
	body, _ := io.ReadAll(resp.Body)
	if resp.StatusCode != http.StatusOK {
		return nil, fmt.Errorf("the relay answered %s: %s", resp.Status, strings.TrimSpace(string(body)))
	}
	var out struct {
		IDs   []string `json:"ids"`
		Error string   `json:"error"`
	}
	if err := json.Unmarshal(body, &out); err != nil {
		return nil, fmt.Errorf("the relay's answer: %w", err)
	}
	if out.Error != "" {
		return out.IDs, errors.New(out.Error)
	}
	return out.IDs, nil
}

// Pick is filter narrowed to the IDs of the messages it picks now, and how
// many there are: asked first whether to act on them, an administrator
// then gets what was said yes to, and not what has arrived since.
func (c *QueueControl) Pick(ctx context.Context, filter queue.Filter) (queue.Filter, int, error) {
	ms, err := c.List(ctx, filter)
	if err != nil {
		return filter, 0, err
	}
	filter.IDs = make([]string, len(ms))
	for i, m := range ms {
		filter.IDs[i] = m.ID
	}
	return filter, len(ms), nil
}

// AskedBy is who asks, for the history: command, and the system user who
// runs it when that is known.
func AskedBy(command string) string {
	if u, err := user.Current(); err == nil {
		return command + " (" + u.Username + ")"
	}
	return command
}
