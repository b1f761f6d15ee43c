package proxy

import (
	"bytes"
	"context"
	"fmt"
	"io"
	"net/http"
	"strconv"
	"strings"
	"sync/atomic"
	"time"

	"github.com/rbee/rbee/node/api"
	"github.com/rbee/rbee/wsapi"
)

// Headers from the entry node to the hive naming the lease.
const (
	hdrLease   = "X-Rbee-Lease"
	hdrWorker  = "X-Rbee-Worker"
	hdrModel   = "X-Rbee-Model"
	hdrEntry   = "X-Rbee-Entry"
	hdrRequest = "X-Rbee-Request"
	hdrTerm    = "X-Rbee-Term"
	// hdrStandby marks a standby lease (wsapi.LeaseGrant.Standby): the
	// hive holds it until its worker has a free slot.
	hdrStandby = "X-Rbee-Standby"
	// hdrSlotWait on a hive's answer is how long, in seconds, the request
	// waited there for its worker's slot.
	hdrSlotWait = "X-Rbee-Slot-Wait"
	// hdrRetry on a hive's 503 says it did not start the request (the
	// worker is full, gone or unreachable): the entry node may ask for
	// another lease.
	hdrRetry = "X-Rbee-Retry"
	// hdrUnserved on any other refusal of the hive says it never took
	// up the lease, so it will not release it either: the entry node
	// does.
	hdrUnserved = "X-Rbee-Unserved"
)

// maxAttempts bounds how often one client request is tried on another worker
// after a hive refused it or could not be reached before any byte of the
// answer was sent.
const maxAttempts = 3

// HandleInference is the entry node: it asks the queen for a lease, then
// proxies to the hive that owns the worker (or, when that is this node,
// straight to the worker).
func (p *Proxy) HandleInference(w http.ResponseWriter, r *http.Request) {
	// A key's max_concurrent is counted cluster-wide at the queen, which
	// hears of a request only once its body is read; but one over it at
	// this node alone is over it cluster-wide, and is refused before it
	// holds any body memory.
	t := tenantOf(r)
	if n, ok := p.capped.enter(t); !ok {
		w.Header().Set("Retry-After", "1")
		p.Fail(w, r, "", http.StatusTooManyRequests, "rate_limit_exceeded",
			fmt.Sprintf("key %s has %d requests arriving, waiting or running at this node, its max_concurrent; retry when one ends", t.Name, n))
		return
	}
	defer p.capped.leave(t)
	a, ok := p.admit(w, r)
	p.admitted(r, &a, ok) // observe.go
	if !ok {
		return
	}
	defer a.release()
	// The keep-alive wraps the tap, so that what it writes (comments, a
	// late error event) passes through the tap; deferred, it finishes
	// first, while the tap still reads.
	var tap *responseTap
	if r.URL.Path == api.PathResponses {
		tap = &responseTap{ResponseWriter: w, ids: p.responses}
		defer tap.finish()
		w = tap
	}
	var ka *keepAlive
	if a.stream {
		ka = &keepAlive{ResponseWriter: w, model: a.model}
		defer ka.finish()
		w = ka
	}
	p.tryWorkers(w, r, &a, tap, ka)
}

