package queue

import (
	"sort"
	"time"
)

// lanes hold the messages waiting for an upstream's budget, one lane per
// budget (an upstream's sending identity), out of the retry schedule: such
// a message is not due at a time but when its lane lets it go. A lane lets
// go, when its budget allows, the message whose turn it is (lineup), and
// more at once while they go through, up to its width; one that has to wait
// again goes back to its place. The scheduler's lock guards them.
type lanes struct {
	byKey map[string]*lane
	byID  map[string]*entry // waiting
	out   map[string]*entry // let go, being tried
	dirty bool              // changed since the waiting list was written
}

type lane struct {
	key, upstream, reason string
	readyAt               time.Time // not before this
	width                 int       // most tried at once
	room                  int       // tried at once now: 1 after a wait, growing while they go through
	out                   int
	line                  lineup
}

// entry is one message in a lane.
type entry struct {
	m        *Message
	lane     string
	upstream string
	user     string
	prio     Priority
	since    time.Time // when it started to wait
	tag      float64   // its finish time in the lineup, when it was let go
	vt       float64   // and the lineup's finish time before it
}

func newLanes() *lanes {
	return &lanes{byKey: map[string]*lane{}, byID: map[string]*entry{}, out: map[string]*entry{}}
}

func (ls *lanes) get(key string) *lane {
	l := ls.byKey[key]
	if l == nil {
		l = &lane{key: key, width: 1, room: 1}
		ls.byKey[key] = l
	}
	return l
}

// userOf is who a message counts against for fairness within a priority:
// the user who sent it, else its sender.
func userOf(m *Message) string {
	if m.User != "" {
		return m.User
	}
	return m.From
}

// park puts m in w's lane: back at its place if it had been let go from
// there, else at the end. The lane waits w.After before it lets the next
// one go.
func (ls *lanes) park(m *Message, w *WaitError, now time.Time) {
	e, front := ls.out[m.ID], true
	if e != nil {
		delete(ls.out, m.ID)
		ls.byKey[e.lane].out--
		if e.lane != w.Lane {
			ls.drop(ls.byKey[e.lane])
			e.lane, front = w.Lane, false
		}
	} else {
		e, front = &entry{m: m, lane: w.Lane, user: userOf(m), since: now}, false
	}
	e.prio, e.upstream = w.Priority, w.Upstream
	l := ls.get(w.Lane)
	l.upstream, l.reason, l.width = w.Upstream, w.Reason, max(w.Width, 1)
	l.readyAt, l.room = now.Add(w.After), 1
	l.line.push(e, front)
	ls.byID[m.ID] = e
	ls.dirty = true
}

// join puts a message that is due at the end of lane key, whose messages
// wait: it takes its turn after them.
func (ls *lanes) join(m *Message, key string, p Priority, now time.Time) {
	l := ls.byKey[key]
	e := &entry{m: m, lane: key, upstream: l.upstream, user: userOf(m), prio: p, since: now}
	l.line.push(e, false)
	ls.byID[m.ID] = e
	ls.dirty = true
}

// waitingFor says what message id waits for, as queue list says it; ""
// when it is in no lane.
func (ls *lanes) waitingFor(id string) string {
	e := ls.byID[id]
	if e == nil || ls.byKey[e.lane] == nil {
		return ""
	}
	l := ls.byKey[e.lane]
	return Waiting{Upstream: l.upstream, Reason: l.reason}.State()
}

// waiting reports whether lane key has messages waiting.
func (ls *lanes) waiting(key string) bool {
	l := ls.byKey[key]
	return l != nil && l.line.n > 0
}

func (ls *lanes) has(id string) bool { return ls.byID[id] != nil }

// release lets go the messages whose turn has come, marking them out, and
// returns them and when the next lane will be ready. live says whether a
// message is still in the spool (one deleted meanwhile is dropped).
func (ls *lanes) release(now time.Time, live func(*Message) bool) ([]*Message, time.Time) {
	var out []*Message
	var next time.Time
	for _, l := range ls.byKey {
		for l.line.n > 0 && l.out < l.room && !l.readyAt.After(now) {
			e := l.line.pop()
			delete(ls.byID, e.m.ID)
			ls.dirty = true
			if !live(e.m) {
				continue
			}
			ls.out[e.m.ID] = e
			l.out++
			out = append(out, e.m)
		}
		if l.line.n > 0 && l.readyAt.After(now) && (next.IsZero() || l.readyAt.Before(next)) {
			next = l.readyAt
		}
		ls.drop(l)
	}
	return out, next
}

