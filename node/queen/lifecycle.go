package queen

import (
	"time"

	"github.com/rbee/rbee/scheduler"
	"github.com/rbee/rbee/wsapi"
)

// waitReportEvery is how often an entry node hears where a waiting request
// that asked for progress stands.
const waitReportEvery = time.Second

// hiveModels is a report's lifecycle part as the scheduler takes it.
func hiveModels(t *wsapi.HiveTelemetry) scheduler.HiveModels {
	var hm scheduler.HiveModels
	for _, c := range t.Catalog {
		hm.Catalog = append(hm.Catalog, scheduler.CatalogModel{Name: c.Name, Engine: c.Engine, Slots: c.Slots, VRAMMB: c.VRAMMB,
			LoadTime: time.Duration(c.LoadMS) * time.Millisecond, MaxReplicas: c.MaxReplicas, MultiGPU: c.MultiGPU, Unavailable: c.Unavailable,
			Failures: c.Failures, FailedAt: c.FailedAt, FailReason: c.FailReason, Shared: c.Shared})
	}
	hm.CopyEngines = t.CopyEngines
	for _, g := range t.GPUs {
		hm.GPUs = append(hm.GPUs, scheduler.GPU{Index: g.Index, TotalMB: g.TotalVRAMMB, UsedMB: g.UsedVRAMMB, ReservedMB: g.ReservedMB})
	}
	for _, m := range t.Managed {
		hm.Managed = append(hm.Managed, scheduler.Managed{Instance: m.Instance, Model: m.Model, State: m.State, Since: m.Since,
			GPUs: m.GPUs, VRAMMB: m.VRAMMB, StartID: m.StartID, LastUsed: m.LastUsed, Leases: m.Leases, Stage: m.Stage})
	}
	return hm
}

// outMsg is a message for one node, sent once the scheduler is let go.
type outMsg struct {
	to  string
	msg any
}

// placeLocked asks the scheduler what to start and returns the messages for
// the hives.
func (q *Queen) placeLocked(now time.Time) []outMsg {
	starts := q.sched.Place(now)
	if len(starts) == 0 {
		return nil
	}
	term := q.cfg.Members.Term()
	out := make([]outMsg, 0, len(starts))
	for _, st := range starts {
		ms := &wsapi.ModelStart{Type: wsapi.TypeModelStart, StartID: st.ID, Model: st.Model,
			GPUs: st.GPUs, Evict: st.Evict, VRAMMB: st.VRAMMB, Term: term}
		var from []string
		if c := st.Copy; c != nil {
			ms.Copy = &wsapi.ModelCopy{From: c.From[:min(len(c.From), wsapi.MaxCopyFrom)], Engine: c.Engine, Slots: c.Slots, Ctx: c.Ctx}
			from = ms.Copy.From
		}
		q.log.Info("starting a worker", "model", st.Model, "hive", st.Hive, "gpus", st.GPUs, "evict", st.Evict,
			"vram_mb", st.VRAMMB, "why", st.Reason, "start_id", st.ID, "copy_from", from)
		out = append(out, outMsg{to: st.Hive, msg: ms})
	}
	return out
}

// waitReportsLocked are the lease_wait messages due now.
func (q *Queen) waitReportsLocked(now time.Time) []outMsg {
	if now.Sub(q.waitReportAt) < waitReportEvery {
		return nil
	}
	q.waitReportAt = now
	ws := q.sched.Waits(now)
	out := make([]outMsg, 0, len(ws))
	for _, w := range ws {
		m := &wsapi.LeaseWait{Type: wsapi.TypeLeaseWait, RequestID: w.Request.ID, Position: w.Position, ETAMS: w.ETA.Milliseconds()}
		q.spans.position(w.Request.ID, w.Position) // trace.go
		if w.Loading != "" {
			m.Loading, m.LoadingHive, m.LoadingMS = w.Request.Model, w.Loading, now.Sub(w.LoadingSince).Milliseconds()
			m.LoadingStage = w.LoadingStage
		}
		out = append(out, outMsg{to: w.Request.Entry, msg: m})
	}
	return out
}

// sendAll sends msgs; those to from, the node whose message is handled, are
// written inline (see deliver). A start that cannot be sent lapses in the
// scheduler and is placed again.
func (q *Queen) sendAll(msgs []outMsg, from string) {
	for _, m := range msgs {
		if !q.sendTo(m.to, m.msg, m.to == from) {
			if st, ok := m.msg.(*wsapi.ModelStart); ok {
				q.log.Warn("could not send a model start to its hive", "hive", m.to, "model", st.Model)
			}
		}
	}
}