// tryWorkers asks for a lease for a and forwards the request under it; when
// the worker could not take it and nothing was sent, it releases that lease
// and tries another worker, up to maxAttempts; when a stream broke off
// mid-way, it continues it on another worker (migrate.go). w is the
// client's, wrapped by tap and ka where they are not nil.
func (p *Proxy) tryWorkers(w http.ResponseWriter, r *http.Request, a *admission, tap *responseTap, ka *keepAlive) {
	rp := &reply{w: w, strip: a.stripUsage, mig: p.newMigration(r, a)}
	r = withUsage(r, a.stripUsage, 0)
	defer func() {
		if rp.report != nil {
			// The continuation ended, or its client went away,
			// before any text of it.
			if rp.mig.ended() {
				p.migrated(rp)
			} else {
				p.migrationFailed(rp, "the client went away")
			}
		}
		p.replied(r, rp) // observe.go
		if rp.tap != nil {
			p.recordUsage(r, rp.model, rp.tap, rp.whole && rp.status < 400, rp.migrated)
			rp.tap.free()
		}
	}()
	on, body := a.on, a.body
	for retries := 0; ; {
		g, ok := p.askLease(w, r, a, on, ka, rp)
		if !ok {
			p.migrationFailed(rp, "no worker could take the continuation")
			return
		}
		if !rp.started {
			// The wait counts until the first lease.
			r = withUsage(r, a.stripUsage, time.Since(a.start))
		}
		if on != (Placement{}) && (g.Hive != on.Hive || g.Worker != on.Worker) {
			p.log.Debug("the worker that made the previous response is gone; another serves the follow-up",
				"previous_response_id", a.previousID, "hive", on.Hive, "worker", on.Worker, "granted", g.Hive+"/"+g.Worker)
		}
		if tap != nil {
			tap.at = Placement{Hive: g.Hive, Worker: g.Worker}
		}
		if rp.report != nil {
			rp.report.To = g.Hive + "/" + g.Worker
		}
		o, away := p.forward(w, r, body, g, a.start, rp)
		if o != outcomeDone {
			p.leases.Spoil(g.LeaseID) // spares.go
		}
		p.leases.Release(g.LeaseID) // a second release is ignored
		if r.Context().Err() != nil {
			// The client went away: no new lease for it. Counted
			// here when nothing was answered, whichever hop
			// noticed: on this node's own hive too.
			if !rp.started {
				p.metrics.requests.WithLabelValues(keyLabel(r), g.Model, "499").Inc()
			}
			return
		}
		if len(rp.avoid) < wsapi.MaxAvoid && away.Hive != "" {
			rp.avoid = append(rp.avoid, away)
			if away.Worker != "" && o == outcomeBroken && len(rp.elsewhere) < wsapi.MaxAvoid {
				// Its hive lives, but what broke the worker (a
				// GPU fault, memory) may break its neighbours.
				rp.elsewhere = append(rp.elsewhere, away.Hive)
			}
		}
		on = Placement{} // that worker could not serve it: any will do now
		switch o {
		case outcomeDone:
			return
		case outcomeBroken:
			next, ok := p.migrate(rp, g)
			if !ok {
				return
			}
			body = next
			continue
		}
		if retries++; retries == maxAttempts {
			p.migrationFailed(rp, fmt.Sprintf("%d workers in a row could not take the continuation", retries))
			p.failReply(w, r, rp, g.Model, http.StatusServiceUnavailable, "worker_unavailable",
				fmt.Sprintf("model %q: %d workers in a row could not take the request", a.model, retries))
			return
		}
		p.log.Debug("retrying on another worker", "model", a.model, "hive", g.Hive, "worker", g.Worker)
	}
}

// askLease asks the queen for a lease on a worker for a, on the worker on
// when it is not the zero Placement, and counts the wait. On false there is
// none: the client went away, or has had the queen's refusal.
func (p *Proxy) askLease(w http.ResponseWriter, r *http.Request, a *admission, on Placement, ka *keepAlive, rp *reply) (*wsapi.LeaseGrant, bool) {
	waitStart := time.Now()
	ls, tp := p.startLeaseSpan(r, a.model) // trace.go
	var onWait func(*wsapi.LeaseWait)
	if ka != nil {
		onWait = ka.start(waitStart)
	}
	ask := Ask{Model: a.model, On: on, Wait: p.cfg.QueueTimeout, OnWait: onWait, Tenant: a.tenant, Arrived: a.start, Conversation: a.conv, FirstTurn: a.firstTurn, Avoid: rp.avoid, Elsewhere: rp.elsewhere, Trace: tp}
	g, lerr, err := p.leases.Ask(r.Context(), ask)
	if err == nil && lerr != nil && lerr.ErrorType == ErrTypeQueenUnreachable {
		if ka != nil {
			ka.stop()
		}
		// A stream under way stays with this node: a peer would
		// answer it from the start.
		if !rp.started && p.relayToPeer(w, r, a) {
			return nil, false
		}
		if r.Header.Get(hdrRelayedBy) != "" && !rp.started {
			// The node that relayed it here tries another peer.
			w.Header().Set(hdrRetry, "1")
		} else {
			// No peer took it: they cannot reach the queen either,
			// which is then most likely gone, and the next one is
			// worth the rest of the wait.
			if ka != nil {
				onWait = ka.start(waitStart)
				ask.OnWait = onWait
			}
			ask.Patient, ask.Wait = true, max(p.cfg.QueueTimeout-time.Since(waitStart), 0)
			g, lerr, err = p.leases.Ask(r.Context(), ask)
		}
	}
	if ka != nil {
		ka.stop()
	}
	p.leased(r, ls, waitStart, g, lerr) // observe.go
	if err != nil {
		p.metrics.requests.WithLabelValues(keyLabel(r), p.labels.of(a.model), "499").Inc()
		return nil, false // the client went away while waiting
	}
	// Metrics name the model as the queen says it is served (a bounded
	// set), never as asked.
	if lerr == nil {
		p.labels.learn(g.Model)
		p.metrics.queueWait.WithLabelValues(g.Model).Observe(time.Since(waitStart).Seconds())
		return g, true
	}
	p.labels.learn(lerr.Model)
	label := lerr.Model
	if label == "" {
		label = p.labels.of(a.model) // this node's own refusal, or nothing answers to it
	}
	if lerr.Status != http.StatusNotFound {
		p.metrics.queueWait.WithLabelValues(label).Observe(time.Since(waitStart).Seconds())
	}
	if lerr.RetryAfterMS > 0 {
		w.Header().Set("Retry-After", strconv.FormatInt(max((lerr.RetryAfterMS+999)/1000, 1), 10))
	}
	p.failReply(w, r, rp, label, lerr.Status, lerr.ErrorType, lerr.Message)
	return nil, false
}

