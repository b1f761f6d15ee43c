package scheduler

import (
	"maps"
	"slices"
	"time"
)

// WaitStatus is where one waiting request stands.
type WaitStatus struct {
	Request  Request
	Position int // 1 is next
	ETA      time.Duration
	// Loading is the hive starting a worker the request waits for, and
	// since when ("" when none).
	Loading      string
	LoadingSince time.Time
	// LoadingStage is what that worker waits for first ("" when its
	// engine is starting).
	LoadingStage string
}

// Waits reports where each waiting request that asked for progress stands:
// its place in its model's queue (or its worker's, when it waits for one), when it should get a slot (its place times
// the model's service time over its slots, or what is left of a load under
// way), and the load it waits for.
func (s *Scheduler) Waits(now time.Time) []WaitStatus {
	var out []WaitStatus
	for _, key := range s.waitingKeys() {
		q := s.queues[key]
		slots, _ := s.liveSlots(key, now)
		svc := s.service[key]
		var load *loadOf
		if ls := s.loading(key); len(ls) > 0 {
			load = &ls[0]
		}
		pos := 0
		for _, wt := range q.order() {
			pos++
			if !wt.req.Progress {
				continue
			}
			st := WaitStatus{Request: wt.req, Position: pos}
			if slots > 0 && svc > 0 {
				st.ETA = time.Duration(pos) * svc / time.Duration(slots)
			}
			if load != nil {
				st.Loading, st.LoadingSince, st.LoadingStage = load.hive, load.since, load.stage
				if slots == 0 && load.entry.LoadTime > 0 {
					st.ETA = max(load.entry.LoadTime-now.Sub(load.since), 0) + time.Duration(pos-1)*svc/time.Duration(max(load.entry.Slots, 1))
				}
			}
			out = append(out, st)
		}
	}
	// Requests that wait for one worker (a Responses follow-up, a
	// conversation's turn): their place in its line, and its slots.
	for _, id := range slices.Sorted(maps.Keys(s.pinned)) {
		q := s.pinned[id]
		w := s.workers[id]
		pos := 0
		for _, wt := range q.order() {
			pos++
			if !wt.req.Progress {
				continue
			}
			st := WaitStatus{Request: wt.req, Position: pos}
			if svc := s.service[wt.key]; w != nil && svc > 0 {
				st.ETA = time.Duration(pos) * svc / time.Duration(max(w.Slots, 1))
			}
			out = append(out, st)
		}
	}
	return out
}

// ModelETA is how long a new request for model would wait now: everyone
// ahead of it times the service time over the slots; 0 when unknown.
func (s *Scheduler) ModelETA(model string, now time.Time) time.Duration {
	key := RequestKey(model)
	svc := s.service[key]
	slots, leases := s.liveSlots(key, now)
	if slots == 0 {
		// Nothing serves it yet: what is left of a load under way
		// whose hive has loaded it before.
		if ls := s.loading(key); len(ls) > 0 && ls[0].entry.LoadTime > 0 {
			return max(ls[0].entry.LoadTime-now.Sub(ls[0].since), time.Millisecond)
		}
		return 0
	}
	if svc <= 0 {
		return 0
	}
	n := 0
	if q := s.queues[key]; q != nil {
		n = q.n
	}
	if slots == 0 || (n == 0 && leases < slots) {
		return 0
	}
	return time.Duration(n+1) * svc / time.Duration(slots)
}

// liveSlots counts the slots, and the leases on them, of key's workers that
// may take requests at all (fresh, healthy, not being stopped).
func (s *Scheduler) liveSlots(key string, now time.Time) (slots, leases int) {
	for _, w := range s.byKey[key] {
		if now.Sub(w.seen) <= s.cfg.StaleAfter && w.health == healthy && !w.stopping {
			slots += w.Slots
			leases += w.leases
		}
	}
	return slots, leases
}

// noteService folds one finished lease into its model's service time.
func (s *Scheduler) noteService(w *worker, d time.Duration) {
	if d <= 0 {
		return
	}
	if s.service == nil {
		s.service = make(map[string]time.Duration)
	}
	for _, k := range w.keys {
		s.noteServiceKey(k, d)
	}
}

// noteServiceKey moves key's service time toward d.
func (s *Scheduler) noteServiceKey(key string, d time.Duration) {
	if old := s.service[key]; old > 0 {
		s.service[key] = time.Duration(float64(old)*(1-serviceWeight) + float64(d)*serviceWeight)
	} else {
		s.service[key] = d
	}
}

// ServiceTime is a model's measured time per lease, 0 before any ended.
func (s *Scheduler) ServiceTime(model string) time.Duration {
	return s.service[RequestKey(model)]
}
