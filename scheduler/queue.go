package scheduler

import (
	"fmt"
	"net/http"
	"slices"
	"time"
)

// Request is one inference request waiting for a slot.
type Request struct {
	// ID is unique in the cluster (the entry node's name and a sequence);
	// asking again with the same ID (after a reconnect or failover) is
	// idempotent.
	ID string
	// Entry is the node the client is connected to.
	Entry string
	Model string
	// VRAMMB is the free VRAM the request needs beyond the model's
	// configured figure (the larger of the two counts).
	VRAMMB   uint64
	Deadline time.Time
	// Hive and Worker (group/instance on Hive), when set, ask for that
	// worker only: the request waits for its slot; while the worker is
	// gone, failing, down or offline, any worker will do (see pin.go).
	Hive, Worker string
	// Progress asks for Waits reports while the request waits (a
	// streaming client that is sent keep-alive comments).
	Progress bool
	// The tenant (see fair.go and caps.go): Key names the API key (never
	// the key itself), Class is ClassInteractive or ClassBatch, Weight
	// its share among its class's keys (0 means 1); MaxConcurrent and
	// PerMinute cap its requests waiting or served at once and started
	// per minute, cluster-wide (0: no cap).
	Key           string
	Class         int
	Weight        float64
	MaxConcurrent int
	PerMinute     int
	// Arrived is when the client's request reached the entry node: a
	// request asked again after a failover keeps its age (aging, order).
	Arrived time.Time
	// Conversation names the conversation it continues: its turns go
	// back to the worker that served the last one (affinity.go).
	Conversation string
	// Avoid lists hives (Worker "") and workers (group/instance on Hive)
	// the request must not be granted: those that broke off its answer
	// (a migrated stream continues elsewhere) or that its entry node
	// could not reach.
	Avoid []Avoid
	// Elsewhere lists hives the request would rather not go to (the hive
	// of a worker that broke off its answer): a worker there is granted
	// at once only when none on another hive can take it; once waiting,
	// any worker will do.
	Elsewhere []string
}

// Avoid is one place a request must not go: a hive, or one worker on it.
type Avoid struct{ Hive, Worker string }

// avoids reports whether r must not go to w: w's hive is avoided, or w
// itself (workerOnly then says so).
func (r *Request) avoids(w *worker) (avoided, workerOnly bool) {
	for _, a := range r.Avoid {
		if a.Hive == w.Hive {
			if a.Worker == "" {
				return true, false
			}
			if a.Worker == w.Name {
				avoided, workerOnly = true, true
			}
		}
	}
	return avoided, workerOnly
}

type waiting struct {
	req      Request
	key      string
	pin      string // the worker id it waits for alone; "" for any worker
	enqueued uint64 // global FIFO order across alias queues
	done     bool   // granted, failed or cancelled; skipped when popped
	// Its place in a fair queue (fair.go).
	class   int
	tag     float64
	arrived time.Time
	line    *keyLine
	// pinUntil ends a wait for a conversation's worker (affinity.go).
	pinUntil time.Time
	// tagged: tag is its place in its model's fair queue, kept while it
	// waits for its conversation's worker and after.
	tagged bool
}

// Request asks for a lease. It returns a grant at once when an eligible worker
// has a free slot; nil and no error when the request waits (a later call
// returns its grant); or an error: unknown model, queue full.
func (s *Scheduler) Request(r Request, now time.Time) (*Grant, error) {
	_, asked := s.byReq[r.ID]
	if s.waiting[r.ID] != nil {
		asked = true
	}
	g, err := s.request(r, now)
	if err == nil && !asked {
		s.noteAccepted(r, now) // a refusal does not count against the key's rate
	}
	return g, err
}

func (s *Scheduler) request(r Request, now time.Time) (*Grant, error) {
	if id, ok := s.byReq[r.ID]; ok {
		// Asked again (the grant was lost with a session): same answer.
		l := s.leases[id]
		return &Grant{Request: r, Lease: *l}, nil
	}
	key := RequestKey(r.Model)
	if w := s.waiting[r.ID]; w != nil {
		w.req = r
		return nil, nil
	}
	if gerr := s.goneErr(key, r.Model, now); gerr != nil {
		return nil, gerr
	}
	if len(s.byKey[key]) == 0 && s.warm && !s.catalogHas(key) {
		return nil, &Error{Status: http.StatusNotFound, Type: "model_not_found",
			Msg: fmt.Sprintf("model %q is not served by this cluster (GET /v1/models lists what is)", r.Model)}
	}
	if cerr := s.checkCaps(r, now); cerr != nil {
		return nil, cerr
	}
	if pin := r.pin(); pin != "" && s.keepPin(pin, key, now) {
		return s.requestPinned(r, key, pin, now)
	}
	if r.Conversation != "" && r.pin() == "" {
		if g, err, ok := s.requestAffine(r, key, now); ok {
			return g, err
		}
	}
	q := s.queues[key]
	if q == nil || q.head(now, s.cfg.AgingAfter) == nil {
		if w := s.pickElsewhere(key, r, now); w != nil {
			g := s.grant(w, r, now)
			return &g, nil
		}
		if w := preferAway(r, func(r Request) *worker { return s.pickStandby(key, r, now) }); w != nil {
			g := s.grant(w, r, now)
			return &g, nil
		}
	}
	if s.warm && s.allDown(key, now) && !s.catalogHas(key) {
		return nil, s.downErr(r.Model, now)
	}
	if cerr := s.cannotStart(key, r.Model, now); cerr != nil {
		return nil, cerr
	}
	return nil, s.push(s.queues, key, r, key, "", now)
}

