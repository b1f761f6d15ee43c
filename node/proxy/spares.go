package proxy

import (
	"slices"
	"strconv"
	"sync/atomic"
	"time"

	"github.com/prometheus/client_golang/prometheus"

	"github.com/rbee/rbee/node/tenants"
	"github.com/rbee/rbee/wsapi"
)

// Spare leases (wsapi/spare.go): the entry node keeps, for each model its
// clients ask for, a pool of leases the queen granted ahead, and starts a
// request on one of them at once, without the round trip to the queen; when
// the request ends the lease goes back to the pool for the next, again
// without a message to the queen. The pool grows while requests find it
// empty (asking the queen in the background) and gives back what stays
// unused for a second; the queen lends only while nothing of the model
// waits, and takes the leases back as soon as something does.

const (
	// spareTTL: a spare lease not used within this goes back, so that
	// one never holds a slot long from a request elsewhere.
	spareTTL = time.Second
	// spareAskTimeout gives up on an unanswered ask (a queen from before
	// spare leases skips it) and lets the pool ask again.
	spareAskTimeout = 2 * time.Second
	// spareQuiet: after an answer with none, or a revoke, the pool asks
	// again no sooner than this; requests ask the queen meanwhile.
	spareQuiet = 100 * time.Millisecond
	// maxSparePools bounds the models (with tenants) pooled for at once:
	// model names come from clients.
	maxSparePools = 64
	// spareIdle: a pool unused for this long goes, when room is needed.
	spareIdle = 10 * time.Second
	// DefaultSpares is Config.Spares's default: enough for 64 requests
	// of one model at once through one entry node.
	DefaultSpares = 64
	// maxSpares bounds Config.Spares.
	maxSpares = 1024
)

// spareClass is what a pool's leases are for: one model, as clients name
// it, for one tenant and weight.
type spareClass struct {
	model, key string
	weight     float64
}

type sparePool struct {
	grants []heldSpare // idle, oldest first
	// held counts this session's leases of the pool, idle and in use;
	// want is how many to ask for when it runs dry, twice as many each
	// time, one fewer each time one goes back unused.
	held int
	want int
	// ended and ran: the uses that ended since the queen was last told,
	// and how long they ran in all.
	ended   int64
	ran     time.Duration
	asking  string // the ask in flight, "" none
	askedAt time.Time
	quiet   time.Time // no ask before then
	used    time.Time // last asked for by a request
}

type heldSpare struct {
	g  *wsapi.LeaseGrant // as the queen granted it
	at time.Time         // since when it waits in the pool
}

// claim is a use of a spare lease by a request, until it is released.
type claim struct {
	g    *wsapi.LeaseGrant
	cls  spareClass
	at   time.Time
	conv string
	gen  uint64 // the session it came on (LeaseClient.gen)
	// spoiled: its request failed on the worker; the lease is not
	// used again.
	spoiled bool
}

// spareStats counts what became of spare leases, for the metrics.
type spareStats struct {
	used, missed, unused, revoked atomic.Uint64
}

// SetSpares sets how many spare leases the pool of one model may hold, in
// use and idle; 0 turns them off.
func (lc *LeaseClient) SetSpares(n int) {
	lc.mu.Lock()
	lc.spareMax = min(max(n, 0), maxSpares)
	lc.mu.Unlock()
}

// spareable reports whether a may start on a spare lease: one that the
// queen would grant any worker of its model at once when nothing waits.
func spareable(a *Ask) bool {
	if a.On != (Placement{}) || len(a.Avoid) > 0 || len(a.Elsewhere) > 0 || a.Patient {
		return false
	}
	t := a.Tenant
	return t == nil || (t.MaxConcurrent == 0 && t.PerMinute == 0 && t.Class != tenants.Batch)
}

func classFor(a *Ask) spareClass {
	c := spareClass{model: a.Model}
	if a.Tenant != nil {
		c.key, c.weight = a.Tenant.Name, a.Tenant.Weight
	}
	return c
}

