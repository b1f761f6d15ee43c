package proxy

import (
	"context"
	"net/http"
	"slices"
	"strconv"
	"sync"
	"sync/atomic"
	"time"

	"github.com/rbee/rbee/node/tenants"
	"github.com/rbee/rbee/wsapi"
)

// Uplink carries lease messages to the queen: the node's session. Send writes
// an encoded message now or queues it behind a write under way; an error
// means the session is breaking. Queue only queues the message for the
// session's writer, for a message nobody waits on. Break drops the session,
// so that what waits is asked again on the next one.
type Uplink interface {
	Send(msg []byte) error
	Queue(msg []byte) error
	Break()
	// Knows reports whether the queen reads messages of type typ (its
	// protocol revision, wsapi.Knows).
	Knows(typ string) bool
}

// LeaseClient is the entry node's side of leasing: it asks the queen over the
// node's session and waits for the answer. Requests still waiting when the
// session breaks (the queen died) are asked again, with the same ids, on the
// next session, so a failover costs a client added latency, not an error.
type LeaseClient struct {
	prefix string
	seq    atomic.Uint64
	// grace: the queen answers 503 at the deadline; this fallback fires
	// when no queen could be asked at all.
	grace time.Duration

	mu      sync.Mutex
	up      Uplink
	pending map[string]*pendingLease
	closed  bool
	// stranded, when set, says why this node cannot reach the queen
	// that the rest of the cluster follows (SetStranded).
	stranded string
	// released: the leases released on the current session (Release).
	released recentSet

	// Spare leases (spares.go): the pools by what they are for, the
	// asks in flight, the spare leases requests run on, where each
	// conversation's last turn went, and the sweep that gives back what
	// was not used.
	spareMax int
	spareTTL time.Duration // spareTTL, shorter under tests
	// fence is the lowest queen term whose leases hives still take
	// (Members.FenceTerm); nil: any.
	fence    func() uint64
	gen      uint64 // sessions so far: a spare lease is used again only on its own
	pools    map[spareClass]*sparePool
	asks     map[string]spareClass
	claimed  map[string]*claim
	convs    recentMap[string]
	sweep    *time.Timer
	sweeping bool
	usesTold uint64 // stats.used when the queen was last told (spares.go)
	// early: revoked spare leases not yet come (OnRevoke), and when.
	early map[string]time.Time
	stats spareStats
}

// recentConvs is how many conversations a node remembers the worker of.
const recentConvs = 4096

// ErrTypeQueenUnreachable is the error type of the 503 a request gets when
// its entry node cannot reach the queen while the cluster says it is alive.
const ErrTypeQueenUnreachable = "queen_unreachable"

type pendingLease struct {
	msg      wsapi.LeaseRequest
	arrived  time.Time // the client's request reached this node
	deadline time.Time
	ch       chan leaseAnswer // buffered 1
	onWait   func(*wsapi.LeaseWait)
	patient  bool // Ask.Patient
}

type leaseAnswer struct {
	grant *wsapi.LeaseGrant
	err   *wsapi.LeaseError
}

// NewLeaseClient returns the lease client of node name, started at start
// (which keeps request ids unique across restarts of the same node).
func NewLeaseClient(name string, start time.Time) *LeaseClient {
	return &LeaseClient{
		prefix:   name + "." + strconv.FormatInt(start.UnixNano(), 36) + ".",
		grace:    2 * time.Second,
		pending:  make(map[string]*pendingLease),
		spareTTL: spareTTL,
		pools:    make(map[spareClass]*sparePool),
		asks:     make(map[string]spareClass),
		claimed:  make(map[string]*claim),
		early:    make(map[string]time.Time),
	}
}

// Attach makes u the session to ask on and asks again everything waiting.
func (lc *LeaseClient) Attach(u Uplink) {
	lc.mu.Lock()
	lc.up = u
	lc.released = recentSet{} // a new session hears every release
	lc.dropSparesLocked()
	now := time.Now()
	ps := make([]*pendingLease, 0, len(lc.pending))
	for _, p := range lc.pending {
		ps = append(ps, p)
	}
	// Oldest first: a new queen queues each key's requests in the order
	// they are asked, so they keep their place.
	slices.SortFunc(ps, func(a, b *pendingLease) int { return a.arrived.Compare(b.arrived) })
	msgs := make([]wsapi.LeaseRequest, 0, len(ps))
	for _, p := range ps {
		m := p.msg
		m.WaitMS = max(p.deadline.Sub(now).Milliseconds(), 0)
		m.WaitedMS = max(now.Sub(p.arrived).Milliseconds(), 0)
		msgs = append(msgs, m)
	}
	lc.mu.Unlock()
	for i := range msgs {
		put(u, &msgs[i])
	}
}