// push queues r at the end of queues[name] (its model's queue, or the
// queue of the worker it waits for alone), unless that queue is full.
func (s *Scheduler) push(queues map[string]*queue, name string, r Request, key, pin string, now time.Time) error {
	q := queues[name]
	if q == nil {
		q = &queue{}
		queues[name] = q
	}
	if q.n >= s.cfg.QueueLimit {
		return &Error{Status: http.StatusTooManyRequests, Type: "rate_limit_exceeded", RetryAfter: s.cfg.RetryAfter,
			Msg: fmt.Sprintf("model %q: %d requests already waiting; retry later", r.Model, q.n)}
	}
	s.seq++
	s.keyActive(r.Key, 1)
	wt := &waiting{req: r, key: key, pin: pin, enqueued: s.seq, class: classOf(r.Class), arrived: r.Arrived}
	if wt.arrived.IsZero() {
		wt.arrived = now
	}
	q.add(wt, r.Weight)
	s.waiting[r.ID] = wt
	if len(s.spares) > 0 {
		s.revokeFor(key) // spare.go
	}
	return nil
}

// Cancel withdraws a waiting request (its client went away). It reports
// whether the request was waiting.
func (s *Scheduler) Cancel(id string) bool {
	w := s.waiting[id]
	if w == nil {
		return false
	}
	s.unwait(w)
	return true
}

// CancelEntry withdraws every waiting request of an entry node whose session
// ended; the node asks again when it reconnects.
func (s *Scheduler) CancelEntry(entry string) int {
	n := 0
	for _, w := range s.waiting {
		if w.req.Entry == entry {
			s.unwait(w)
			n++
		}
	}
	return n
}

// Waiting counts the requests waiting for a lease.
func (s *Scheduler) Waiting() int { return len(s.waiting) }

func (s *Scheduler) unwait(w *waiting) {
	if w.done {
		return
	}
	w.done = true
	delete(s.waiting, w.req.ID)
	s.keyActive(w.req.Key, -1)
	queues, name := s.queues, w.key
	if w.pin != "" {
		queues, name = s.pinned, w.pin
	}
	q := queues[name]
	q.remove(w)
	// A model's queue stays when empty: its fair clock orders what comes
	// next, and a request waiting for its conversation's worker holds a
	// place in it. A worker's queue goes.
	if q.n == 0 && w.pin != "" {
		delete(queues, name)
	}
}

// served moves the fair queue's clock past w, which is being granted.
func (s *Scheduler) served(w *waiting) {
	queues, name := s.queues, w.key
	if w.pin != "" {
		queues, name = s.pinned, w.pin
	}
	if q := queues[name]; q != nil {
		q.served(w)
	}
	if w.pin != "" && w.tagged {
		if q := s.queues[w.key]; q != nil {
			q.served(w)
		}
	}
}

// before reports whether a goes before b when one worker can take either.
func before(a, b *waiting) bool {
	if a.class != b.class {
		return a.class < b.class
	}
	// Tags compare within one model's queue: its own requests, and those
	// that hold a place there while they wait for a worker (tagged).
	if a.key == b.key && (a.pin == "" || a.tagged) && (b.pin == "" || b.tagged) && a.tag != b.tag {
		return a.tag < b.tag
	}
	return a.enqueued < b.enqueued
}

func classOf(c int) int {
	if c == ClassBatch {
		return ClassBatch
	}
	return ClassInteractive
}

func (s *Scheduler) waitingKeys() []string {
	keys := make([]string, 0, len(s.queues))
	for k, q := range s.queues {
		// A queue with nothing in it is kept for its fair clock (a
		// request waiting for its conversation's worker holds a place
		// there), and skipped.
		if q.n > 0 {
			keys = append(keys, k)
		}
	}
	slices.Sort(keys)
	return keys
}