// takeSpare returns a spare lease for a, with a's own request id, or nil:
// a asks the queen then. A conversation's turn takes only a lease on the
// worker its last turn went to, when this node knows which.
func (lc *LeaseClient) takeSpare(a *Ask) *wsapi.LeaseGrant {
	if !spareable(a) {
		return nil
	}
	cls := classFor(a)
	now := time.Now()
	var fence uint64
	if lc.fence != nil { // outside mu: it takes the gossip's lock
		fence = lc.fence()
	}
	lc.mu.Lock()
	if lc.spareMax == 0 || lc.closed || lc.up == nil || !lc.up.Knows(wsapi.TypeLeaseSpareRequest) {
		lc.mu.Unlock()
		return nil
	}
	pool := lc.pools[cls]
	if pool == nil {
		if len(lc.pools) >= maxSparePools && !lc.dropIdlePoolsLocked(now) {
			lc.mu.Unlock()
			return nil
		}
		pool = &sparePool{}
		lc.pools[cls] = pool
	}
	pool.used = now
	var where string
	if a.Conversation != "" {
		// A later turn of a conversation this node has not served
		// asks the queen, which knows where the earlier ones went.
		if where, _ = lc.convs.get(a.Conversation); where == "" && !a.FirstTurn {
			lc.mu.Unlock()
			lc.stats.missed.Add(1)
			return nil
		}
	}
	if len(lc.claimed) >= maxClaimed {
		// Requests whose ends were never released: a leak's bound.
		lc.mu.Unlock()
		lc.stats.missed.Add(1)
		return nil
	}
	var g *wsapi.LeaseGrant
	var expired []string
	stale := 0
	kept := pool.grants[:0]
	for _, h := range pool.grants {
		switch {
		case h.g.Term < fence:
			// Lent by a queen that has been replaced, whose session
			// has not ended here yet: every hive refuses it, this
			// one without the request leaving the node, so that a
			// retry would take the next such lease, and the next.
			stale++
			pool.held--
		case now.Sub(h.at) >= lc.spareTTL:
			expired = append(expired, h.g.LeaseID) // as the sweep would
			pool.want = max(pool.want-1, 1)
			pool.held--
		case g == nil && (where == "" || where == h.g.Hive+"/"+h.g.Worker):
			g = h.g
		default:
			kept = append(kept, h)
		}
	}
	clear(pool.grants[len(kept):])
	pool.grants = kept
	var ask *wsapi.LeaseSpareRequest
	var notes *wsapi.Conversations
	if g == nil && len(pool.grants) == 0 {
		// Empty when asked: ask for more. (A lease in use comes back
		// when its request ends: taking the last one asks for none.)
		ask = lc.askSparesLocked(cls, pool, now)
	}
	u := lc.up
	if g != nil {
		seq := lc.seq.Add(1)
		cp := *g
		cp.RequestID = lc.prefix + strconv.FormatUint(seq, 36)
		cp.LeaseID = wsapi.SpareUseID(g.LeaseID, seq)
		lc.claimed[cp.LeaseID] = &claim{g: g, cls: cls, at: now, conv: a.Conversation, gen: lc.gen}
		if a.Conversation != "" && lc.noteConvLocked(a.Conversation, g) {
			// The queen did not grant this turn: it learns where
			// the conversation went, for its next turn through
			// another node.
			notes = &wsapi.Conversations{Type: wsapi.TypeConversations,
				Turns: []wsapi.ConversationWhere{{Conversation: a.Conversation, Hive: g.Hive, Worker: g.Worker}}}
		}
		g = &cp
	}
	lc.mu.Unlock()
	lc.stats.unused.Add(uint64(len(expired)))
	lc.stats.revoked.Add(uint64(stale))
	lc.giveBack(u, expired)
	if ask != nil {
		queue(u, ask)
	}
	if notes != nil {
		queue(u, notes)
	}
	if g != nil {
		lc.stats.used.Add(1)
	} else {
		lc.stats.missed.Add(1)
	}
	return g
}

// maxClaimed bounds the spare leases remembered as running.
const maxClaimed = 1 << 16

