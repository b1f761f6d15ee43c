package scheduler

import (
	"fmt"
	"strconv"
	"time"
)

// Worker states, as the queen sends them in its view and feed and every view
// (rbee status, rbee top, the dashboard) shows them.
const (
	StateIdle      = "idle"
	StateBusy      = "busy"
	StateSaturated = "saturated"
	StateFailing   = "failing"
	StateOffline   = "offline"
)

// DefaultSaturatedPct is the GPU utilization at which a worker that rbee sends
// nothing is taken to be busy with work outside rbee: a GPU that full gives a
// new request a fraction of its speed, and 90 leaves room for the short spikes
// of display or monitoring work.
const DefaultSaturatedPct = 90

// Load is what the state rule looks at for one worker.
type Load struct {
	// Fresh is false when the worker's hive has stopped reporting.
	Fresh bool
	// Health is the hive's mark ("failing"), empty when fine.
	Health string
	// Leases are the requests rbee has on the worker, Slots how many it
	// serves at once (at least 1).
	Leases, Slots int
	GPUUtilPct    float64
}

// State is the one rule for what a worker is doing: offline (its hive went
// silent), failing (the hive's requests to it fail), saturated (every slot
// leased, or its GPU busy with work outside rbee while rbee sends it nothing),
// busy (some slots leased) or idle. The reason says it in words for a person.
// The scheduler refuses new requests to a worker in any state but idle and
// busy, for the same reasons.
func State(l Load, saturatedPct float64) (state, reason string) {
	state = stateOf(l, saturatedPct)
	slots := max(l.Slots, 1)
	switch {
	case state == StateOffline:
		reason = "its hive stopped reporting"
	case state == StateFailing:
		reason = "the hive's requests to it fail (" + l.Health + ")"
	case state == StateSaturated && l.Leases >= slots:
		reason = fmt.Sprintf("all %d slots busy", slots)
	case state == StateSaturated:
		reason = "GPU at " + strconv.FormatFloat(l.GPUUtilPct, 'f', 0, 64) + "% with no rbee request: busy outside rbee"
	case state == StateBusy:
		reason = fmt.Sprintf("%d of %d slots busy", l.Leases, slots)
	default:
		reason = "free slots, ready for requests"
	}
	return state, reason
}

// stateOf is State without the words, cheap enough for every worker a
// decision scans.
func stateOf(l Load, saturatedPct float64) string {
	switch {
	case !l.Fresh:
		return StateOffline
	case l.Health != "":
		return StateFailing
	case l.Leases >= max(l.Slots, 1):
		return StateSaturated
	case l.Leases > 0:
		return StateBusy
	case l.GPUUtilPct >= saturatedPct:
		return StateSaturated
	}
	return StateIdle
}

// Available reports whether a worker in state may be given a request.
func Available(state string) bool { return state == StateIdle || state == StateBusy }

// OfflineReason says how long a hive has been silent, for an offline
// worker's reason in a view built later than the last report.
func OfflineReason(silent time.Duration) string {
	return "its hive has not reported for " + silent.Round(100*time.Millisecond).String()
}

// WorkerLeases is how many leases the scheduler holds on a hive's worker
// (group/instance), granted but not yet confirmed ones included.
func (s *Scheduler) WorkerLeases(hive, name string) (int, bool) {
	w := s.byHive[hive][name]
	if w == nil {
		return 0, false
	}
	return w.leases, true
}

// SaturatedPct is the configured GPU threshold of the state rule.
func (s *Scheduler) SaturatedPct() float64 { return s.cfg.SaturatedPct }