// SetStranded says that this node cannot reach the queen (why), or, with "",
// that it can again. While stranded and without a session, a lease request
// is refused at once with ErrTypeQueenUnreachable instead of waiting for a
// session that is not coming, and those already waiting get that refusal
// now: the entry node routes them through a peer or answers 503 with the
// reason, never after the whole queue timeout.
func (lc *LeaseClient) SetStranded(why string) {
	lc.mu.Lock()
	lc.stranded = why
	var refused []*pendingLease
	if why != "" && lc.up == nil {
		for id, p := range lc.pending {
			if !p.patient {
				delete(lc.pending, id)
				refused = append(refused, p)
			}
		}
	}
	lc.mu.Unlock()
	for _, p := range refused {
		p.ch <- leaseAnswer{err: strandedError(why)}
	}
}

func strandedError(why string) *wsapi.LeaseError {
	return &wsapi.LeaseError{Status: http.StatusServiceUnavailable, ErrorType: ErrTypeQueenUnreachable, RetryAfterMS: 1000,
		Message: "this node cannot reach the queen: " + why}
}

// OldestWaiting is how long the oldest request still waiting for the
// queen's answer has waited, zero when none does.
func (lc *LeaseClient) OldestWaiting(now time.Time) time.Duration {
	lc.mu.Lock()
	defer lc.mu.Unlock()
	var d time.Duration
	for _, p := range lc.pending {
		d = max(d, now.Sub(p.arrived))
	}
	return d
}

// Detach forgets u if it is the current session.
func (lc *LeaseClient) Detach(u Uplink) {
	lc.mu.Lock()
	if lc.up == u {
		lc.up = nil
		lc.dropSparesLocked()
	}
	lc.mu.Unlock()
}

func (lc *LeaseClient) send(msg any) {
	lc.mu.Lock()
	u := lc.up
	lc.mu.Unlock()
	if u != nil {
		put(u, msg)
	}
}

// put sends msg on u. A queen that lets thousands of messages pile up is not
// reading: the session is dropped, and what was waiting is asked again on the
// next one.
func put(u Uplink, msg any) {
	b, err := wsapi.Encode(msg)
	if err != nil {
		return
	}
	if u.Send(b) != nil {
		u.Break()
	}
}

// Acquire asks for a lease on a worker serving model and waits up to wait. It
// returns the grant, or an error the client should see (status 404, 429,
// 503), or ctx's error when the client went away.
func (lc *LeaseClient) Acquire(ctx context.Context, model string, wait time.Duration) (*wsapi.LeaseGrant, *wsapi.LeaseError, error) {
	return lc.AcquireOn(ctx, model, Placement{}, wait)
}

// Placement names one worker (Worker, group/instance, on Hive) a request
// asks for; the zero Placement asks for any.
type Placement struct {
	Hive, Worker string
}

// AcquireOn is Acquire for worker on when on is set: the queen waits for
// that worker's slot, and grants any worker when it is gone.
func (lc *LeaseClient) AcquireOn(ctx context.Context, model string, on Placement, wait time.Duration) (*wsapi.LeaseGrant, *wsapi.LeaseError, error) {
	return lc.Ask(ctx, Ask{Model: model, On: on, Wait: wait})
}

// Ask is one lease request in full.
type Ask struct {
	Model string
	On    Placement
	Wait  time.Duration
	// OnWait, when set, asks the queen where the request stands while it
	// waits and is called with each answer, from the session's reader:
	// it must not block.
	OnWait func(*wsapi.LeaseWait)
	// Tenant is the API key's rules (nil: none); Arrived when the
	// client's request reached this node (zero: now).
	Tenant  *tenants.Tenant
	Arrived time.Time
	// Conversation names the conversation, for prefix affinity;
	// FirstTurn says the request is its first turn, which any worker
	// may serve (spares.go).
	Conversation string
	FirstTurn    bool
	// Patient waits for a session even while this node is stranded: no
	// peer could take the request, so the queen may be gone for everyone
	// and the next one is worth waiting for.
	Patient bool
	// Avoid lists the workers that broke off this request's answer and
	// the hives this node could not reach: the queen grants none of them.
	Avoid []wsapi.Placement
	// Elsewhere lists hives to prefer not to use: those of workers that
	// broke off this request's answer.
	Elsewhere []string
	// Trace is the W3C traceparent of the wait (trace.go), "" untraced.
	Trace string
}

