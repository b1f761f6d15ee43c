package scheduler

import (
	"fmt"
	"net/http"
	"slices"
	"strconv"
	"strings"
	"time"
)

// Worker states, as the queen sends them in its view and feed and every view
// (rbee status, rbee top, the dashboard) shows them.
const (
	StateIdle      = "idle"
	StateBusy      = "busy"
	StateSaturated = "saturated"
	StateFailing   = "failing"
	StateDown      = "down"
	StateOffline   = "offline"
)

// Health marks a hive puts on a worker (wsapi.ProcessStats.Health): its
// requests to the worker fail, or it cannot reach the worker at all.
const (
	HealthFailing = "failing"
	HealthDown    = "down"
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
	// Health is the hive's mark (HealthFailing, HealthDown), empty when
	// fine; HealthReason says why a worker is down.
	Health, HealthReason string
	// Leases are the requests rbee has on the worker, Slots how many it
	// serves at once (at least 1).
	Leases, Slots int
	GPUUtilPct    float64
}

// State is the one rule for what a worker is doing: offline (its hive went
// silent), down (the hive cannot reach it: a server rbee did not start that
// fails its health check), failing (the hive's requests to it fail),
// saturated (every slot leased, or its GPU busy with work outside rbee while
// rbee sends it nothing), busy (some slots leased) or idle. The reason says it in words for a person.
// The scheduler refuses new requests to a worker in any state but idle and
// busy, for the same reasons.
func State(l Load, saturatedPct float64) (state, reason string) {
	slots := max(l.Slots, 1)
	st := stateOf(l.Fresh, healthOf(l.Health), l.Leases, slots, l.GPUUtilPct, saturatedPct)
	switch st {
	case offline:
		reason = "its hive stopped reporting"
	case down:
		reason = downReason(l.HealthReason)
	case failing:
		reason = "the hive's requests to it fail (" + l.Health + ")"
	case full:
		reason = fmt.Sprintf("all %d slots busy", slots)
	case gpuBusy:
		reason = "GPU at " + strconv.FormatFloat(l.GPUUtilPct, 'f', 0, 64) + "% with no rbee request: busy outside rbee"
	case busy:
		reason = fmt.Sprintf("%d of %d slots busy", l.Leases, slots)
	default:
		reason = "free slots, ready for requests"
	}
	return stateNames[st], reason
}

// state is State's verdict inside the package, finer than its names:
// saturated is either full or gpuBusy. Only the first two take requests.
type state uint8

func (s state) available() bool { return s <= busy }

const (
	idle state = iota
	busy
	full
	gpuBusy
	failing
	down
	offline
)

var stateNames = [...]string{idle: StateIdle, busy: StateBusy, full: StateSaturated, gpuBusy: StateSaturated,
	failing: StateFailing, down: StateDown, offline: StateOffline}

// health is the hive's mark inside the package, read once per report.
type health uint8

const (
	healthy     health = iota
	unhealthy          // HealthFailing, or any mark rbee does not know
	unreachable        // HealthDown
)

func healthOf(mark string) health {
	switch mark {
	case "":
		return healthy
	case HealthDown:
		return unreachable
	}
	return unhealthy
}

// workerHealth is the state rule's health of w, as its hive reported it.
func workerHealth(w *Worker) health {
	switch {
	case w.Down:
		return unreachable
	case !w.Healthy:
		return unhealthy
	}
	return healthy
}

// ownWorkFor is how long after rbee's last lease on a worker its reported
// GPU use is still taken for rbee's own: a report samples the GPU over about
// a telemetry interval before it is sent.
const ownWorkFor = 1500 * time.Millisecond

// outsideUtil is the GPU use the state rule may blame on work outside rbee:
// none while rbee's last lease ended too recently for the report to show
// anything else.
func outsideUtil(w *worker) float64 {
	if !w.lastEnd.IsZero() && w.seen.Sub(w.lastEnd) < ownWorkFor {
		return 0
	}
	return w.GPUUtilPct
}

// allDown reports whether key has workers and every one of them is down: a
// request for it would wait for nothing that is coming, so it fails at once.
// It stops at the first worker that is not down, which is the usual case.
func (s *Scheduler) allDown(key string, now time.Time) bool {
	ws := s.byKey[key]
	for _, w := range ws {
		if w.health != unreachable || now.Sub(w.seen) > s.cfg.StaleAfter {
			return false
		}
	}
	return len(ws) > 0
}

// downErr is the 503 for a request whose model's workers are all down.
func (s *Scheduler) downErr(model string, now time.Time) *Error {
	return &Error{Status: http.StatusServiceUnavailable, Type: "model_unavailable",
		Msg: fmt.Sprintf("model %q: %s", model, s.Explain(model, now))}
}

// maxNamedDown bounds the down workers an explanation names; the rest are
// counted, so a 503's message stays readable.
const maxNamedDown = 3

// namedDown names down workers with their hive's reason, in id order.
func namedDown(ws []*worker) []string {
	slices.SortFunc(ws, func(a, b *worker) int { return strings.Compare(a.id, b.id) })
	var out []string
	for i, w := range ws {
		if i == maxNamedDown {
			out = append(out, fmt.Sprintf("%d more workers down", len(ws)-i))
			break
		}
		why := w.DownReason
		if why == "" {
			why = "the hive cannot reach it"
		}
		out = append(out, "worker "+w.id+" is down ("+why+")")
	}
	return out
}

// downReason is a down worker's reason in words, given the hive's.
func downReason(why string) string {
	if why == "" {
		return "the hive cannot reach it"
	}
	return "the hive cannot reach it: " + why
}

// stateOf is the rule itself, cheap enough (and small enough to inline) for
// every worker a decision scans.
// slots must be at least 1.
func stateOf(fresh bool, h health, leases, slots int, gpuUtilPct, saturatedPct float64) state {
	switch {
	case !fresh:
		return offline
	case h == unreachable:
		return down
	case h != healthy:
		return failing
	case leases >= slots:
		return full
	case leases > 0:
		return busy
	case gpuUtilPct >= saturatedPct:
		return gpuBusy
	}
	return idle
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

// WorkerInUse is WorkerLeases less the spare leases idle in entry nodes'
// pools (spare.go): the leases a worker's state shows. Those hold the
// scheduler's count, not the worker.
func (s *Scheduler) WorkerInUse(hive, name string) (int, bool) {
	w := s.byHive[hive][name]
	if w == nil {
		return 0, false
	}
	return w.leases - s.idleSpares(w), true
}

// SaturatedPct is the configured GPU threshold of the state rule.
func (s *Scheduler) SaturatedPct() float64 { return s.cfg.SaturatedPct }
