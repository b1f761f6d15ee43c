package queen

import (
	"context"
	"strconv"
	"time"

	"github.com/rbee/rbee/gossip"
	"github.com/rbee/rbee/scheduler"
	"github.com/rbee/rbee/wsapi"
)

// startScheduling gives the new queen an empty scheduler. It knows no worker
// until the hives report (within a telemetry interval of their sessions), so
// it answers "unknown model" only once every live hive has reported, or
// WarmUpMax has passed; leases the hives list in their first reports are
// adopted, so no worker is oversubscribed across the failover.
func (q *Queen) startScheduling(now time.Time) {
	s := scheduler.New(scheduler.Config{
		QueueLimit:   q.cfg.QueueLimit,
		AffinityWait: q.cfg.AffinityWait,
		Standby:      q.cfg.GrantAhead,
		StaleAfter:   q.cfg.HiveTTL,
		ModelVRAMMB:  q.cfg.ModelVRAMMB,
		LeasePrefix:  q.cfg.Name + "." + strconv.FormatInt(now.UnixNano(), 36) + ".",
	})
	q.schedMu.Lock()
	if q.sched == nil {
		close(q.started)
	}
	q.sched = s
	// A queen that was queen before lists only what it heard this time:
	// the nodes reported the migrations in between to another.
	q.migrations.reset()
	q.warm, q.reported, q.warmBy = false, map[string]bool{}, now.Add(q.cfg.WarmUpMax)
	q.rateAt, q.rateGranted, q.rate = now, 0, 0
	q.schedMu.Unlock()
}

func (q *Queen) stopScheduling() {
	q.schedMu.Lock()
	if q.sched != nil {
		q.sched, q.started = nil, make(chan struct{})
	}
	q.schedMu.Unlock()
	q.spans.entryGone("")
}

// schedStartWait bounds how long a session waits for the scheduler of a
// node the election has just named queen; Run starts it within
// microseconds of the election, so running out means Run is not following
// the election at all.
const schedStartWait = 5 * time.Second

// awaitScheduling waits until this node schedules, and reports whether it
// does. The election names the node queen a moment before Run starts its
// scheduler, and a session served in between lost what its node sent
// first: lease requests without a scheduler are dropped, and a node asks
// again only on a new session (seen: seven requests waited 30 s for a
// queen that was there). False when the node is no longer queen, the
// queen closes, ctx ends or schedStartWait passes.
func (q *Queen) awaitScheduling(ctx context.Context) bool {
	bound := time.NewTimer(schedStartWait)
	defer bound.Stop()
	for {
		m, ok, changed := q.cfg.Members.WatchQueen()
		if !ok || m.Name != q.cfg.Name || q.closed() {
			return false
		}
		q.schedMu.Lock()
		running, started := q.sched != nil, q.started
		q.schedMu.Unlock()
		if running {
			return true
		}
		select {
		case <-started:
		case <-changed:
		case <-ctx.Done():
			return false
		case <-q.done:
			return false
		case <-bound.C:
			return false
		}
	}
}

// schedTick runs the scheduler's clock and delivers what it decided.
func (q *Queen) schedTick(now time.Time) {
	q.schedMu.Lock()
	if q.sched == nil {
		q.schedMu.Unlock()
		return
	}
	if !q.warm && (!now.Before(q.warmBy) || q.allHivesReportedLocked()) {
		q.warm = true
		q.sched.SetWarm(true)
	}
	fails := q.departedHivesLocked(now)
	grants, tickFails := q.sched.Tick(now)
	fails = append(fails, tickFails...)
	msgs := append(q.placeLocked(now), q.waitReportsLocked(now)...)
	if d := now.Sub(q.rateAt); d >= time.Second {
		g := q.sched.Granted()
		q.rate = float64(g-q.rateGranted) / d.Seconds()
		q.rateAt, q.rateGranted = now, g
	}
	revokes := q.sched.Revokes()
	q.schedMu.Unlock()
	q.deliver(grants, fails, "", now)
	q.sendAll(msgs, "")
	q.revoke(revokes, "")
}