// askSparesLocked is the ask that tops pool up, nil when it is full, an ask
// is in flight, or it keeps quiet.
func (lc *LeaseClient) askSparesLocked(cls spareClass, pool *sparePool, now time.Time) *wsapi.LeaseSpareRequest {
	if pool.asking != "" {
		if now.Sub(pool.askedAt) < spareAskTimeout {
			return nil
		}
		delete(lc.asks, pool.asking)
		pool.asking = ""
	}
	if now.Before(pool.quiet) {
		return nil
	}
	// Twice as many as the last time it ran dry: a pool that keeps
	// running dry under a burst holds what the burst needs within a few
	// round trips, one that ran dry once holds one more.
	pool.want = min(max(2*pool.want, 1), lc.spareMax)
	n := min(pool.want-len(pool.grants), lc.spareMax-pool.held, wsapi.MaxSpares)
	if n <= 0 {
		return nil
	}
	id := lc.prefix + "s" + strconv.FormatUint(lc.seq.Add(1), 36)
	pool.asking, pool.askedAt = id, now
	lc.asks[id] = cls
	lc.armSweepLocked()
	return &wsapi.LeaseSpareRequest{Type: wsapi.TypeLeaseSpareRequest, RequestID: id, Model: cls.model, Count: n,
		Key: cls.key, Weight: cls.weight}
}

// dropIdlePoolsLocked drops the pools unused for spareIdle that hold no
// lease, idle or in use, and reports whether it dropped any.
func (lc *LeaseClient) dropIdlePoolsLocked(now time.Time) bool {
	dropped := false
	for cls, p := range lc.pools {
		if p.held == 0 && p.asking == "" && now.Sub(p.used) > spareIdle {
			delete(lc.pools, cls)
			dropped = true
		}
	}
	return dropped
}

// noteConvLocked remembers where conv's last turn went, so that its next
// turn takes a spare lease only there, and reports whether that is news.
func (lc *LeaseClient) noteConvLocked(conv string, g *wsapi.LeaseGrant) bool {
	where := g.Hive + "/" + g.Worker
	old, _ := lc.convs.get(conv)
	lc.convs.put(conv, where, recentConvs)
	return old != where
}

// noteGrant learns from a grant the queen made for a request where its
// conversation went.
func (lc *LeaseClient) noteGrant(conv string, g *wsapi.LeaseGrant) {
	if conv == "" || g == nil {
		return
	}
	lc.mu.Lock()
	if lc.spareMax > 0 {
		lc.noteConvLocked(conv, g)
	}
	lc.mu.Unlock()
}

// OnSpares takes the queen's answer to an ask into its pool; leases nobody
// asked for any more (the pool went, or the ask was given up) go back.
func (lc *LeaseClient) OnSpares(m *wsapi.LeaseSpares) {
	now := time.Now()
	lc.mu.Lock()
	cls, ok := lc.asks[m.RequestID]
	delete(lc.asks, m.RequestID)
	pool := lc.pools[cls]
	var back []string
	if !ok || pool == nil || lc.closed || pool.asking != m.RequestID {
		for _, g := range m.Grants {
			back = append(back, g.LeaseID)
		}
	} else {
		pool.asking = ""
		for i := range m.Grants {
			g := m.Grants[i]
			if _, revoked := lc.early[g.LeaseID]; revoked {
				delete(lc.early, g.LeaseID)
				back = append(back, g.LeaseID)
				pool.quiet = now.Add(spareQuiet)
				continue
			}
			pool.held++
			pool.grants = append(pool.grants, heldSpare{g: &g, at: now})
		}
		if len(m.Grants) == 0 {
			pool.quiet = now.Add(spareQuiet)
		}
		lc.armSweepLocked()
	}
	u := lc.up
	lc.mu.Unlock()
	lc.giveBack(u, back)
}

