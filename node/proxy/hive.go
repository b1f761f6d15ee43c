package proxy

import (
	"bytes"
	"context"
	"io"
	"net/http"
	"runtime"
	"strconv"
	"strings"
	"sync"
	"time"

	"github.com/rbee/rbee/node/api"
	"github.com/rbee/rbee/wsapi"
)

// failingFor: a worker the hive could not reach is reported failing this long,
// so the scheduler stops sending it requests while it restarts.
const failingFor = 10 * time.Second

// HandleHiveProxy is the hive's end: an entry node holding a lease on one of
// this hive's workers sends the request here.
func (p *Proxy) HandleHiveProxy(w http.ResponseWriter, r *http.Request) {
	// Until serveLease takes the lease up, a refusal leaves its release to
	// the entry node.
	w.Header().Set(hdrUnserved, "1")
	path := strings.TrimPrefix(r.URL.Path, api.PathHiveProxy)
	if !InferencePath(path) {
		WriteError(w, http.StatusNotFound, "not_found", "no inference route "+TruncateText(path, 200))
		return
	}
	lease := wsapi.LeaseInfo{LeaseID: r.Header.Get(hdrLease), Worker: r.Header.Get(hdrWorker), Model: r.Header.Get(hdrModel),
		Entry: r.Header.Get(hdrEntry), RequestID: r.Header.Get(hdrRequest)}
	term, terr := strconv.ParseUint(r.Header.Get(hdrTerm), 10, 64)
	if lease.LeaseID == "" || lease.Worker == "" || len(lease.LeaseID) > 256 || len(lease.Worker) > 256 || terr != nil {
		WriteError(w, http.StatusBadRequest, "invalid_request_error", "missing lease headers")
		return
	}
	if id := r.Header.Get(HeaderRequestID); validRequestID(id) {
		w.Header().Set(HeaderRequestID, id) // in its error bodies too
	}
	r, hs := p.startHiveSpan(r, lease) // trace.go
	defer endSpan(hs)
	if p.staleGrant(term) {
		w.Header().Set(hdrRetry, "1")
		WriteError(w, http.StatusServiceUnavailable, "stale_lease", "lease granted by a queen that has been replaced")
		return
	}
	// Read the body whole: forwarded with its length, the worker gets it in
	// one write instead of a chunked stream.
	body, release, berr := p.readBody(w, r, holder{}) // the entry node admitted it within its own shares
	if berr != nil {
		if berr.status == http.StatusServiceUnavailable {
			// Not started: the entry node may try another worker.
			w.Header().Set(hdrRetry, "1")
		}
		WriteError(w, berr.status, berr.typ, berr.msg)
		return
	}
	defer release()
	w.Header().Del(hdrUnserved)
	if p.serveLease(w, r, path, bytes.NewReader(body), lease, hiveGrant{standby: r.Header.Get(hdrStandby) != "", term: term}, time.Now(), nil) == outcomeRetry {
		w.Header().Set(hdrRetry, "1")
		WriteError(w, http.StatusServiceUnavailable, "worker_unavailable", "worker "+lease.Worker+" cannot take the request now")
	}
}

// staleGrant reports whether a grant of term comes from a queen that has been
// replaced: a newer queen's claim carries a higher term. Fencing it keeps a
// frozen or cut-off queen that does not know yet from handing out this hive's
// slots (the slot check in serveLease holds either way).
func (p *Proxy) staleGrant(term uint64) bool {
	if max := p.cfg.Members.FenceTerm(); term < max {
		p.log.Debug("refused a grant from a replaced queen", "term", term, "current", max)
		return true
	}
	return false
}

