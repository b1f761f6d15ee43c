package proxy

import (
	"bytes"
	"context"
	"io"
	"net/http"
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
	if p.serveLease(w, r, path, bytes.NewReader(body), lease, time.Now(), nil) == outcomeRetry {
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
func (p *Proxy) serveLease(w http.ResponseWriter, r *http.Request, path string, body io.Reader, lease wsapi.LeaseInfo, start time.Time, rp *reply) outcome {
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
	if !p.table.startSoon(r.Context(), lease, slotGrace) {
		return outcomeRetry
	}
	defer func() {
		p.table.end(lease.LeaseID)
		p.leases.Release(lease.LeaseID)
	}()
	req, err := http.NewRequestWithContext(r.Context(), http.MethodPost, ep+path, body)
	if err != nil {
		return outcomeRetry
	}
	copyRequestHeaders(req.Header, r.Header)
	ws := p.startWorkerSpan(r, req, lease) // trace.go
	defer endSpan(ws)
	resp, err := p.client.Do(req)
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
	return p.copyResponse(w, r, resp, lease.Model, start, rp)
}

// leaseTable is the hive's list of requests it is serving: listed in its
// telemetry, and checked against each worker's slots.
type leaseTable struct {
	mu      sync.Mutex
	leases  map[string]wsapi.LeaseInfo
	busy    map[string]int       // worker -> requests
	slots   map[string]int       // worker -> slots, from the last telemetry
	failing map[string]time.Time // worker -> until
	lastEnd map[string]time.Time // worker -> when its last lease ended
	// draining: workers being stopped, which take no new lease.
	draining map[string]bool
	// ended is closed (and replaced) whenever a lease ends.
	ended chan struct{}
}

// slotGrace is how long a lease for a full worker waits for a slot to end
// before the hive refuses it: the entry node releases a lease as soon as
// its client has the answer, and the queen may grant that slot again before
// this hive has finished with it.
const slotGrace = 100 * time.Millisecond

// startSoon is start, waiting up to grace for a full worker's slot.
func (a *leaseTable) startSoon(ctx context.Context, l wsapi.LeaseInfo, grace time.Duration) bool {
	t := time.NewTimer(grace)
	defer t.Stop()
	for {
		a.mu.Lock()
		ok, full := a.startLocked(l)
		ended := a.ended
		a.mu.Unlock()
		if ok || !full {
			return ok
		}
		select {
		case <-ended:
		case <-t.C:
			return false
		case <-ctx.Done():
			return false
		}
	}
}

func newLeaseTable() *leaseTable {
	return &leaseTable{leases: map[string]wsapi.LeaseInfo{}, busy: map[string]int{}, slots: map[string]int{},
		failing: map[string]time.Time{}, lastEnd: map[string]time.Time{}, draining: map[string]bool{}, ended: make(chan struct{})}
}

// start records l, unless its worker is unknown, draining or has no free
// slot, or the lease is already being served.
func (a *leaseTable) start(l wsapi.LeaseInfo) bool {
	a.mu.Lock()
	defer a.mu.Unlock()
	ok, _ := a.startLocked(l)
	return ok
}

// startLocked is start; full reports a refusal only for want of a slot.
func (a *leaseTable) startLocked(l wsapi.LeaseInfo) (ok, full bool) {
	slots, known := a.slots[l.Worker]
	if !known || a.draining[l.Worker] {
		return false, false
	}
	if _, dup := a.leases[l.LeaseID]; dup {
		return false, false
	}
	if a.busy[l.Worker] >= slots {
		return false, true
	}
	a.leases[l.LeaseID] = l
	a.busy[l.Worker]++
	return true, false
}

func (a *leaseTable) end(id string) {
	a.mu.Lock()
	defer a.mu.Unlock()
	l, ok := a.leases[id]
	if !ok {
		return
	}
	delete(a.leases, id)
	if a.busy[l.Worker]--; a.busy[l.Worker] <= 0 {
		delete(a.busy, l.Worker)
	}
	a.lastEnd[l.Worker] = time.Now()
	close(a.ended)
	a.ended = make(chan struct{})
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
func (p *Proxy) Drain(worker string) {
	a := p.table
	a.mu.Lock()
	a.draining[worker] = true
	a.mu.Unlock()
}

func (a *leaseTable) markFailing(worker string, now time.Time) {
	a.mu.Lock()
	a.failing[worker] = now.Add(failingFor)
	a.mu.Unlock()
}

// report records this tick's workers (their slots) and marks them in place
// with their health; it returns the leases being served.
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
	if len(a.leases) == 0 {
		return nil
	}
	out := make([]wsapi.LeaseInfo, 0, len(a.leases))
	for _, l := range a.leases {
		out = append(out, l)
	}
	return out
}
