package node

import (
	"context"
	"errors"
	"strconv"
	"time"

	"github.com/rbee/rbee/scheduler"
	"github.com/rbee/rbee/wsapi"
)

// schedTickInterval is how often the queen's scheduler looks at deadlines
// and reclaims: a 503 comes at most this late.
const schedTickInterval = 100 * time.Millisecond

// queenSched is the queen's scheduler: nil while this node is not queen.
// The scheduler is pure and not safe for concurrent use; schedMu guards it.

// startScheduling gives the new queen an empty scheduler. It knows no worker
// until the hives report (within a telemetry interval), so it answers
// "unknown model" only after warmUp; leases the hives list in their first
// reports are adopted, so no worker is oversubscribed across the failover.
func (n *Node) startScheduling(now time.Time) {
	s := scheduler.New(scheduler.Config{
		QueueLimit:  n.cfg.QueueLimit,
		StaleAfter:  n.cfg.HiveTTL,
		ModelVRAMMB: n.cfg.ModelVRAMMB,
		LeasePrefix: n.cfg.Name + "." + strconv.FormatInt(now.UnixNano(), 36) + ".",
	})
	n.schedMu.Lock()
	n.sched = s
	n.warmAt = now.Add(n.cfg.HiveTTL)
	n.rateAt, n.rateGranted, n.rate = now, 0, 0
	n.schedMu.Unlock()
}

func (n *Node) stopScheduling() {
	n.schedMu.Lock()
	n.sched = nil
	n.schedMu.Unlock()
}

// schedTick runs the scheduler's clock and delivers what it decided.
func (n *Node) schedTick(now time.Time) {
	n.schedMu.Lock()
	if n.sched == nil {
		n.schedMu.Unlock()
		return
	}
	if !now.Before(n.warmAt) {
		n.sched.SetWarm(true)
	}
	grants, fails := n.sched.Tick(now)
	if d := now.Sub(n.rateAt); d >= time.Second {
		g := n.sched.Granted()
		n.rate = float64(g-n.rateGranted) / d.Seconds()
		n.rateAt, n.rateGranted = now, g
	}
	n.schedMu.Unlock()
	n.deliver(grants, fails, "")
}

// schedule hands a message from peer (a node's session) to the scheduler.
func (n *Node) schedule(peer string, msg any, now time.Time) {
	var grants []scheduler.Grant
	var fails []scheduler.Failure
	n.schedMu.Lock()
	s := n.sched
	if s == nil {
		n.schedMu.Unlock()
		return
	}
	switch m := msg.(type) {
	case *wsapi.HiveTelemetry:
		grants = s.UpdateHive(m.HiveID, schedWorkers(m.Workers), hiveLeases(m.Leases), now)
	case *wsapi.LeaseRequest:
		r := scheduler.Request{ID: m.RequestID, Entry: peer, Model: m.Model, VRAMMB: m.VRAMMB,
			Deadline: now.Add(time.Duration(m.WaitMS) * time.Millisecond)}
		g, err := s.Request(r, now)
		switch {
		case err != nil:
			fails = append(fails, scheduler.Failure{Request: r, Err: err.(*scheduler.Error)})
		case g != nil:
			grants = append(grants, *g)
		}
	case *wsapi.LeaseCancel:
		s.Cancel(m.RequestID)
	case *wsapi.LeaseRelease:
		grants = s.Release(m.LeaseID, now)
	}
	n.schedMu.Unlock()
	n.deliver(grants, fails, peer)
}

// entryGone withdraws the waiting requests of a node whose session ended: it
// asks again on its next session.
func (n *Node) entryGone(peer string) {
	n.schedMu.Lock()
	if n.sched != nil {
		n.sched.CancelEntry(peer)
	}
	n.schedMu.Unlock()
}