// OnRevoke gives back the revoked spare leases in a pool now, and those in
// use when their requests end: a request of their model waits at the queen.
func (lc *LeaseClient) OnRevoke(m *wsapi.LeaseRevoke) {
	ids := make(map[string]bool, len(m.LeaseIDs))
	for _, id := range m.LeaseIDs {
		ids[id] = true
	}
	now := time.Now()
	lc.mu.Lock()
	for _, c := range lc.claimed {
		if ids[c.g.LeaseID] {
			c.spoiled = true
			delete(ids, c.g.LeaseID)
		}
	}
	var back []string
	for _, pool := range lc.pools {
		kept := pool.grants[:0]
		for _, h := range pool.grants {
			if ids[h.g.LeaseID] {
				delete(ids, h.g.LeaseID)
				back = append(back, h.g.LeaseID)
				pool.quiet = now.Add(spareQuiet)
				pool.held--
				continue
			}
			kept = append(kept, h)
		}
		clear(pool.grants[len(kept):])
		pool.grants = kept
	}
	// What it revokes that this node does not hold yet: the queen sent
	// the revoke while the answer that grants them was on its way,
	// which it may overtake. It is kept for when that answer comes.
	for id := range ids {
		if len(lc.early) >= maxEarlyRevokes {
			break
		}
		lc.early[id] = now
	}
	u := lc.up
	lc.mu.Unlock()
	lc.stats.revoked.Add(uint64(len(back)))
	lc.giveBack(u, back)
}

// maxEarlyRevokes bounds the revoked leases remembered before they come;
// earlyRevokeFor is how long one is.
const (
	maxEarlyRevokes = 4096
	earlyRevokeFor  = 10 * time.Second
)

// giveBack releases spare leases unused.
func (lc *LeaseClient) giveBack(u Uplink, ids []string) {
	if u == nil {
		return
	}
	for _, id := range ids {
		queue(u, &wsapi.LeaseRelease{Type: wsapi.TypeLeaseRelease, LeaseID: id, Unused: true})
	}
}

// armSweepLocked makes sure the sweep runs while the pools hold leases or
// wait for answers.
func (lc *LeaseClient) armSweepLocked() {
	if lc.sweeping || lc.closed {
		return
	}
	lc.sweeping = true
	if lc.sweep == nil {
		lc.sweep = time.AfterFunc(lc.spareTTL/4, lc.sweepSpares)
	} else {
		lc.sweep.Reset(lc.spareTTL / 4)
	}
}

// sweepSpares gives back the spare leases held past spareTTL (the pool
// holds one fewer from then on) and gives up on asks unanswered.
func (lc *LeaseClient) sweepSpares() {
	now := time.Now()
	lc.mu.Lock()
	lc.sweeping = false
	var back []string
	busy := false
	for _, pool := range lc.pools {
		kept := pool.grants[:0]
		for _, h := range pool.grants {
			if now.Sub(h.at) >= lc.spareTTL {
				back = append(back, h.g.LeaseID)
				pool.want = max(pool.want-1, 1)
				pool.held--
				continue
			}
			kept = append(kept, h)
		}
		clear(pool.grants[len(kept):])
		pool.grants = kept
		if pool.asking != "" && now.Sub(pool.askedAt) >= spareAskTimeout {
			delete(lc.asks, pool.asking)
			pool.asking = ""
		}
		busy = busy || len(pool.grants) > 0 || pool.asking != ""
	}
	for id, at := range lc.early {
		if now.Sub(at) > earlyRevokeFor {
			delete(lc.early, id)
		}
	}
	busy = busy || len(lc.early) > 0
	if busy {
		lc.armSweepLocked()
	}
	u := lc.up
	uses := lc.stats.used.Load()
	m := &wsapi.LeaseUses{Type: wsapi.TypeLeaseUses, Uses: int64(uses - lc.usesTold)}
	lc.usesTold = uses
	for cls, pool := range lc.pools {
		if pool.ended > 0 && len(m.Models) < wsapi.MaxConversations {
			m.Models = append(m.Models, wsapi.ModelUses{Model: cls.model, Ended: pool.ended, RanUS: pool.ran.Microseconds()})
		}
		pool.ended, pool.ran = 0, 0
	}
	lc.mu.Unlock()
	lc.stats.unused.Add(uint64(len(back)))
	lc.giveBack(u, back)
	if (m.Uses > 0 || len(m.Models) > 0) && u != nil {
		// The queen counts them in the cluster's requests per second,
		// and in the model's time per request.
		queue(u, m)
	}
}