// serveLease proxies one request to a worker of this hive under a lease, and
// returns the lease when the response ends. It refuses (outcomeRetry, having
// written nothing) when the worker is unknown, already serving as many
// requests as it has slots (a lease from a previous queen may still be on its
// way), or unreachable. rp is the entry node's reply when this node is the
// client's entry node too, nil when another entry node sent the request.
// A standby lease (granted ahead of a free slot) waits up to standbyGrace
// for one, behind the leases already waiting.
func (p *Proxy) serveLease(w http.ResponseWriter, r *http.Request, path string, body io.Reader, lease wsapi.LeaseInfo, g hiveGrant, start time.Time, rp *reply) (o outcome) {
	group, instance, _ := strings.Cut(lease.Worker, "/")
	ep := ""
	if p.cfg.Workers != nil {
		ep = p.cfg.Workers.Endpoint(group, instance)
	}
	if ep == "" {
		p.log.Warn("lease for a worker with no known API address", "worker", lease.Worker)
		return outcomeRetry
	}
	lease.Since = time.Now().UTC()
	grace := slotGrace
	if g.standby {
		grace = standbyGrace
	}
	ok, queued := p.table.startQueued(r.Context(), lease, grace)
	if queued {
		p.slotWaited(w, r, rp, time.Since(lease.Since))
		if ok && p.staleGrant(g.term) {
			// Its queen was replaced while it waited: the new one
			// counts this slot free, so it goes to the next in line.
			p.table.end(lease.LeaseID)
			return outcomeRetry
		}
	}
	if !ok {
		return outcomeRetry
	}
	// The slot is free once the worker has sent its whole answer, not
	// once the answer has reached the client: a request waiting for it
	// (granted ahead) goes to the worker from the end of this body, and
	// runs at once (Gosched), before this goroutine writes the answer out
	// and unwinds: about 100 us less of the worker idle per hand-off on
	// this project's 2-core VM (README, "Throughput at saturation").
	slotFreed := false
	freeSlot := func() {
		if slotFreed {
			return
		}
		slotFreed = true
		if p.table.end(lease.LeaseID) {
			runtime.Gosched()
		}
	}
	defer func() {
		freeSlot()
		if o != outcomeDone {
			// A spare lease whose request the worker did not
			// serve is not used again (spares.go).
			p.leases.Spoil(lease.LeaseID)
		}
		p.leases.Release(lease.LeaseID)
	}()
	req, err := http.NewRequestWithContext(r.Context(), http.MethodPost, ep+path, body)
	if err != nil {
		return outcomeRetry
	}
	copyRequestHeaders(req.Header, r.Header)
	ws := p.startWorkerSpan(r, req, lease) // trace.go
	defer endSpan(ws)
	resp, err := p.hops.RoundTrip(req)
	if err != nil {
		if r.Context().Err() != nil {
			return outcomeDone
		}
		p.table.markFailing(lease.Worker, time.Now())
		p.log.Warn("worker unreachable", "worker", lease.Worker, "url", ep, "err", err)
		return outcomeRetry
	}
	defer resp.Body.Close()
	watchFirstToken(resp, ws, time.Now())
	resp.Body = &endOfBody{ReadCloser: resp.Body, at: freeSlot}
	return p.copyResponse(w, r, resp, lease.Model, start, rp)
}

// endOfBody calls at when its body ends whole (io.EOF; a body cut short
// ends with another error), each time a read says so: at is idempotent.
type endOfBody struct {
	io.ReadCloser
	at func()
}

func (b *endOfBody) Read(p []byte) (int, error) {
	n, err := b.ReadCloser.Read(p)
	if err == io.EOF {
		b.at()
	}
	return n, err
}

// leaseTable is the hive's list of requests it is serving: listed in its
// telemetry, and checked against each worker's slots. Requests that arrive
// for a full worker queue for it in arrival order: a standby lease the queen
// granted ahead of a free slot waits here, and takes the slot the moment a
// lease ends, without a round trip to the queen.
type leaseTable struct {
	mu      sync.Mutex
	leases  map[string]wsapi.LeaseInfo
	busy    map[string]int       // worker -> requests
	slots   map[string]int       // worker -> slots, from the last telemetry
	failing map[string]time.Time // worker -> until
	lastEnd map[string]time.Time // worker -> when its last lease ended
	// draining: workers being stopped, which take no new lease.
	draining map[string]bool
	// waiting: worker -> requests waiting for one of its slots, oldest
	// first; queued indexes them by lease so that a lease twice is refused
	// whether it runs or waits.
	waiting map[string][]*slotWaiter
	queued  map[string]*slotWaiter
	// changed, when set (by tests), is called under mu as each lease
	// starts, with its worker, and with "" once each change is whole.
	changed func(started string)
}

// slotWaiter is a request queued for a full worker's slot. Only the table
// (under its mu) moves it out of waitQueued; done is closed when it does.
type slotWaiter struct {
	lease wsapi.LeaseInfo
	state waitState
	done  chan struct{}
}

type waitState int

const (
	waitQueued  waitState = iota
	waitHanded            // given a slot: its lease is in leases
	waitRefused           // its worker vanished or is draining, or it gave up
)

// slotGrace is how long a lease for a full worker waits for a slot to end
// before the hive refuses it: the entry node releases a lease as soon as
// its client has the answer, and the queen may grant that slot again before
// this hive has finished with it.
const slotGrace = 100 * time.Millisecond

// hiveGrant is what serveLease needs of a lease's grant beyond the lease:
// whether it was granted ahead (wsapi.LeaseGrant.Standby), and the
// granting queen's term.
type hiveGrant struct {
	standby bool
	term    uint64
}