// deliver sends grants and refusals to the entry nodes' sessions. A grant
// for a node whose session is gone is released at once (the node asks again
// when it reconnects), which may grant the slot to someone else.
//
// Answers to from, the node whose message is being handled, are written in
// this goroutine (its session's reader: a slow peer only slows itself);
// answers to others are queued for their sessions' writers, so that no node
// can stall another's reads.
func (n *Node) deliver(grants []scheduler.Grant, fails []scheduler.Failure, from string) {
	for len(grants) > 0 || len(fails) > 0 {
		var undeliverable []string
		for _, g := range grants {
			addr := n.memberHTTP(g.Lease.Hive)
			msg := &wsapi.LeaseGrant{Type: wsapi.TypeLeaseGrant, RequestID: g.Request.ID, LeaseID: g.Lease.ID,
				Hive: g.Lease.Hive, HiveAddr: addr, Worker: g.Lease.Worker, Model: g.Lease.Model}
			if addr == "" || !n.sendToPeer(g.Request.Entry, msg, g.Request.Entry == from) {
				undeliverable = append(undeliverable, g.Lease.ID)
			}
		}
		for _, f := range fails {
			n.sendToPeer(f.Request.Entry, &wsapi.LeaseError{Type: wsapi.TypeLeaseError, RequestID: f.Request.ID,
				Status: f.Err.Status, ErrorType: f.Err.Type, Message: f.Err.Msg, RetryAfterMS: f.Err.RetryAfter.Milliseconds()},
				f.Request.Entry == from)
		}
		grants, fails = nil, nil
		if len(undeliverable) == 0 {
			return
		}
		now := time.Now()
		n.schedMu.Lock()
		if n.sched != nil {
			for _, id := range undeliverable {
				grants = append(grants, n.sched.Release(id, now)...)
			}
		}
		n.schedMu.Unlock()
	}
}

// memberHTTP is the API address of the member named name, "" if unknown.
func (n *Node) memberHTTP(name string) string {
	if name == n.cfg.Name {
		return n.httpAdvertise
	}
	m, ok := n.gossip.Member(name)
	if !ok {
		return ""
	}
	return m.HTTPAddr
}

// sendToPeer sends msg on the session of node peer, now (inline) or through
// its writer; false when there is none or it cannot keep up.
func (n *Node) sendToPeer(peer string, msg any, inline bool) bool {
	b, err := wsapi.Encode(msg)
	if err != nil {
		return false
	}
	n.mu.Lock()
	hs, ok := n.sessions[peer]
	n.mu.Unlock()
	if !ok {
		return false
	}
	put := hs.out.Put
	if inline {
		put = func(b []byte) error { return hs.out.Send(context.Background(), b) }
	}
	if err := put(b); errors.Is(err, wsapi.ErrOutboxFull) {
		n.log.Warn("session cannot keep up with lease messages; closing it", "peer", peer)
		n.closeLater(hs.s, wsapi.CloseTooSlow, "too slow to read lease messages")
		return false
	} else if err != nil {
		return false // the session is breaking
	}
	return true
}

func schedWorkers(ws []wsapi.ProcessStats) []scheduler.Worker {
	out := make([]scheduler.Worker, 0, len(ws))
	for i := range ws {
		w := &ws[i]
		model := ""
		if w.Model != nil {
			model = *w.Model
		}
		out = append(out, scheduler.Worker{Name: w.Group + "/" + w.Instance, Model: model, Slots: w.Slots,
			VRAMUsedMB: w.VRAMMB, VRAMTotalMB: w.TotalVRAMMB, GPUUtilPct: w.GPUUtilPct, Healthy: w.Health == ""})
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

// queueStats is each model's queue for the feed and /v1/cluster.
func (n *Node) queueStats(now time.Time) ([]wsapi.QueueStats, float64) {
	n.schedMu.Lock()
	defer n.schedMu.Unlock()
	if n.sched == nil {
		return []wsapi.QueueStats{}, 0
	}
	ms := n.sched.Models(now)
	out := make([]wsapi.QueueStats, 0, len(ms))
	for _, m := range ms {
		out = append(out, wsapi.QueueStats{Model: m.Model, Waiting: m.Waiting, Leases: m.Leases, Slots: m.Slots})
	}
	return out, n.rate
}