// Ask asks for a lease as a says and waits for the answer, as AcquireOn.
func (lc *LeaseClient) Ask(ctx context.Context, a Ask) (*wsapi.LeaseGrant, *wsapi.LeaseError, error) {
	if g := lc.takeSpare(&a); g != nil { // spares.go
		return g, nil, nil
	}
	id := lc.prefix + strconv.FormatUint(lc.seq.Add(1), 36)
	now := time.Now()
	if a.Arrived.IsZero() {
		a.Arrived = now
	}
	wait, on, onWait, model := a.Wait, a.On, a.OnWait, a.Model
	p := &pendingLease{
		msg: wsapi.LeaseRequest{Type: wsapi.TypeLeaseRequest, RequestID: id, Model: model, WaitMS: wait.Milliseconds(),
			Hive: on.Hive, Worker: on.Worker, Progress: onWait != nil, WaitedMS: max(now.Sub(a.Arrived).Milliseconds(), 0),
			Conversation: a.Conversation, Avoid: a.Avoid, Elsewhere: a.Elsewhere, Trace: a.Trace},
		arrived:  a.Arrived,
		deadline: now.Add(wait),
		ch:       make(chan leaseAnswer, 1),
		onWait:   onWait,
		patient:  a.Patient,
	}
	if t := a.Tenant; t != nil {
		p.msg.Key, p.msg.Weight, p.msg.MaxConcurrent, p.msg.PerMinute = t.Name, t.Weight, t.MaxConcurrent, t.PerMinute
		if t.Class == tenants.Batch {
			p.msg.Priority = wsapi.PriorityBatch
		}
	}
	lc.mu.Lock()
	if lc.closed {
		lc.mu.Unlock()
		return nil, errShuttingDown, nil
	}
	if lc.stranded != "" && lc.up == nil && !a.Patient {
		why := lc.stranded
		lc.mu.Unlock()
		return nil, strandedError(why), nil
	}
	lc.pending[id] = p
	u := lc.up
	lc.mu.Unlock()
	if u != nil {
		put(u, &p.msg)
	}
	t := time.NewTimer(wait + lc.grace)
	defer t.Stop()
	select {
	case ans := <-p.ch:
		lc.noteGrant(a.Conversation, ans.grant)
		return ans.grant, ans.err, nil
	case <-ctx.Done():
		lc.abandon(p)
		return nil, nil, ctx.Err()
	case <-t.C:
		lc.abandon(p)
		return nil, &wsapi.LeaseError{Status: http.StatusServiceUnavailable, ErrorType: "no_queen",
			Message: "no queen answered within the wait limit (the cluster is electing one, or this node cannot reach it)"}, nil
	}
}

// abandon withdraws p; a grant that arrived as the caller gave up is
// returned at once rather than left for the queen to reclaim.
func (lc *LeaseClient) abandon(p *pendingLease) {
	// After forget, whoever took p out of pending has sent its answer.
	lc.forget(p.msg.RequestID)
	select {
	case a := <-p.ch:
		if a.grant != nil {
			lc.Release(a.grant.LeaseID)
		}
	default:
	}
}

// forget drops a waiting request and withdraws it from the queen; a grant
// that crosses the cancel on the wire is released in OnGrant.
func (lc *LeaseClient) forget(id string) {
	lc.mu.Lock()
	_, ok := lc.pending[id]
	delete(lc.pending, id)
	lc.mu.Unlock()
	if ok {
		lc.send(&wsapi.LeaseCancel{Type: wsapi.TypeLeaseCancel, RequestID: id})
	}
}

// OnGrant hands the queen's grant to the request waiting for it; a grant
// nobody waits for any more is released at once.
func (lc *LeaseClient) OnGrant(g *wsapi.LeaseGrant) {
	lc.mu.Lock()
	p := lc.pending[g.RequestID]
	delete(lc.pending, g.RequestID)
	if p != nil {
		// Under the lock, so that abandon, which takes it after
		// forget, finds the grant in the channel (it never blocks:
		// only whoever took p out of pending sends).
		p.ch <- leaseAnswer{grant: g}
	}
	lc.mu.Unlock()
	if p == nil {
		lc.Release(g.LeaseID)
	}
}