// handle hands a message from peer (a node's session) to the scheduler. A
// telemetry report also gets each worker's state set in place.
func (q *Queen) handle(peer string, msg any, now time.Time) {
	if m, ok := msg.(*wsapi.UsageReport); ok {
		// usage accounting (usage.go) has its own lock: the scheduler's
		// is held only to see that this node schedules.
		q.schedMu.Lock()
		scheduling := q.sched != nil
		q.schedMu.Unlock()
		if scheduling {
			q.usage.update(peer, m, now)
		}
		return
	}
	if m, ok := msg.(*wsapi.Migration); ok {
		q.migrated(peer, m)
		return
	}
	var grants, spares []scheduler.Grant
	var fails []scheduler.Failure
	queued := false // a request waits: it may be the first for a cold model
	q.schedMu.Lock()
	s := q.sched
	if s == nil {
		q.schedMu.Unlock()
		if t, ok := msg.(*wsapi.HiveTelemetry); ok {
			setStates(t, nil)
		}
		return
	}
	switch m := msg.(type) {
	case *wsapi.HiveTelemetry:
		// A hive gossip has not told this queen of yet (it joined
		// through another node a moment ago) reports again within a
		// second: until then its workers get no grants, which entry
		// nodes could not deliver without its address.
		if q.memberHTTP(m.HiveID) != "" {
			s.UpdateModels(m.HiveID, hiveModels(m), now)
			grants = s.UpdateHive(m.HiveID, schedWorkers(m.Workers), hiveLeases(m.Leases), now)
			q.reported[m.HiveID] = true
		}
		setStates(m, s)
	case *wsapi.LeaseRequest:
		r := scheduler.Request{ID: m.RequestID, Entry: peer, Model: m.Model, VRAMMB: m.VRAMMB,
			Deadline: now.Add(time.Duration(m.WaitMS) * time.Millisecond), Hive: m.Hive, Worker: m.Worker, Progress: m.Progress,
			Key: m.Key, Weight: m.Weight, MaxConcurrent: m.MaxConcurrent, PerMinute: m.PerMinute, Conversation: m.Conversation,
			Arrived: now.Add(-time.Duration(m.WaitedMS) * time.Millisecond)}
		for _, a := range m.Avoid {
			r.Avoid = append(r.Avoid, scheduler.Avoid{Hive: a.Hive, Worker: a.Worker})
		}
		r.Elsewhere = m.Elsewhere
		q.spans.start(peer, m, now) // trace.go
		if m.Priority == wsapi.PriorityBatch {
			r.Class = scheduler.ClassBatch
		}
		g, err := s.Request(r, now)
		queued = g == nil && err == nil
		switch {
		case err != nil:
			fails = append(fails, scheduler.Failure{Request: r, Err: err.(*scheduler.Error)})
		case g != nil:
			grants = append(grants, *g)
		}
	case *wsapi.LeaseCancel:
		s.Cancel(m.RequestID)
		q.spans.withdrawn(m.RequestID, "the entry node withdrew it (its client went away, or the wait ran out there)")
	case *wsapi.LeaseRelease:
		grants = s.ReleaseSpare(m.LeaseID, scheduler.SpareUse{Unused: m.Unused, Ran: time.Duration(m.RanUS) * time.Microsecond,
			Conversation: m.Conversation}, now)
	case *wsapi.LeaseUses:
		s.NoteUses(m.Uses)
		for _, u := range m.Models {
			s.NoteRan(u.Model, u.Ended, time.Duration(u.RanUS)*time.Microsecond)
		}
	case *wsapi.Conversations:
		for _, c := range m.Turns {
			s.NoteConversation(c.Conversation, c.Hive+"/"+c.Worker)
		}
	case *wsapi.LeaseSpareRequest:
		spares = s.Spare(scheduler.Request{ID: m.RequestID, Entry: peer, Model: m.Model, Key: m.Key, Weight: m.Weight}, m.Count, now)
	}
	revokes := s.Revokes()
	var msgs []outMsg
	if _, report := msg.(*wsapi.HiveTelemetry); report || queued {
		// A report may free VRAM or end a load; a request may be the
		// first for a cold model: start what that allows now, not at
		// the next tick.
		msgs = q.placeLocked(now)
	}
	q.schedMu.Unlock()
	if m, ok := msg.(*wsapi.LeaseSpareRequest); ok {
		q.deliverSpares(peer, m.RequestID, spares, now)
	}
	q.deliver(grants, fails, peer, now)
	q.sendAll(msgs, peer)
	q.revoke(revokes, peer)
}