// back takes a message that was let go and has been tried (not waited
// again) out of its lane, and returns its entry (nil if it did not come
// from a lane). Its lane may let more go at once now.
func (ls *lanes) back(id string) *entry {
	e := ls.out[id]
	if e == nil {
		return nil
	}
	delete(ls.out, id)
	l := ls.byKey[e.lane]
	l.out--
	l.room = min(l.room+1, l.width)
	ls.drop(l)
	return e
}

// drop forgets a lane with nothing in it.
func (ls *lanes) drop(l *lane) {
	if l.line.n == 0 && l.out == 0 {
		delete(ls.byKey, l.key)
	}
}

// flush empties every lane and returns what waited.
func (ls *lanes) flush() []*entry {
	var out []*entry
	for _, e := range ls.byID {
		out = append(out, e)
	}
	for id, e := range ls.out {
		e.lane = ""
		delete(ls.out, id)
	}
	ls.byKey, ls.byID, ls.dirty = map[string]*lane{}, map[string]*entry{}, true
	return out
}

// LaneStatus is one lane as it stands.
type LaneStatus struct {
	Upstream string   `json:"upstream"`
	Reason   string   `json:"reason"`
	IDs      []string `json:"ids"`
}

// status lists the lanes and the messages waiting in each.
func (ls *lanes) status() []LaneStatus {
	var out []LaneStatus
	for _, l := range ls.byKey {
		s := LaneStatus{Upstream: l.upstream, Reason: l.reason, IDs: []string{}}
		for id, e := range ls.byID {
			if e.lane == l.key {
				s.IDs = append(s.IDs, id)
			}
		}
		sort.Strings(s.IDs)
		out = append(out, s)
	}
	sort.Slice(out, func(i, j int) bool { return out[i].Upstream < out[j].Upstream })
	return out
}

// lineup orders one lane's waiting messages: weighted fair queuing between
// the priorities, and within a priority the users in turn, each user's
// messages in order. Each priority with messages waiting has a virtual
// finish time for its first one (pass): the time the lane last released
// at, or its own last, plus 1/weight; the lowest goes next, and the next
// of that priority finishes 1/weight later. So while several wait, high
// gets 16 of every 21 turns, normal 4 and bulk 1; a priority that was idle
// starts from the lane's present, with no credit saved up.
type lineup struct {
	cls  [3]userRing // by Priority
	pass [3]float64
	vt   float64 // the finish time of the last released
	n    int
}

type userRing struct {
	queues map[string][]*entry
	ring   []string // users with messages waiting, whose turn is first first
}

// push adds e at the end of its user's messages, or, for one that was let
// go and must wait again, back at the front with the turn it had.
func (l *lineup) push(e *entry, front bool) {
	p := e.prio
	c := &l.cls[p]
	if c.queues == nil {
		c.queues = map[string][]*entry{}
	}
	switch {
	case front:
		l.pass[p], l.vt = e.tag, min(l.vt, e.vt)
	case len(c.ring) == 0:
		l.pass[p] = max(l.pass[p], l.vt) + 1/p.weight()
	}
	q := c.queues[e.user]
	switch {
	case len(q) == 0 && front:
		c.ring = append([]string{e.user}, c.ring...)
	case len(q) == 0:
		c.ring = append(c.ring, e.user)
	}
	if front {
		c.queues[e.user] = append([]*entry{e}, q...)
	} else {
		c.queues[e.user] = append(q, e)
	}
	l.n++
}

// pop takes the message whose turn it is; the lineup must not be empty.
func (l *lineup) pop() *entry {
	p := PriorityHigh
	for _, q := range []Priority{PriorityNormal, PriorityBulk} {
		if len(l.cls[p].ring) == 0 || len(l.cls[q].ring) > 0 && l.pass[q] < l.pass[p] {
			p = q
		}
	}
	c := &l.cls[p]
	user := c.ring[0]
	q := c.queues[user]
	e := q[0]
	c.ring = c.ring[1:]
	if len(q) > 1 {
		c.queues[user] = q[1:]
		c.ring = append(c.ring, user)
	} else {
		delete(c.queues, user)
	}
	e.tag, e.vt, l.vt = l.pass[p], l.vt, l.pass[p]
	if len(c.ring) > 0 {
		l.pass[p] += 1 / p.weight()
	}
	l.n--
	return e
}
