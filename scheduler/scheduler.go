// Package scheduler decides which worker serves which request. It is pure
// logic: no I/O, no goroutines, no clock of its own (every call takes now),
// and not safe for concurrent use (the queen holds it under one mutex).
//
// It is pull-based: a request is granted only against a free slot of an
// eligible worker, and a returned slot pulls the next waiting request for
// that worker's model. Telemetry, up to a second old, decides who is eligible;
// slots and leases decide how many requests a worker gets, so no worker is
// ever handed more concurrent requests than it has slots.
package scheduler

import (
	"fmt"
	"net/http"
	"slices"
	"strconv"
	"strings"
	"time"
)

// Worker is one worker as the hive's telemetry describes it.
type Worker struct {
	Hive string
	// Name is group/instance on the hive.
	Name        string
	Model       string
	Slots       int
	VRAMUsedMB  uint64
	VRAMTotalMB uint64
	GPUUtilPct  float64
	// Healthy is false when the hive says the worker fails requests.
	Healthy bool
	// Down is set when the hive cannot reach the worker (its health
	// "down"), DownReason says why: it takes no request, and a request for
	// a model whose every worker is down fails at once, naming them.
	Down       bool
	DownReason string
}

// ID names the worker cluster-wide: hive/group/instance.
func (w *Worker) ID() string { return w.Hive + "/" + w.Name }

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
}

// Lease is one slot of one worker granted to one request.
type Lease struct {
	ID        string
	RequestID string
	Entry     string
	Hive      string
	Worker    string // group/instance on Hive
	Model     string
	Granted   time.Time
	// Confirmed is set once the hive lists the lease in its telemetry:
	// from then on the hive's word decides when it ends.
	Confirmed bool
	// Key is the request's API key name, "" when unknown (adopted).
	Key string
}

// Grant hands a lease to a request.
type Grant struct {
	Request Request
	Lease   Lease
}

// Failure ends a waiting request without a lease.
type Failure struct {
	Request Request
	Err     *Error
}

// HiveLease is a lease a hive reports serving.
type HiveLease struct {
	ID        string
	Worker    string
	Model     string
	Entry     string
	RequestID string
	Since     time.Time
}

// Error is a refusal with the HTTP status the entry node answers with.
type Error struct {
	Status int
	// Type is the OpenAI error type.
	Type       string
	Msg        string
	RetryAfter time.Duration
}

func (e *Error) Error() string { return e.Msg }

// Is lets errors.Is match refusals by status.
func (e *Error) Is(target error) bool {
	t, ok := target.(*Error)
	return ok && t.Status == e.Status
}

// Sentinels for errors.Is.
var (
	ErrUnknownModel = &Error{Status: http.StatusNotFound}
	ErrQueueFull    = &Error{Status: http.StatusTooManyRequests}
	ErrTimeout      = &Error{Status: http.StatusServiceUnavailable}
)

// Config tunes the scheduler; zero values take the defaults below.
type Config struct {
	// QueueLimit bounds each model's waiting requests (default 1024).
	QueueLimit int
	// StaleAfter: a worker whose hive has not reported for this long is
	// not given new requests (default 3 s).
	StaleAfter time.Duration
	// ForgetAfter drops a silent hive's workers and their leases
	// (default 30 s).
	ForgetAfter time.Duration
	// SaturatedPct: a worker this busy on the GPU while rbee holds no
	// lease on it is busy with work outside rbee (default 90).
	SaturatedPct float64
	// ModelVRAMMB is the free VRAM one request of a model needs, by model
	// name as requested or served (default: none needed).
	ModelVRAMMB map[string]uint64
	// LeaseStartTimeout reclaims a granted lease that no hive has listed
	// by then: its entry node vanished before it reached the hive
	// (default 10 s).
	LeaseStartTimeout time.Duration
	// LeasePrefix makes lease ids unique across queens.
	LeasePrefix string
	// RetryAfter is what a 429 tells the client (default 1 s).
	RetryAfter time.Duration
	// AgingAfter: a batch request that waited this long goes before
	// interactive ones (default DefaultAgingAfter).
	AgingAfter time.Duration
	// AffinityWait bounds how long a conversation's turn waits for the
	// worker that holds its prompt (default DefaultAffinityWait); a
	// negative one turns affinity off (the least-loaded worker serves
	// every turn, as before it).
	AffinityWait time.Duration
}

