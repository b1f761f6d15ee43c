package scheduler

import (
	"slices"
	"strings"
	"time"
)

// ModelStats is one model's state, for the feed, /v1/models and metrics.
type ModelStats struct {
	Model string
	// Aliases are other names its workers serve it under, sorted.
	Aliases []string
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
		for _, name := range w.served() {
			m := byName[name]
			if m == nil {
				m = &ModelStats{Model: name}
				byName[name] = m
				keys := w.keys
				if len(w.Models) > 0 {
					keys = ModelKeys(name)
				}
				for _, k := range keys {
					if _, ok := counted[k]; !ok {
						counted[k] = name
					}
				}
			}
			if len(w.Models) == 0 {
				for _, a := range w.Aliases {
					if !slices.Contains(m.Aliases, a) {
						m.Aliases = append(m.Aliases, a)
					}
				}
			}
			// A worker serving several models lends its slots and
			// leases to each: they share them.
			m.Workers++
			m.Slots += w.Slots
			m.Leases += w.leases - s.idleSpares(w)
		}
	}
	for key, q := range s.queues {
		if q.n == 0 {
			continue
		}
		name, ok := counted[key]
		if !ok {
			// A model being started, or whose hive just left, is
			// listed by its name, not by a client's spelling of it.
			name = s.ModelName(key)
			if name == "" {
				name = key
				if h := q.head(now, s.cfg.AgingAfter); h != nil {
					name = h.req.Model
				}
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
			slices.Sort(m.Aliases)
			out = append(out, *m)
		}
	}
	slices.SortFunc(out, func(a, b ModelStats) int { return strings.Compare(a.Model, b.Model) })
	return out
}

// Model states in ModelStats.
const (
	StateLoaded      = "loaded"
	StateLoading     = "loading"
	StateAvailable   = "available"
	StateUnavailable = "unavailable"
)

// lifecycleStats adds the models only catalogs have to byName and gives
// every model its lifecycle state, service time and expected wait.
func (s *Scheduler) lifecycleStats(byName map[string]*ModelStats, now time.Time) {
	for name, hives := range s.CatalogModels() {
		key := RequestKey(name)
		var m *ModelStats
		for _, have := range byName {
			if RequestKey(have.Model) == key || slices.Contains(ModelKeys(have.Model), key) {
				m = have
				break
			}
		}
		if m == nil {
			m = &ModelStats{Model: name}
			byName[name] = m
		}
		m.Hives = hives
	}
	for _, m := range byName {
		key := RequestKey(m.Model)
		m.Service = s.service[key]
		m.ETA = s.ModelETA(m.Model, now)
		if ls := s.loading(key); len(ls) > 0 {
			m.Loading, m.LoadingSince = ls[0].hive, ls[0].since
		}
		switch {
		case m.Workers > 0:
			m.State = StateLoaded
		case m.Loading != "":
			m.State = StateLoading
		case len(m.Hives) == 0:
			// Requests wait for a model nobody serves yet (a new
			// queen, before its hives reported).
		default:
			m.State = StateAvailable
			if b := s.startBlocked(key, now); b != nil {
				m.State, m.Reason = StateUnavailable, b.why
			}
		}
	}
}