// deliverSpares answers an entry node's ask for spare leases with those
// granted, none when none were: it asks again later.
func (q *Queen) deliverSpares(peer, askID string, spares []scheduler.Grant, now time.Time) {
	out := &wsapi.LeaseSpares{Type: wsapi.TypeLeaseSpares, RequestID: askID}
	term := q.cfg.Members.Term()
	var orphans []string
	for _, g := range spares {
		addr := q.memberHTTP(g.Lease.Hive)
		if addr == "" {
			orphans = append(orphans, g.Lease.ID)
			continue
		}
		out.Grants = append(out.Grants, leaseGrant(g, addr, term))
	}
	var grants []scheduler.Grant
	if !q.sendTo(peer, out, true) {
		for _, g := range out.Grants {
			orphans = append(orphans, g.LeaseID)
		}
	}
	if len(orphans) > 0 {
		q.schedMu.Lock()
		if q.sched != nil {
			for _, id := range orphans {
				grants = append(grants, q.sched.ReleaseSpare(id, scheduler.SpareUse{Unused: true}, now)...)
			}
		}
		q.schedMu.Unlock()
	}
	q.deliver(grants, nil, "", now)
}

// leaseGrant is g's message to its entry node, for a hive at addr, under
// the queen's term.
func leaseGrant(g scheduler.Grant, addr string, term uint64) wsapi.LeaseGrant {
	return wsapi.LeaseGrant{Type: wsapi.TypeLeaseGrant, RequestID: g.Request.ID, LeaseID: g.Lease.ID,
		Hive: g.Lease.Hive, HiveAddr: addr, Worker: g.Lease.Worker, Model: g.Lease.Model, Term: term,
		Standby: g.Lease.Standby, Spare: g.Lease.Spare}
}

// revoke asks entry nodes to give back the spare leases they have not used:
// a request of their model waits.
func (q *Queen) revoke(revokes map[string][]string, from string) {
	for entry, ids := range revokes {
		for len(ids) > 0 {
			n := min(len(ids), wsapi.MaxRevoke)
			q.sendTo(entry, &wsapi.LeaseRevoke{Type: wsapi.TypeLeaseRevoke, LeaseIDs: ids[:n]}, entry == from)
			ids = ids[n:]
		}
	}
}

// modelNames is, for each refused request, the name the cluster serves its
// model under (scheduler.ModelName), which the entry node labels its metrics
// with.
func (q *Queen) modelNames(fails []scheduler.Failure) []string {
	if len(fails) == 0 {
		return nil
	}
	out := make([]string, len(fails))
	q.schedMu.Lock()
	defer q.schedMu.Unlock()
	if q.sched == nil {
		return out
	}
	for i, f := range fails {
		out[i] = q.sched.ModelName(f.Request.Model)
	}
	return out
}

// departedHivesLocked takes the hives that left the cluster or failed out of
// scheduling at once, rather than when their telemetry goes stale: their
// workers are gone, and requests only they could serve fail now, saying why.
func (q *Queen) departedHivesLocked(now time.Time) []scheduler.Failure {
	hives := q.sched.Hives()
	if len(hives) == 0 {
		return nil
	}
	live := map[string]bool{}
	for _, m := range q.cfg.Members.LiveMembers() {
		live[m.Name] = true
	}
	var fails []scheduler.Failure
	for _, h := range hives {
		if live[h] {
			continue
		}
		why := q.departureLocked(h)
		q.log.Info("hive departed; its workers take no more requests", "hive", h, "status", why)
		fails = append(fails, q.sched.HiveGone(h, why, now)...)
	}
	return fails
}

