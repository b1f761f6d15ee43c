package scheduler

import (
	"slices"
	"strings"
	"time"
)

// ModelStats is one model's state, for the feed, /v1/models and metrics.
type ModelStats struct {
	Model   string
	Waiting int
	Leases  int
	Slots   int
	Workers int
	// The lifecycle: State is StateLoaded, StateLoading, StateAvailable
	// or StateUnavailable (Reason says why), Hives those that can start
	// it, Loading the hive starting it and since when.
	State, Reason string
	Hives         []string
	Loading       string
	LoadingSince  time.Time
	Service, ETA  time.Duration
}

// Models lists every model a fresh worker that is not down serves, with its waiting requests,
// leases and slots, sorted by name; requests waiting for a model no worker
// serves (yet) are listed under the name they asked for.
func (s *Scheduler) Models(now time.Time) []ModelStats {
	byName := map[string]*ModelStats{}
	counted := map[string]string{} // request key -> model it was counted under
	for _, w := range s.workers {
		if now.Sub(w.seen) > s.cfg.StaleAfter || w.health == unreachable {
			continue // its slots serve nobody
		}
		m := byName[w.Model]
		if m == nil {
			m = &ModelStats{Model: w.Model}
			byName[w.Model] = m
			for _, k := range w.keys {
				if _, ok := counted[k]; !ok {
					counted[k] = w.Model
				}
			}
		}
		m.Workers++
		m.Slots += w.Slots
		m.Leases += w.leases
	}
	for key, q := range s.queues {
		if q.n == 0 {
			continue
		}
		name, ok := counted[key]
		if !ok {
			name = key
			if h := q.head(now, s.cfg.AgingAfter); h != nil {
				name = h.req.Model
			}
			if byName[name] == nil {
				byName[name] = &ModelStats{Model: name}
			}
		}
		byName[name].Waiting += q.n
	}
	for id, q := range s.pinned {
		name := ""
		if w := s.workers[id]; w != nil {
			name = w.Model
		} else if h := q.head(now, s.cfg.AgingAfter); h != nil {
			name = h.req.Model
		}
		if byName[name] == nil {
			byName[name] = &ModelStats{Model: name}
		}
		byName[name].Waiting += q.n
	}
	s.lifecycleStats(byName, now)
	out := make([]ModelStats, 0, len(byName))
	for _, m := range byName {
		if m.Model != "" {
			out = append(out, *m)
		}
	}
	slices.SortFunc(out, func(a, b ModelStats) int { return strings.Compare(a.Model, b.Model) })
	return out
}