// failReply is Fail for a request that may be under way: a stream whose
// continuation found no worker has been counted with its first answer's
// status, and gets the error as its last event (keepalive.go).
func (p *Proxy) failReply(w http.ResponseWriter, r *http.Request, rp *reply, model string, status int, typ, msg string) {
	if rp.started {
		WriteError(w, status, typ, msg)
		return
	}
	p.Fail(w, r, model, status, typ, msg)
}

// Fail answers an inference client with an error and counts it. model is
// the request's label (a served name, labelOther, or "" when the request
// named none): never a client's spelling, which would let clients grow the
// metrics without bound.
func (p *Proxy) Fail(w http.ResponseWriter, r *http.Request, model string, status int, typ, msg string) {
	p.failed(r, model) // observe.go
	p.metrics.requests.WithLabelValues(keyLabel(r), model, strconv.Itoa(status)).Inc()
	WriteError(w, status, typ, msg)
}

// forward sends the request under lease g and streams the answer back. It
// reports what became of the answer and, when the worker did not serve it
// whole, where its next attempt must not go: the worker, or the hive when
// this node could not reach it.
func (p *Proxy) forward(w http.ResponseWriter, r *http.Request, body []byte, g *wsapi.LeaseGrant, start time.Time, rp *reply) (outcome, wsapi.Placement) {
	lease := wsapi.LeaseInfo{LeaseID: g.LeaseID, Worker: g.Worker, Model: g.Model, Entry: p.cfg.Name, RequestID: g.RequestID}
	worker, hive := wsapi.Placement{Hive: g.Hive, Worker: g.Worker}, wsapi.Placement{Hive: g.Hive}
	if g.Hive == p.cfg.Name {
		if p.staleGrant(g.Term) {
			return outcomeRetry, wsapi.Placement{}
		}
		return p.serveLease(w, r, r.URL.Path, bytes.NewReader(body), lease, hiveGrant{standby: g.Standby, term: g.Term}, start, rp), worker
	}
	// The request to the hive ends when the cluster declares the hive
	// dead: a hive cut off mid-stream would otherwise stall the client
	// for as long as the cut lasts.
	ctx, cancel := context.WithCancel(r.Context())
	defer cancel()
	gone := p.cfg.Members.WatchMember(g.Hive)
	var declared atomic.Bool
	go func() {
		select {
		case <-gone:
			declared.Store(true)
			cancel()
		case <-ctx.Done():
		}
	}()
	req, err := http.NewRequestWithContext(ctx, http.MethodPost, p.cfg.Scheme+"://"+g.HiveAddr+api.PathHiveProxy+r.URL.Path, bytes.NewReader(body))
	if err != nil {
		return outcomeRetry, hive
	}
	copyRequestHeaders(req.Header, r.Header)
	req.Header.Set(hdrLease, g.LeaseID)
	req.Header.Set(hdrWorker, g.Worker)
	req.Header.Set(hdrModel, g.Model)
	req.Header.Set(hdrEntry, p.cfg.Name)
	req.Header.Set(hdrRequest, g.RequestID)
	req.Header.Set(hdrTerm, strconv.FormatUint(g.Term, 10))
	if g.Standby {
		req.Header.Set(hdrStandby, "1")
	}
	hs := p.startHopSpan(r, req, g) // trace.go
	defer endSpan(hs)
	resp, err := p.hops.RoundTrip(req)
	if err != nil {
		if r.Context().Err() != nil {
			// The hive may never have got the request: release the
			// lease here too (a second release is ignored).
			p.leases.Release(g.LeaseID)
			return outcomeDone, wsapi.Placement{}
		}
		p.log.Warn("hive unreachable", "hive", g.Hive, "addr", g.HiveAddr, "err", err)
		return outcomeRetry, hive
	}
	defer resp.Body.Close()
	if v := resp.Header.Get(hdrSlotWait); v != "" {
		if d, err := strconv.ParseFloat(v, 64); err == nil && d > 0 && d < wsapi.MaxWait.Seconds() {
			if rec := recordOf(r); rec != nil {
				rec.queueWait += time.Duration(d * float64(time.Second))
			}
		}
	}
	if resp.StatusCode == http.StatusServiceUnavailable && resp.Header.Get(hdrRetry) != "" {
		_, _ = io.Copy(io.Discard, io.LimitReader(resp.Body, 64<<10))
		return outcomeRetry, worker
	}
	unserved := resp.Header.Get(hdrUnserved) != ""
	if unserved {
		p.leases.Spoil(g.LeaseID) // spares.go
		p.leases.Release(g.LeaseID)
	}
	o := p.copyResponse(w, r, resp, g.Model, start, rp)
	if o != outcomeDone {
		p.leases.Spoil(g.LeaseID)
	}
	if !unserved {
		// The hive releases the lease too, but after the client may
		// already have its answer and sent the next request: released
		// here first, on this node's session, the queen sees it before
		// that request (a key at its max_concurrent is not refused).
		// The second release is ignored.
		p.leases.Release(g.LeaseID)
	}
	if o == outcomeBroken && declared.Load() {
		rp.broke = "the cluster declared hive " + g.Hive + " dead"
		return o, hive
	}
	return o, worker
}