func (c Config) withDefaults() Config {
	if c.QueueLimit <= 0 {
		c.QueueLimit = 1024
	}
	if c.StaleAfter <= 0 {
		c.StaleAfter = 3 * time.Second
	}
	if c.ForgetAfter <= 0 {
		c.ForgetAfter = 30 * time.Second
	}
	if c.SaturatedPct <= 0 {
		c.SaturatedPct = DefaultSaturatedPct
	}
	if c.LeaseStartTimeout <= 0 {
		c.LeaseStartTimeout = 10 * time.Second
	}
	if c.RetryAfter <= 0 {
		c.RetryAfter = time.Second
	}
	if c.AgingAfter <= 0 {
		c.AgingAfter = DefaultAgingAfter
	}
	if c.AffinityWait == 0 {
		c.AffinityWait = DefaultAffinityWait
	}
	return c
}

// worker is a Worker as the scheduler tracks it. What every decision reads
// (seen, leases, health, then Worker's figures) comes first, so a scan over
// thousands of workers touches two cache lines of each.
type worker struct {
	seen   time.Time
	leases int
	// lastGrant orders ties: the worker granted longest ago goes first,
	// so equal workers take turns.
	lastGrant uint64
	health    health // from Healthy and Down, for the state rule
	// stopping: its hive drains it, or a start evicts it; it takes no
	// new request.
	stopping bool
	// grantedVRAM is what requests granted since its last report need.
	grantedVRAM uint64
	// lastEnd is when rbee's last lease on it ended: a report sampled
	// before that shows rbee's own work, not work outside rbee.
	lastEnd time.Time
	Worker
	id   string
	keys []string // ModelKeys(Model)
	pos  []int    // index in byKey[keys[i]], for O(1) removal
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

// Scheduler holds workers, waiting requests and leases.
type Scheduler struct {
	cfg     Config
	workers map[string]*worker            // by id
	byHive  map[string]map[string]*worker // hive -> name -> worker
	byKey   map[string][]*worker          // model key -> workers, a heap by indexLess (index.go)
	queues  map[string]*queue             // request key -> FIFO
	pinned  map[string]*queue             // worker id -> FIFO of requests for it alone
	waiting map[string]*waiting           // by request id
	leases  map[string]*Lease             // by id
	hiveLs  map[string]map[string]*Lease  // hive -> id -> lease
	byReq   map[string]string             // request id -> lease id
	hiveAt  map[string]time.Time          // last report per hive
	seq     uint64
	granted uint64
	// warm is false until the queen has heard from its hives: until then
	// an unknown model waits instead of failing with 404.
	warm bool
	// gone: models whose last hive departed, and why (see HiveGone).
	gone map[string]goneModel

	// The model lifecycle (models.go): each hive's catalog, GPUs and
	// workers rbee started; starts sent and not yet reported; recent
	// starts per model key; workers chosen for eviction (until when);
	// each model key's service time per lease.
	models   map[string]*hiveModels
	starts   map[string]*pendingStart
	startLog map[string][]time.Time
	evicting map[string]time.Time
	service  map[string]time.Duration

	// keyUse: each key's requests now and lately, for its caps (caps.go).
	keyUse map[string]*keyUse
	// convs: each conversation's last worker (affinity.go), and the
	// order they came in, to forget the oldest.
	convs     map[string]string
	convOrder []string
	// scanOnly makes pick scan every worker, as before the index: the
	// benchmark's baseline.
	scanOnly bool
}

// New returns an empty scheduler.
func New(cfg Config) *Scheduler {
	return &Scheduler{
		cfg:     cfg.withDefaults(),
		workers: make(map[string]*worker),
		byHive:  make(map[string]map[string]*worker),
		byKey:   make(map[string][]*worker),
		queues:  make(map[string]*queue),
		pinned:  make(map[string]*queue),
		waiting: make(map[string]*waiting),
		leases:  make(map[string]*Lease),
		hiveLs:  make(map[string]map[string]*Lease),
		byReq:   make(map[string]string),
		hiveAt:  make(map[string]time.Time),

		models:   make(map[string]*hiveModels),
		starts:   make(map[string]*pendingStart),
		startLog: make(map[string][]time.Time),
		evicting: make(map[string]time.Time),
		service:  make(map[string]time.Duration),
	}
}

// SetWarm tells the scheduler whether it knows the cluster's workers: a new
// queen waits a telemetry round before it answers "unknown model".
func (s *Scheduler) SetWarm(warm bool) { s.warm = warm }

// Granted counts the leases granted so far.
func (s *Scheduler) Granted() uint64 { return s.granted }

// UpdateHive replaces a hive's workers with what its telemetry says and takes
// the leases it lists as the truth: a lease it lists that this scheduler does
// not know (granted by a previous queen) is adopted; a confirmed lease it no
// longer lists has ended. It returns the grants that freed capacity allows.
func (s *Scheduler) UpdateHive(hive string, workers []Worker, leases []HiveLease, now time.Time) []Grant {
	s.hiveAt[hive] = now
	old := s.byHive[hive]
	// Every figure of the hive's workers may change at once: they leave
	// the index first and come back with their new figures, which keeps
	// the heaps valid (fixing many changed elements in place does not).
	for _, w := range old {
		s.unindex(w)
	}
	cur := make(map[string]*worker, len(workers))
	for _, in := range workers {
		in.Hive = hive
		if in.Slots <= 0 {
			in.Slots = 1
		}
		if cur[in.Name] != nil {
			continue // a name listed twice: the first stands
		}
		w := old[in.Name]
		if w != nil && w.Model != in.Model {
			w = nil
		}
		if w == nil {
			w = &worker{id: in.ID(), keys: ModelKeys(in.Model)}
			s.workers[w.id] = w
		}
		w.Worker = in
		w.health = workerHealth(&in)
		w.stopping = s.stopping(hive, in.Name, now)
		w.seen = now
		w.leases = 0
		cur[in.Name] = w
	}
	for name, w := range old {
		if cur[name] == nil {
			delete(s.workers, w.id)
		}
	}
	s.byHive[hive] = cur

	listed := make(map[string]bool, len(leases))
	for _, hl := range leases {
		listed[hl.ID] = true
		if l := s.leases[hl.ID]; l != nil {
			l.Confirmed = true
			continue
		}
		if cur[hl.Worker] == nil {
			continue
		}
		// The request a previous queen granted may be waiting here too
		// (its entry node asked again): it is served, not waiting.
		if wt := s.waiting[hl.RequestID]; wt != nil && hl.RequestID != "" {
			s.unwait(wt)
		}
		s.addLease(&Lease{ID: hl.ID, RequestID: hl.RequestID, Entry: hl.Entry, Hive: hive, Worker: hl.Worker,
			Model: hl.Model, Granted: hl.Since, Confirmed: true})
	}
	for id, l := range s.hiveLs[hive] {
		w := cur[l.Worker]
		if w == nil || (l.Confirmed && !listed[id]) {
			s.dropLease(l)
			continue
		}
		w.leases++
	}
	var grants []Grant
	for _, w := range cur {
		w.grantedVRAM = 0 // the report counts what was granted before it
		s.index(w)
	}
	for _, w := range sortedWorkers(cur) {
		grants = s.fill(w, now, grants)
	}
	return grants
}

// RemoveHive forgets a hive (its session ended): its workers get no new
// requests and its leases are gone. If the hive is alive it reports again,
// with the leases it still serves.
func (s *Scheduler) RemoveHive(hive string) {
	for _, w := range s.byHive[hive] {
		s.unindex(w)
		delete(s.workers, w.id)
	}
	delete(s.byHive, hive)
	delete(s.hiveAt, hive)
	s.forgetModels(hive)
	for _, l := range s.hiveLs[hive] {
		s.dropLease(l)
	}
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
		if w := s.pick(key, r, now); w != nil {
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

// Release ends a lease and hands its slot to the next waiting request for the
// worker's model.
func (s *Scheduler) Release(leaseID string, now time.Time) []Grant {
	l := s.leases[leaseID]
	if l == nil {
		return nil
	}
	s.dropLease(l)
	w := s.byHive[l.Hive][l.Worker]
	if w == nil {
		return nil
	}
	s.noteService(w, now.Sub(l.Granted))
	if w.leases > 0 {
		w.leases--
		w.lastEnd = now
		s.reindex(w)
	}
	return s.fill(w, now, nil)
}

// Tick does what time does: it fails requests past their deadline (and, once
// warm, those for models no worker serves), reclaims leases never listed by a
// hive, forgets silent hives, and grants what that freed.
func (s *Scheduler) Tick(now time.Time) ([]Grant, []Failure) {
	s.unpinLapsed(now)
	s.expireStarts(now)
	var fails []Failure
	refused := map[string]*blocked{} // startBlocked by key, once per tick
	catalogs := map[string]bool{}    // catalogHas by key, once per tick
	hasCatalog := func(key string) bool {
		v, ok := catalogs[key]
		if !ok {
			v = s.catalogHas(key)
			catalogs[key] = v
		}
		return v
	}
	for _, w := range s.waiting {
		var cerr *Error
		if w.pin == "" && s.warm {
			b, seen := refused[w.key]
			if !seen {
				b = s.startBlocked(w.key, now)
				refused[w.key] = b
			}
			cerr = b.err(w.req.Model)
		}
		switch {
		case !now.Before(w.req.Deadline):
			fails = append(fails, Failure{Request: w.req, Err: &Error{Status: http.StatusServiceUnavailable, Type: "timeout",
				Msg: fmt.Sprintf("no worker for model %q became free in time (%s)", w.req.Model, s.Explain(w.req.Model, now))}})
			s.unwait(w)
		case cerr != nil:
			fails = append(fails, Failure{Request: w.req, Err: cerr})
			s.unwait(w)
		case s.warm && len(s.byKey[w.key]) == 0 && !hasCatalog(w.key):
			fails = append(fails, Failure{Request: w.req, Err: &Error{Status: http.StatusNotFound, Type: "model_not_found",
				Msg: fmt.Sprintf("model %q is not served by this cluster (GET /v1/models lists what is)", w.req.Model)}})
			s.unwait(w)
		case s.warm && s.allDown(w.key, now) && !hasCatalog(w.key):
			fails = append(fails, Failure{Request: w.req, Err: s.downErr(w.req.Model, now)})
			s.unwait(w)
		}
	}
	slices.SortFunc(fails, func(a, b Failure) int { return strings.Compare(a.Request.ID, b.Request.ID) })
	for hive, at := range s.hiveAt {
		if now.Sub(at) > s.cfg.ForgetAfter {
			s.RemoveHive(hive)
		}
	}
	var freed []*worker
	for _, l := range s.leases {
		if !l.Confirmed && now.Sub(l.Granted) > s.cfg.LeaseStartTimeout {
			s.dropLease(l)
			if w := s.byHive[l.Hive][l.Worker]; w != nil {
				w.leases = max(w.leases-1, 0)
				w.lastEnd = now
				s.reindex(w)
				freed = append(freed, w)
			}
		}
	}
	// Workers that turned fresh, healthy or unsaturated since the last
	// grant may serve waiting requests too.
	var grants []Grant
	for _, key := range s.waitingKeys() {
		freed = append(freed, s.byKey[key]...)
	}
	freed = append(freed, s.pinnedWorkers()...)
	for _, w := range freed {
		grants = s.fill(w, now, grants)
	}
	return grants, fails
}

// fill grants waiting requests to w while it has free slots: the oldest
// waiting request among the names w's model answers to goes first.
func (s *Scheduler) fill(w *worker, now time.Time, grants []Grant) []Grant {
	for w.leases < w.Slots {
		var best *waiting
		if q := s.pinned[w.id]; q != nil {
			// A worker that changed its model since is left to Tick,
			// which moves what waited for it to the model's queue.
			if h := q.head(now, s.cfg.AgingAfter); h != nil && slices.Contains(w.keys, h.key) {
				best = h
			}
		}
		for _, k := range w.keys {
			q := s.queues[k]
			if q == nil {
				continue
			}
			// Across the names w answers to: the higher class, then
			// the older request; against a request waiting for its
			// conversation's worker, which holds a place in this
			// queue, by the fair rule.
			if h := q.head(now, s.cfg.AgingAfter); h != nil && (best == nil || before(h, best)) {
				best = h
			}
		}
		if best == nil || !s.eligible(w, best.req, best.key, now) {
			return grants
		}
		s.served(best)
		s.unwait(best)
		grants = append(grants, s.grant(w, best.req, now))
	}
	return grants
}

// pick chooses among the eligible workers for key: fewest leases, then lowest
// GPU utilization, then most free VRAM, then the one granted longest ago.
func (s *Scheduler) pick(key string, r Request, now time.Time) *worker {
	// The index's first worker is the best one that has a free slot;
	// when it may take r (fresh, healthy, room on its GPU: the usual
	// case) that is the answer without a scan.
	if !s.scanOnly {
		return s.pickIndexed(key, r, now)
	}
	var best *worker
	for _, w := range s.byKey[key] {
		if !s.eligible(w, r, key, now) {
			continue
		}
		if best == nil || better(w, best) {
			best = w
		}
	}
	return best
}

func better(a, b *worker) bool {
	if a.leases != b.leases {
		return a.leases < b.leases
	}
	if a.GPUUtilPct != b.GPUUtilPct {
		return a.GPUUtilPct < b.GPUUtilPct
	}
	if fa, fb := freeVRAM(a), freeVRAM(b); fa != fb {
		return fa > fb
	}
	if a.lastGrant != b.lastGrant {
		return a.lastGrant < b.lastGrant
	}
	return a.id < b.id
}

func freeVRAM(w *worker) uint64 {
	if w.VRAMUsedMB >= w.VRAMTotalMB {
		return 0
	}
	return w.VRAMTotalMB - w.VRAMUsedMB
}

// Ineligibility reasons, for Explain.
const (
	reasonStale     = "telemetry stale"
	reasonUnhealthy = "unhealthy"
	reasonFull      = "all slots leased"
	reasonVRAM      = "not enough free VRAM"
	reasonSaturated = "GPU saturated by work outside rbee"
	reasonDown      = "down"
	reasonStopping  = "being stopped"
)

// refusal is why a worker in a state that takes no request refuses one.
var refusal = [...]string{full: reasonFull, gpuBusy: reasonSaturated, failing: reasonUnhealthy, down: reasonDown, offline: reasonStale}

func (s *Scheduler) eligible(w *worker, r Request, key string, now time.Time) bool {
	return s.why(w, r, key, now) == ""
}

// why says why w cannot take r now, or "" when it can. The worker-state
// rule decides first; the request's VRAM need comes after.
func (s *Scheduler) why(w *worker, r Request, key string, now time.Time) string {
	if st := stateOf(now.Sub(w.seen) <= s.cfg.StaleAfter, w.health, w.leases, w.Slots, outsideUtil(w), s.cfg.SaturatedPct); !st.available() {
		return refusal[st]
	}
	if w.stopping {
		return reasonStopping
	}
	need := s.need(w, r, key)
	// A worker without GPU figures (CPU inference, no NVML) cannot be
	// checked; refusing it would make such clusters unusable. What was
	// granted since its last report is not in its figures yet: a burst
	// must not place more on a GPU than fits.
	if need > 0 && w.VRAMTotalMB > 0 && freeVRAM(w) < need+w.grantedVRAM {
		return reasonVRAM
	}
	return ""
}

// need is the free VRAM r needs on w.
func (s *Scheduler) need(w *worker, r Request, key string) uint64 {
	return max(r.VRAMMB, s.modelVRAM(key, w))
}

func (s *Scheduler) modelVRAM(key string, w *worker) uint64 {
	if len(s.cfg.ModelVRAMMB) == 0 {
		return 0
	}
	if v, ok := s.cfg.ModelVRAMMB[key]; ok {
		return v
	}
	for _, k := range w.keys {
		if v, ok := s.cfg.ModelVRAMMB[k]; ok {
			return v
		}
	}
	return 0
}

// Explain says why no worker can take a request for model now, for a 503's
// message: the reasons with their counts, and the workers that are down by
// name with the hive's reason.
func (s *Scheduler) Explain(model string, now time.Time) string {
	key := RequestKey(model)
	counts := map[string]int{}
	var down []*worker
	for _, w := range s.byKey[key] {
		reason := s.why(w, Request{}, key, now)
		if reason == reasonDown {
			down = append(down, w)
			continue
		}
		counts[reason]++
	}
	start := s.explainStart(key, now)
	if len(counts) == 0 && len(down) == 0 {
		if start != "" {
			return start
		}
		return "no worker serves it"
	}
	var parts []string
	for reason, n := range counts {
		if reason == "" {
			reason = "free"
		}
		parts = append(parts, strconv.Itoa(n)+" "+reason)
	}
	slices.Sort(parts)
	var out []string
	if len(parts) > 0 {
		out = append(out, "workers: "+strings.Join(parts, ", "))
	}
	out = append(out, namedDown(down)...)
	if start != "" {
		out = append(out, start)
	}
	return strings.Join(out, "; ")
}

func (s *Scheduler) grant(w *worker, r Request, now time.Time) Grant {
	s.seq++
	s.granted++
	w.leases++
	w.lastGrant = s.seq
	w.grantedVRAM += s.need(w, r, RequestKey(r.Model))
	s.reindex(w)
	if r.Conversation != "" {
		s.rememberConversation(r.Conversation, w.id)
	}
	l := &Lease{ID: s.cfg.LeasePrefix + strconv.FormatUint(s.seq, 36), RequestID: r.ID, Entry: r.Entry,
		Hive: w.Hive, Worker: w.Name, Model: w.Model, Granted: now, Key: r.Key}
	s.addLease(l)
	return Grant{Request: r, Lease: *l}
}

func (s *Scheduler) addLease(l *Lease) {
	s.keyActive(l.Key, 1)
	s.leases[l.ID] = l
	if l.RequestID != "" {
		s.byReq[l.RequestID] = l.ID
	}
	m := s.hiveLs[l.Hive]
	if m == nil {
		m = make(map[string]*Lease)
		s.hiveLs[l.Hive] = m
	}
	m[l.ID] = l
}

func (s *Scheduler) dropLease(l *Lease) {
	if _, ok := s.leases[l.ID]; ok {
		s.keyActive(l.Key, -1)
	}
	delete(s.leases, l.ID)
	if s.byReq[l.RequestID] == l.ID {
		delete(s.byReq, l.RequestID)
	}
	if m := s.hiveLs[l.Hive]; m != nil {
		delete(m, l.ID)
		if len(m) == 0 {
			delete(s.hiveLs, l.Hive)
		}
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

func sortedWorkers(m map[string]*worker) []*worker {
	out := make([]*worker, 0, len(m))
	for _, w := range m {
		out = append(out, w)
	}
	slices.SortFunc(out, func(a, b *worker) int { return strings.Compare(a.id, b.id) })
	return out
}

// Leases returns the leases held now, sorted by id.
func (s *Scheduler) Leases() []Lease {
	out := make([]Lease, 0, len(s.leases))
	for _, l := range s.leases {
		out = append(out, *l)
	}
	slices.SortFunc(out, func(a, b Lease) int { return strings.Compare(a.ID, b.ID) })
	return out
}

// ModelStats is one model's state, for the feed, /v1/models and metrics.
type ModelStats struct {
	Model   string
	Waiting int
	Leases  int
	Slots   int
	Workers int
	// The lifecycle: State is StateLoaded, StateLoading, StateAvailable
	// or StateUnavailable (Reason says why), Hives those that can start
	// it, Loading the hive starting it and since when.
	State, Reason string
	Hives         []string
	Loading       string
	LoadingSince  time.Time
	Service, ETA  time.Duration
}

// Models lists every model a fresh worker that is not down serves, with its waiting requests,
// leases and slots, sorted by name; requests waiting for a model no worker
// serves (yet) are listed under the name they asked for.
func (s *Scheduler) Models(now time.Time) []ModelStats {
	byName := map[string]*ModelStats{}
	counted := map[string]string{} // request key -> model it was counted under
	for _, w := range s.workers {
		if now.Sub(w.seen) > s.cfg.StaleAfter || w.health == unreachable {
			continue // its slots serve nobody
		}
		m := byName[w.Model]
		if m == nil {
			m = &ModelStats{Model: w.Model}
			byName[w.Model] = m
			for _, k := range w.keys {
				if _, ok := counted[k]; !ok {
					counted[k] = w.Model
				}
			}
		}
		m.Workers++
		m.Slots += w.Slots
		m.Leases += w.leases
	}
	for key, q := range s.queues {
		if q.n == 0 {
			continue
		}
		name, ok := counted[key]
		if !ok {
			name = key
			if h := q.head(now, s.cfg.AgingAfter); h != nil {
				name = h.req.Model
			}
			if byName[name] == nil {
				byName[name] = &ModelStats{Model: name}
			}
		}
		byName[name].Waiting += q.n
	}
	for id, q := range s.pinned {
		name := ""
		if w := s.workers[id]; w != nil {
			name = w.Model
		} else if h := q.head(now, s.cfg.AgingAfter); h != nil {
			name = h.req.Model
		}
		if byName[name] == nil {
			byName[name] = &ModelStats{Model: name}
		}
		byName[name].Waiting += q.n
	}
	s.lifecycleStats(byName, now)
	out := make([]ModelStats, 0, len(byName))
	for _, m := range byName {
		if m.Model != "" {
			out = append(out, *m)
		}
	}
	slices.SortFunc(out, func(a, b ModelStats) int { return strings.Compare(a.Model, b.Model) })
	return out
}

// Waiting counts the requests waiting for a lease.
func (s *Scheduler) Waiting() int { return len(s.waiting) }