// dropSparesLocked forgets every pool's leases and asks: the session they
// came on ended, and the queen takes them back with it. Those in use are
// not used again (their claims are of an older gen).
func (lc *LeaseClient) dropSparesLocked() {
	lc.gen++
	for _, pool := range lc.pools {
		clear(pool.grants)
		pool.grants = pool.grants[:0]
		pool.asking, pool.held = "", 0
	}
	clear(lc.asks)
}

// endSpareLocked ends the use id of a spare lease: the lease goes back to
// its pool, or, when it may not be used again or the pool is full, the
// release to send is returned. done reports whether id was such a use.
func (lc *LeaseClient) endSpareLocked(id string, now time.Time) (msg *wsapi.LeaseRelease, done bool) {
	c, ok := lc.claimed[id]
	if !ok {
		if _, use := wsapi.SpareLeaseOf(id); use {
			// A use of another entry node's spare lease, which
			// this node served as its hive: that node returns it.
			return nil, true
		}
		return nil, false
	}
	delete(lc.claimed, id)
	pool := lc.pools[c.cls]
	if c.gen != lc.gen {
		pool = nil // a lease of an earlier session: not this pool's
	}
	if pool != nil && !c.spoiled && !lc.closed {
		// Back to the pool, however many are idle: one unused for
		// spareTTL goes back to the queen then. How long the request
		// ran goes with lease_uses; a release below carries it.
		pool.ended++
		pool.ran += now.Sub(c.at)
		pool.grants = append(pool.grants, heldSpare{g: c.g, at: now})
		lc.armSweepLocked()
		return nil, true
	}
	if pool != nil {
		pool.held--
	}
	return &wsapi.LeaseRelease{Type: wsapi.TypeLeaseRelease, LeaseID: c.g.LeaseID,
		RanUS: max(now.Sub(c.at).Microseconds(), 1), Conversation: c.conv}, true
}

// Spoil says that the request on lease id did not get its answer from the
// worker: a spare lease it used is released rather than used again, so
// that the next request asks the queen, which knows what ails the worker.
func (lc *LeaseClient) Spoil(id string) {
	base, use := wsapi.SpareLeaseOf(id)
	if !use {
		return
	}
	lc.mu.Lock()
	if c, ok := lc.claimed[id]; ok {
		c.spoiled = true
		lc.mu.Unlock()
		return
	}
	// Already back in its pool (this node is its hive, which ended it
	// first): take it out.
	var back []string
	for _, pool := range lc.pools {
		for i, h := range pool.grants {
			if h.g.LeaseID == base {
				pool.grants = slices.Delete(pool.grants, i, i+1)
				pool.held--
				back = append(back, base)
				break
			}
		}
	}
	u := lc.up
	lc.mu.Unlock()
	// Its uses, and their run times, went with lease_uses.
	lc.giveBack(u, back)
}

// queue queues msg on u, for a message nobody waits on; a queen that lets
// thousands pile up is not reading, and the session is dropped.
func queue(u Uplink, msg any) {
	b, err := wsapi.Encode(msg)
	if err == nil && u.Queue(b) != nil {
		u.Break()
	}
}

// spareCollectors export what became of spare leases.
func (lc *LeaseClient) spareCollectors() []prometheus.Collector {
	out := []prometheus.Collector{}
	for _, c := range []struct {
		outcome string
		n       *atomic.Uint64
	}{{"used", &lc.stats.used}, {"missed", &lc.stats.missed}, {"unused", &lc.stats.unused}, {"revoked", &lc.stats.revoked}} {
		out = append(out, prometheus.NewCounterFunc(prometheus.CounterOpts{Name: "rbee_lease_spares_total",
			Help:        "Requests that started on a spare lease (used) or found none (missed), and spare leases given back unused after a second (unused) or when the queen took them back (revoked).",
			ConstLabels: prometheus.Labels{"outcome": c.outcome}}, func() float64 { return float64(c.n.Load()) }))
	}
	return out
}