// OnError hands the queen's refusal to the request waiting for it.
func (lc *LeaseClient) OnError(e *wsapi.LeaseError) {
	lc.mu.Lock()
	defer lc.mu.Unlock()
	if p := lc.pending[e.RequestID]; p != nil {
		delete(lc.pending, e.RequestID)
		p.ch <- leaseAnswer{err: e}
	}
}

// OnWait passes the queen's report on a waiting request to whoever asked.
func (lc *LeaseClient) OnWait(m *wsapi.LeaseWait) {
	lc.mu.Lock()
	p := lc.pending[m.RequestID]
	lc.mu.Unlock()
	if p != nil && p.onWait != nil {
		p.onWait(m)
	}
}

// errShuttingDown answers the requests of a node that stops.
var errShuttingDown = &wsapi.LeaseError{Status: http.StatusServiceUnavailable, ErrorType: "shutting_down",
	Message: "this node is shutting down; send the request to another node", RetryAfterMS: 1000}

// Close fails every request waiting for a lease, and every later one, with a
// 503: the node is shutting down and will not hear from the queen again.
func (lc *LeaseClient) Close() {
	lc.mu.Lock()
	defer lc.mu.Unlock()
	lc.closed = true
	if lc.sweep != nil {
		lc.sweep.Stop()
	}
	lc.dropSparesLocked()
	for _, p := range lc.pending {
		p.ch <- leaseAnswer{err: errShuttingDown}
	}
	lc.pending = make(map[string]*pendingLease)
}

// Release returns a lease's slot to the queen. Without a session it is
// dropped: the new queen learns from the hives which leases still run.
//
// A lease is released once per session: the entry node releases it when the
// answer has reached the client and again when the request ends, and every
// release is a message the queen reads and a write on this node.
func (lc *LeaseClient) Release(leaseID string) {
	lc.mu.Lock()
	u := lc.up
	if u != nil {
		if lc.released.seen(leaseID) {
			lc.mu.Unlock()
			return
		}
	}
	msg, spare := lc.endSpareLocked(leaseID, time.Now()) // spares.go
	if !spare {
		msg = &wsapi.LeaseRelease{Type: wsapi.TypeLeaseRelease, LeaseID: leaseID}
	}
	lc.mu.Unlock()
	if msg == nil {
		return
	}
	if u == nil {
		return
	}
	// Queued, not written here: a release is written after the answer
	// reached the worker's hive and before the client has it (the
	// handler's end flushes it), and a write to the queen there added its
	// time to every request, twice through two nodes. Queued in order, it
	// still reaches the queen before a lease request the client's next
	// request makes.
	queue(u, msg)
}

// recentReleases is how many released lease ids a node remembers: the
// releases of one lease come within one request, far fewer than this many
// requests apart.
const recentReleases = 4096

// recentSet remembers the last recentReleases ids added.
type recentSet struct{ m recentMap[struct{}] }

// seen reports whether id was added lately, and adds it.
func (r *recentSet) seen(id string) bool {
	if _, ok := r.m.get(id); ok {
		return true
	}
	r.m.put(id, struct{}{}, recentReleases)
	return false
}

// recentMap is a map that keeps the last keys added, forgetting the oldest
// beyond a bound; its zero value is empty.
type recentMap[V any] struct {
	m    map[string]V
	ring []string // keys, oldest at next once full
	next int
}

func (r *recentMap[V]) get(k string) (V, bool) {
	v, ok := r.m[k]
	return v, ok
}

// put sets k to v; a key new to the map makes it forget the oldest once it
// holds bound keys.
func (r *recentMap[V]) put(k string, v V, bound int) {
	if r.m == nil {
		r.m = make(map[string]V, bound)
		r.ring = make([]string, bound)
	}
	if _, ok := r.m[k]; !ok {
		if old := r.ring[r.next]; old != "" {
			delete(r.m, old)
		}
		r.ring[r.next] = k
		r.next = (r.next + 1) % len(r.ring)
	}
	r.m[k] = v
}

// Attached reports whether the node has a session to the queen now.
func (lc *LeaseClient) Attached() bool {
	lc.mu.Lock()
	defer lc.mu.Unlock()
	return lc.up != nil
}