// standbyGrace is how long a standby lease waits for its worker's slot
// before the hive refuses it and its entry node asks for another. The queen
// grants ahead only for models whose requests end within a second, so a
// slot that takes this long is stuck; and it is well under the queen's
// LeaseStartTimeout, after which it would reclaim the lease as never
// started.
const standbyGrace = 5 * time.Second

// slotWaited counts a wait for a slot at this hive: in its metrics, and
// in the queue wait of the request's access-log line, on this node when it
// is the entry node (rp set), else on the entry node, told in a header.
func (p *Proxy) slotWaited(w http.ResponseWriter, r *http.Request, rp *reply, d time.Duration) {
	p.metrics.slotWait.Observe(d.Seconds())
	if rp != nil {
		if rec := recordOf(r); rec != nil {
			rec.queueWait += d
		}
		return
	}
	w.Header().Set(hdrSlotWait, strconv.FormatFloat(d.Seconds(), 'f', 6, 64))
}

// startQueued records l as served, unless its worker is unknown or
// draining or the lease is already known, waiting up to grace (and while
// ctx lasts) for a full worker's slot behind the requests already waiting
// for it; queued reports whether l waited in line.
func (a *leaseTable) startQueued(ctx context.Context, l wsapi.LeaseInfo, grace time.Duration) (ok, queued bool) {
	a.mu.Lock()
	ok, full := a.startLocked(l)
	if ok || !full || grace <= 0 || ctx.Err() != nil {
		a.notify("")
		a.mu.Unlock()
		return ok, false
	}
	w := &slotWaiter{lease: l, done: make(chan struct{})}
	a.waiting[l.Worker] = append(a.waiting[l.Worker], w)
	a.queued[l.LeaseID] = w
	a.notify("")
	a.mu.Unlock()

	t := time.NewTimer(grace)
	defer t.Stop()
	select {
	case <-w.done:
	case <-t.C:
	case <-ctx.Done():
	}
	// Whichever fired, the table may have handed the slot over meanwhile:
	// decide under mu, so that a slot is never lost to a request that gave
	// up, nor taken from one that got it in time.
	a.mu.Lock()
	defer a.mu.Unlock()
	defer a.notify("")
	switch w.state {
	case waitQueued:
		a.dequeueLocked(w)
		return false, true
	case waitHanded:
		if ctx.Err() != nil {
			// Its client is gone: nobody would use the slot, so the
			// next in line gets it now rather than after a failed
			// request.
			a.endLocked(l.LeaseID)
			return false, true
		}
		// Only the grace ran out, after the slot came: keep it.
		return true, true
	default:
		return false, true
	}
}

func newLeaseTable() *leaseTable {
	return &leaseTable{leases: map[string]wsapi.LeaseInfo{}, busy: map[string]int{}, slots: map[string]int{},
		failing: map[string]time.Time{}, lastEnd: map[string]time.Time{}, draining: map[string]bool{},
		waiting: map[string][]*slotWaiter{}, queued: map[string]*slotWaiter{}}
}

// startLocked starts l if a slot is free; full reports a refusal only for
// want of a slot, which includes others waiting for one: a newcomer does not
// overtake them.
func (a *leaseTable) startLocked(l wsapi.LeaseInfo) (ok, full bool) {
	slots, known := a.slots[l.Worker]
	if !known || a.draining[l.Worker] {
		return false, false
	}
	if _, dup := a.leases[l.LeaseID]; dup {
		return false, false
	}
	if _, dup := a.queued[l.LeaseID]; dup {
		return false, false
	}
	if a.busy[l.Worker] >= slots || len(a.waiting[l.Worker]) > 0 {
		return false, true
	}
	a.runLocked(l)
	return true, false
}

// runLocked records l as served on its worker's slot.
func (a *leaseTable) runLocked(l wsapi.LeaseInfo) {
	a.leases[l.LeaseID] = l
	a.busy[l.Worker]++
	a.notify(l.Worker)
}

// end frees id's slot; handed reports whether a waiting request took it.
func (a *leaseTable) end(id string) (handed bool) {
	a.mu.Lock()
	defer a.mu.Unlock()
	handed = a.endLocked(id)
	a.notify("")
	return handed
}

// endLocked frees id's slot, handing it to the oldest request waiting for
// its worker.
func (a *leaseTable) endLocked(id string) (handed bool) {
	l, ok := a.leases[id]
	if !ok {
		return false
	}
	delete(a.leases, id)
	if a.busy[l.Worker]--; a.busy[l.Worker] <= 0 {
		delete(a.busy, l.Worker)
	}
	a.lastEnd[l.Worker] = time.Now()
	return a.handOffLocked(l.Worker)
}