// allHivesReportedLocked reports whether every live member with the hive
// role has sent this queen a report.
func (q *Queen) allHivesReportedLocked() bool {
	for _, m := range q.cfg.Members.LiveMembers() {
		if m.HasRole(gossip.RoleHive) && !q.reported[m.Name] {
			return false
		}
	}
	return true
}

// entryGone withdraws the waiting requests of a node whose session ended: it
// asks again on its next session.
func (q *Queen) entryGone(peer string) {
	q.schedMu.Lock()
	if q.sched != nil {
		q.sched.CancelEntry(peer)
	}
	q.schedMu.Unlock()
	q.spans.entryGone(peer)
	q.dropSpares(peer)
}

// dropSpares takes back the spare leases of a node whose session ended, or
// was replaced by a newer one: the node dropped its pools with it. Those it
// started a request on go when their hives no longer list them.
func (q *Queen) dropSpares(peer string) {
	q.schedMu.Lock()
	if q.sched != nil {
		q.sched.DropSpares(peer)
	}
	q.schedMu.Unlock()
}

// deliver sends grants and refusals to the entry nodes' sessions. A grant
// for a node whose session is gone is released at once (the node asks again
// when it reconnects), which may grant the slot to someone else.
//
// Answers to from, the node whose message is being handled, are written in
// this goroutine (its session's reader: a slow peer only slows itself);
// answers to others are queued for their sessions' writers, so that no node
// can stall another's reads.
func (q *Queen) deliver(grants []scheduler.Grant, fails []scheduler.Failure, from string, now time.Time) {
	for len(grants) > 0 || len(fails) > 0 {
		var undeliverable []string
		var orphans []scheduler.Grant // on a hive that is no longer a member
		term := q.cfg.Members.Term()
		for _, g := range grants {
			addr := q.memberHTTP(g.Lease.Hive)
			if addr == "" {
				orphans = append(orphans, g)
				continue
			}
			msg := leaseGrant(g, addr, term)
			q.spans.granted(g, now) // trace.go
			if !q.sendTo(g.Request.Entry, &msg, g.Request.Entry == from) {
				undeliverable = append(undeliverable, g.Lease.ID)
			}
		}
		models := q.modelNames(fails)
		for i, f := range fails {
			q.spans.failed(f, now) // trace.go
			q.sendTo(f.Request.Entry, &wsapi.LeaseError{Type: wsapi.TypeLeaseError, RequestID: f.Request.ID,
				Status: f.Err.Status, ErrorType: f.Err.Type, Message: f.Err.Msg, RetryAfterMS: f.Err.RetryAfter.Milliseconds(),
				Model: models[i]}, f.Request.Entry == from)
		}
		grants, fails = nil, nil
		if len(undeliverable) == 0 && len(orphans) == 0 {
			return
		}
		q.schedMu.Lock()
		if q.sched != nil {
			// The entry node's session is gone: it asks again when it
			// reconnects, so the slot goes to whoever waits next.
			for _, id := range undeliverable {
				grants = append(grants, q.sched.Release(id, now)...)
			}
			// The hive left or failed after it last reported, before
			// the departure was noticed: take it out now, and ask again
			// for the request, which waits for another worker or fails
			// saying where its hive went.
			for _, g := range orphans {
				fails = append(fails, q.sched.HiveGone(g.Lease.Hive, q.departureLocked(g.Lease.Hive), now)...)
				switch again, err := q.sched.Request(g.Request, now); {
				case err != nil:
					fails = append(fails, scheduler.Failure{Request: g.Request, Err: err.(*scheduler.Error)})
				case again != nil:
					grants = append(grants, *again)
				}
			}
		}
		q.schedMu.Unlock()
	}
}

