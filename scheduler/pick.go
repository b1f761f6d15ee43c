package scheduler

import (
	"slices"
	"strconv"
	"strings"
	"time"
)

// pick chooses among the eligible workers for key: fewest leases, then lowest
// GPU utilization, then most free VRAM, then the one granted longest ago.
func (s *Scheduler) pick(key string, r Request, now time.Time) *worker {
	// The index's first worker is the best one that has a free slot;
	// when it may take r (fresh, healthy, room on its GPU: the usual
	// case) that is the answer without a scan.
	if !s.scanOnly {
		return s.pickIndexed(key, r, now)
	}
	var best *worker
	for _, w := range s.byKey[key] {
		if !s.eligible(w, r, key, now) {
			continue
		}
		if best == nil || better(w, best) {
			best = w
		}
	}
	return best
}

func better(a, b *worker) bool {
	if a.leases != b.leases {
		return a.leases < b.leases
	}
	if a.GPUUtilPct != b.GPUUtilPct {
		return a.GPUUtilPct < b.GPUUtilPct
	}
	if fa, fb := freeVRAM(a), freeVRAM(b); fa != fb {
		return fa > fb
	}
	if a.lastGrant != b.lastGrant {
		return a.lastGrant < b.lastGrant
	}
	return a.id < b.id
}

func freeVRAM(w *worker) uint64 {
	if w.VRAMUsedMB >= w.VRAMTotalMB {
		return 0
	}
	return w.VRAMTotalMB - w.VRAMUsedMB
}

// Ineligibility reasons, for Explain.
const (
	reasonStale     = "telemetry stale"
	reasonUnhealthy = "unhealthy"
	reasonFull      = "all slots leased"
	reasonVRAM      = "not enough free VRAM"
	reasonSaturated = "GPU saturated by work outside rbee"
	reasonDown      = "down"
	reasonStopping  = "being stopped"
	reasonAvoided   = "broke off this request's answer before"
)

// refusal is why a worker in a state that takes no request refuses one.
var refusal = [...]string{full: reasonFull, gpuBusy: reasonSaturated, failing: reasonUnhealthy, down: reasonDown, offline: reasonStale}

func (s *Scheduler) eligible(w *worker, r Request, key string, now time.Time) bool {
	return s.why(w, r, key, now) == ""
}

// why says why w cannot take r now, or "" when it can. The worker-state
// rule decides first; the request's VRAM need comes after.
func (s *Scheduler) why(w *worker, r Request, key string, now time.Time) string {
	return s.whyWith(w, r, key, now, w.Slots)
}

// whyWith is why, as if w had slots slots: with its standby grants
// counted in (Config.Standby), whether it may take r as one.
func (s *Scheduler) whyWith(w *worker, r Request, key string, now time.Time, slots int) string {
	if st := stateOf(now.Sub(w.seen) <= s.cfg.StaleAfter, w.health, w.leases, slots, outsideUtil(w), s.cfg.SaturatedPct); !st.available() {
		return refusal[st]
	}
	if w.stopping {
		return reasonStopping
	}
	if avoided, workerOnly := r.avoids(w); avoided && (!workerOnly || s.servedElsewhere(key, r)) {
		// A worker that broke off is avoided while the model has
		// another: when it is the only one (restarted, say) the
		// request may as well try it again.
		return reasonAvoided
	}
	need := s.need(w, r, key)
	// A worker without GPU figures (CPU inference, no NVML) cannot be
	// checked; refusing it would make such clusters unusable. What was
	// granted since its last report is not in its figures yet: a burst
	// must not place more on a GPU than fits.
	if need > 0 && w.VRAMTotalMB > 0 && freeVRAM(w) < need+w.grantedVRAM {
		return reasonVRAM
	}
	return ""
}

// pickElsewhere is pick, preferring a worker on a hive r.Elsewhere does
// not name.
func (s *Scheduler) pickElsewhere(key string, r Request, now time.Time) *worker {
	return preferAway(r, func(r Request) *worker { return s.pick(key, r, now) })
}

// preferAway is pick(r), preferring a worker on a hive r.Elsewhere does not
// name.
func preferAway(r Request, pick func(Request) *worker) *worker {
	if len(r.Elsewhere) > 0 {
		away := r
		away.Avoid = slices.Clip(r.Avoid)
		for _, h := range r.Elsewhere {
			away.Avoid = append(away.Avoid, Avoid{Hive: h})
		}
		if w := pick(away); w != nil {
			return w
		}
	}
	return pick(r)
}

// servedElsewhere reports whether a worker r does not avoid serves key.
func (s *Scheduler) servedElsewhere(key string, r Request) bool {
	for _, w := range s.byKey[key] {
		if avoided, _ := r.avoids(w); !avoided {
			return true
		}
	}
	return false
}

// need is the free VRAM r needs on w.
func (s *Scheduler) need(w *worker, r Request, key string) uint64 {
	return max(r.VRAMMB, s.modelVRAM(key, w))
}

func (s *Scheduler) modelVRAM(key string, w *worker) uint64 {
	if len(s.cfg.ModelVRAMMB) == 0 {
		return 0
	}
	if v, ok := s.cfg.ModelVRAMMB[key]; ok {
		return v
	}
	for _, k := range w.keys {
		if v, ok := s.cfg.ModelVRAMMB[k]; ok {
			return v
		}
	}
	return 0
}

// Explain says why no worker can take a request for model now, for a 503's
// message: the reasons with their counts, and the workers that are down by
// name with the hive's reason.
func (s *Scheduler) Explain(model string, now time.Time) string {
	key := RequestKey(model)
	counts := map[string]int{}
	var down []*worker
	for _, w := range s.byKey[key] {
		reason := s.why(w, Request{}, key, now)
		if reason == reasonDown {
			down = append(down, w)
			continue
		}
		counts[reason]++
	}
	start := s.explainStart(key, now)
	if len(counts) == 0 && len(down) == 0 {
		if start != "" {
			return start
		}
		return "no worker serves it"
	}
	var parts []string
	for reason, n := range counts {
		if reason == "" {
			reason = "free"
		}
		parts = append(parts, strconv.Itoa(n)+" "+reason)
	}
	slices.Sort(parts)
	var out []string
	if len(parts) > 0 {
		out = append(out, "workers: "+strings.Join(parts, ", "))
	}
	out = append(out, namedDown(down)...)
	if start != "" {
		out = append(out, start)
	}
	return strings.Join(out, "; ")
}