// handOffLocked gives worker's free slots to its oldest waiters. The lease
// is recorded here, not by the waiter once it wakes, so that busy never
// shows a slot free that is already promised.
func (a *leaseTable) handOffLocked(worker string) (handed bool) {
	for !a.draining[worker] && a.busy[worker] < a.slots[worker] {
		q := a.waiting[worker]
		if len(q) == 0 {
			return handed
		}
		w := q[0]
		q[0] = nil
		a.setQueueLocked(worker, q[1:])
		delete(a.queued, w.lease.LeaseID)
		w.state = waitHanded
		// It starts now: what it waited is not its worker's time on it
		// (the queen reads Since as when it started running).
		w.lease.Since = time.Now().UTC()
		a.runLocked(w.lease)
		close(w.done)
		handed = true
	}
	return handed
}

func (a *leaseTable) setQueueLocked(worker string, q []*slotWaiter) {
	if len(q) == 0 {
		delete(a.waiting, worker)
	} else {
		a.waiting[worker] = q
	}
}

// refuseLocked wakes worker's waiters with a refusal: it vanished or is
// draining, and no slot of it will come.
func (a *leaseTable) refuseLocked(worker string) {
	for _, w := range a.waiting[worker] {
		delete(a.queued, w.lease.LeaseID)
		w.state = waitRefused
		close(w.done)
	}
	delete(a.waiting, worker)
}

// dequeueLocked takes w, which gave up, out of its worker's queue.
func (a *leaseTable) dequeueLocked(w *slotWaiter) {
	worker := w.lease.Worker
	q := a.waiting[worker]
	for i := range q {
		if q[i] == w {
			q = append(q[:i], q[i+1:]...)
			break
		}
	}
	a.setQueueLocked(worker, q)
	delete(a.queued, w.lease.LeaseID)
	w.state = waitRefused
}

func (a *leaseTable) notify(started string) {
	if a.changed != nil {
		a.changed(started)
	}
}

// WorkerLeases reports the requests worker (group/instance) is serving and
// when its last lease ended (zero if none has): a hive unloads idle
// workers by it.
func (p *Proxy) WorkerLeases(worker string) (n int, lastEnd time.Time) {
	a := p.table
	a.mu.Lock()
	defer a.mu.Unlock()
	return a.busy[worker], a.lastEnd[worker]
}

// Drain makes worker take no new lease: it is being stopped once those it
// serves end.
func (p *Proxy) Drain(worker string) { p.table.drain(worker) }

func (a *leaseTable) drain(worker string) {
	a.mu.Lock()
	defer a.mu.Unlock()
	a.draining[worker] = true
	a.refuseLocked(worker)
	a.notify("")
}

func (a *leaseTable) markFailing(worker string, now time.Time) {
	a.mu.Lock()
	a.failing[worker] = now.Add(failingFor)
	a.mu.Unlock()
}

// report records this tick's workers (their slots) and marks them in place
// with their health; it returns the leases being served (not those
// waiting).
func (a *leaseTable) report(workers []wsapi.ProcessStats, now time.Time) []wsapi.LeaseInfo {
	a.mu.Lock()
	defer a.mu.Unlock()
	clear(a.slots)
	present := make(map[string]bool, len(workers))
	for i := range workers {
		present[workers[i].ID()] = true
	}
	// A worker that is gone forgets its past: another may take its port,
	// or its hive restart it there after a crash (reported loading, so
	// absent here), and that one has not failed anyone yet.
	for _, m := range []map[string]bool{a.draining} {
		for k := range m {
			if !present[k] {
				delete(m, k)
			}
		}
	}
	for k := range a.failing {
		if !present[k] {
			delete(a.failing, k)
		}
	}
	for k := range a.lastEnd {
		if !present[k] && a.busy[k] == 0 {
			delete(a.lastEnd, k)
		}
	}
	for i := range workers {
		w := &workers[i]
		key := w.ID()
		a.slots[key] = max(w.Slots, 1)
		if until, ok := a.failing[key]; ok {
			if now.Before(until) {
				w.Health = "failing"
			} else {
				delete(a.failing, key)
			}
		}
	}
	// Waiters of a vanished worker would otherwise sit out their grace
	// for a slot that cannot come; a worker given more slots takes its
	// waiters now rather than at its next lease's end.
	for worker := range a.waiting {
		if !present[worker] {
			a.refuseLocked(worker)
		} else {
			a.handOffLocked(worker)
		}
	}
	a.notify("")
	if len(a.leases) == 0 {
		return nil
	}
	out := make([]wsapi.LeaseInfo, 0, len(a.leases))
	for _, l := range a.leases {
		out = append(out, l)
	}
	return out
}