// departureLocked says how the member named name departed: "left",
// "failed", or "is no longer a member".
func (q *Queen) departureLocked(name string) string {
	for _, m := range q.cfg.Members.Members() {
		if m.Name == name && m.Status != gossip.StatusAlive {
			return string(m.Status)
		}
	}
	return "is no longer a member"
}

func (q *Queen) sendTo(peer string, msg any, inline bool) bool {
	b, err := wsapi.Encode(msg)
	if err != nil {
		return false
	}
	return q.out.send(peer, b, inline)
}

// setStates writes the queen's verdict on each worker of t: the scheduler's
// state rule over the leases the scheduler holds on it (or, without a
// scheduler, those the hive lists).
func setStates(t *wsapi.HiveTelemetry, s *scheduler.Scheduler) {
	pct := float64(scheduler.DefaultSaturatedPct)
	var listed map[string]int
	if s != nil {
		pct = s.SaturatedPct()
	} else {
		listed = leasesPerWorker(t.Leases)
	}
	for i := range t.Workers {
		w := &t.Workers[i]
		var leases int
		if s != nil {
			leases, _ = s.WorkerInUse(t.HiveID, w.ID())
		} else {
			leases = listed[w.ID()]
		}
		w.State, w.StateReason = scheduler.State(scheduler.Load{Fresh: true, Health: w.Health, HealthReason: w.HealthReason,
			Leases: leases, Slots: w.Slots, GPUUtilPct: w.GPUUtilPct}, pct)
	}
}

func schedWorkers(ws []wsapi.ProcessStats) []scheduler.Worker {
	out := make([]scheduler.Worker, 0, len(ws))
	for i := range ws {
		w := &ws[i]
		model := ""
		if w.Model != nil {
			model = *w.Model
		}
		out = append(out, scheduler.Worker{Name: w.ID(), Model: model, Models: w.Models, Aliases: w.Aliases, Slots: w.Slots,
			VRAMUsedMB: w.VRAMMB, VRAMTotalMB: w.TotalVRAMMB, GPUUtilPct: w.GPUUtilPct, Healthy: w.Health == "",
			Down: w.Health == scheduler.HealthDown, DownReason: w.HealthReason})
	}
	return out
}

func hiveLeases(ls []wsapi.LeaseInfo) []scheduler.HiveLease {
	if len(ls) == 0 {
		return nil
	}
	out := make([]scheduler.HiveLease, len(ls))
	for i, l := range ls {
		out[i] = scheduler.HiveLease{ID: l.LeaseID, Worker: l.Worker, Model: l.Model, Entry: l.Entry, RequestID: l.RequestID, Since: l.Since}
	}
	return out
}

// Queues is each model's queue for the feed and /v1/cluster, and the leases
// granted per second lately; empty while not queen.
func (q *Queen) Queues(now time.Time) ([]wsapi.QueueStats, float64) {
	q.schedMu.Lock()
	defer q.schedMu.Unlock()
	if q.sched == nil {
		return []wsapi.QueueStats{}, 0
	}
	ms := q.sched.Models(now)
	cat := q.registry.catalogByModel()
	out := make([]wsapi.QueueStats, 0, len(ms))
	for _, m := range ms {
		c := cat[m.Model]
		qs := wsapi.QueueStats{Model: m.Model, Aliases: m.Aliases, Waiting: m.Waiting, Leases: m.Leases, Slots: m.Slots,
			State: m.State, Reason: m.Reason, Hives: m.Hives, LoadingHive: m.Loading,
			ServiceMS: m.Service.Milliseconds(), ETAMS: m.ETA.Milliseconds(),
			VRAMMB: c.VRAMMB, VRAMSource: c.VRAMSource, Facts: c.Facts}
		if m.Loading != "" {
			qs.LoadingMS = now.Sub(m.LoadingSince).Milliseconds()
		}
		out = append(out, qs)
	}
	return out, q.rate
}