// modelObject is one entry of /v1/models, in OpenAI's shape.
//
// The fields after OpenAI's say where the model stands in the cluster (see
// wsapi.QueueStats): "loaded", "loading", "available" (a hive can start it
// on demand) or "unavailable" (with why), the hives that can start it, and
// the slots serving it now. Clients read the fields they know.
type modelObject struct {
	ID      string `json:"id"`
	Object  string `json:"object"`
	Created int64  `json:"created"`
	OwnedBy string `json:"owned_by"`
	// Aliases are the workers' own names for the model (a llama-server's
	// file name): requests may use them. AliasOf is set instead when the
	// object was retrieved by an alias.
	Aliases []string `json:"aliases,omitempty"`
	AliasOf string   `json:"alias_of,omitempty"`
	State   string   `json:"state,omitempty"`
	Reason  string   `json:"reason,omitempty"`
	Hives   []string `json:"hives,omitempty"`
	Slots   int      `json:"slots,omitempty"`
	// VRAMMB is what a replica needs (VRAMSource: "learned",
	// "configured", "gguf", "safetensors", "size"); Facts what its files
	// say (wsapi.ModelFacts).
	VRAMMB     uint64            `json:"vram_mb,omitempty"`
	VRAMSource string            `json:"vram_source,omitempty"`
	Facts      *wsapi.ModelFacts `json:"facts,omitempty"`
}

// servedModels lists the models fresh workers serve now and those a hive
// can start on demand, those r's key may use: a tenant sees no model that
// would answer it 403.
func (p *Proxy) servedModels(r *http.Request) ([]modelObject, error) {
	qs, err := p.cfg.Queues.Queues(r.Context())
	if err != nil {
		return nil, err
	}
	t := tenantOf(r)
	out := []modelObject{}
	for _, q := range qs {
		if (q.Slots > 0 || len(q.Hives) > 0) && t.Allows(q.Model) {
			out = append(out, modelObject{ID: q.Model, Object: "model", Created: p.cfg.Start.Unix(), OwnedBy: "rbee", Aliases: q.Aliases,
				State: q.State, Reason: q.Reason, Hives: q.Hives, Slots: q.Slots,
				VRAMMB: q.VRAMMB, VRAMSource: q.VRAMSource, Facts: q.Facts})
		}
	}
	return out, nil
}

// HandleModels answers GET /v1/models: every model the cluster serves that
// the caller's key may use.
func (p *Proxy) HandleModels(w http.ResponseWriter, r *http.Request) {
	ms, err := p.servedModels(r)
	if err != nil {
		WriteError(w, http.StatusServiceUnavailable, "no_queen", err.Error())
		return
	}
	WriteJSON(w, struct {
		Object string        `json:"object"`
		Data   []modelObject `json:"data"`
	}{Object: "list", Data: ms})
}

// HandleModel answers GET /v1/models/{model}, which some clients call to
// check a model before using it.
func (p *Proxy) HandleModel(w http.ResponseWriter, r *http.Request) {
	id := r.PathValue("model")
	ms, err := p.servedModels(r)
	if err != nil {
		WriteError(w, http.StatusServiceUnavailable, "no_queen", err.Error())
		return
	}
	for _, m := range ms {
		if m.ID == id {
			WriteJSON(w, m)
			return
		}
	}
	// An alias answers as itself, as the worker it names would, saying
	// what the cluster calls it; a tenant's globs apply to the name asked,
	// as they do to requests.
	for _, m := range ms {
		for _, a := range m.Aliases {
			if strings.EqualFold(a, id) && tenantOf(r).Allows(id) {
				m.ID, m.AliasOf, m.Aliases = id, m.ID, nil
				WriteJSON(w, m)
				return
			}
		}
	}
	p.Fail(w, r, labelOther, http.StatusNotFound, "model_not_found", fmt.Sprintf("model %q is not served by this cluster", TruncateText(id, 200)))
}
