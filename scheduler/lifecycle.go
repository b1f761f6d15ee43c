package scheduler

import (
	"maps"
	"slices"
	"strings"
	"time"

	"github.com/rbee/rbee/internal/backoff"
)

// The model lifecycle: hives report what they can start (their catalog), their
// GPUs, and the workers rbee started there (loading, ready, draining). A
// request for a model no ready worker serves waits while Place asks a hive
// with the model and room on a GPU to start one; the worker's ready report
// grants it like any freed slot. All of it comes from telemetry, so a new
// queen rebuilds loads in progress as it rebuilds leases.

// CatalogModel is one model a hive can start.
type CatalogModel struct {
	Name, Engine string
	Slots        int
	// VRAMMB is the footprint placement counts on (learned, configured or
	// estimated by the hive).
	VRAMMB uint64
	// LoadTime is the hive's last measured start-to-ready time, 0 if
	// never measured.
	LoadTime    time.Duration
	MaxReplicas int
	// MultiGPU is set when the entry's engine can split one model across
	// several GPUs of its hive (tensor parallelism, llama.cpp's
	// --tensor-split).
	MultiGPU bool
	// Unavailable says why it cannot start at all.
	Unavailable string
	// Failures in a row, the last at FailedAt, and why: the hive backs
	// off (see Backoff).
	Failures   int
	FailedAt   time.Time
	FailReason string
	// Shared: other hives may copy its files from this one (copy.go).
	Shared bool
}

// GPU is one of a hive's GPUs.
type GPU struct {
	Index                       int
	TotalMB, UsedMB, ReservedMB uint64
}

// Managed is a worker rbee started on a hive (its scheduler worker, once
// ready, is ManagedGroup/Instance).
type Managed struct {
	Instance, Model, State string
	Since                  time.Time
	GPUs                   []int
	VRAMMB                 uint64
	StartID                string
	LastUsed               time.Time
	Leases                 int
	// Stage is what a loading worker waits for first (its model's files
	// being copied), in words.
	Stage string
}

// Managed states, as wsapi.ManagedWorker.State.
const (
	ManagedLoading  = "loading"
	ManagedReady    = "ready"
	ManagedDraining = "draining"
	// ManagedGroup is the group of every worker rbee starts.
	ManagedGroup = "models"
)

// HiveModels is a hive's lifecycle report.
type HiveModels struct {
	Catalog []CatalogModel
	GPUs    []GPU
	Managed []Managed
	// CopyEngines are the engines with which the hive serves a model it
	// copies from another hive's shared entry (copy.go); none: it takes
	// no copies.
	CopyEngines []string
}

// Start asks Hive to start Model on GPUs, after stopping the idle workers
// Evict (instances of ManagedGroup).
type Start struct {
	ID, Hive, Model string
	GPUs            []int
	Evict           []string
	VRAMMB          uint64
	// Reason says why, for the log: "cold" or "scale out: ...".
	Reason string
	// Copy, when set, has Hive copy the model's files from the hives
	// that share it first (copy.go).
	Copy *Copy
}

// Copy is where a hive copies a model from and how it serves it.
type Copy struct {
	From       []string
	Engine     string
	Slots, Ctx int
}

type hiveModels struct {
	HiveModels
	keys        [][]string      // ModelKeys of each catalog entry
	managedKeys [][]string      // ModelKeys of each managed worker
	draining    map[string]bool // worker names (group/instance) being drained
}

type pendingStart struct {
	Start
	key string
	at  time.Time
}

// Lifecycle tuning. A start the hive has not reported within pendingFor was
// lost (the message, or the hive); another may be placed then.
const (
	pendingFor    = 10 * time.Second
	backoffFirst  = 10 * time.Second
	backoffMax    = 5 * time.Minute
	startsPerMin  = 4
	evictHold     = 30 * time.Second
	unknownLoad   = 30 * time.Second
	serviceWeight = 0.2 // of the newest lease in the service-time average
)

// Backoff is how long a hive waits before starting a model again after
// failures starts in a row failed: 10 s, doubling, at most 5 min.
func Backoff(failures int) time.Duration {
	if failures <= 0 {
		return 0
	}
	return backoff.Policy{First: backoffFirst, Max: backoffMax}.Delay(failures - 1)
}

// UpdateModels takes a hive's lifecycle report: what it can start, its GPUs
// and the workers rbee runs there. Call it before UpdateHive with the same
// report, so that workers being stopped get no grants.
func (s *Scheduler) UpdateModels(hive string, hm HiveModels, now time.Time) {
	if s.models == nil {
		s.models = make(map[string]*hiveModels)
	}
	if len(hm.Catalog) == 0 && len(hm.GPUs) == 0 && len(hm.Managed) == 0 && len(hm.CopyEngines) == 0 {
		delete(s.models, hive)
	} else {
		h := &hiveModels{HiveModels: hm, keys: make([][]string, len(hm.Catalog)), managedKeys: make([][]string, len(hm.Managed))}
		for i, c := range hm.Catalog {
			h.keys[i] = ModelKeys(c.Name)
		}
		for i, m := range hm.Managed {
			h.managedKeys[i] = ModelKeys(m.Model)
			if m.State == ManagedDraining {
				if h.draining == nil {
					h.draining = map[string]bool{}
				}
				h.draining[ManagedGroup+"/"+m.Instance] = true
			}
		}
		s.models[hive] = h
	}
	// A start the hive reports (loading or beyond), or whose failure it
	// recorded, is no longer pending.
	for id, p := range s.starts {
		if p.Hive != hive {
			continue
		}
		if slices.ContainsFunc(hm.Managed, func(m Managed) bool { return m.StartID == id }) {
			delete(s.starts, id)
			continue
		}
		for _, c := range hm.Catalog {
			if c.Name == p.Model && c.Failures > 0 && !c.FailedAt.Before(p.at.Add(-time.Second)) {
				delete(s.starts, id)
			}
		}
	}
}

// forgetModels drops a hive's lifecycle report and its pending starts (it
// left): a load it had under way is placed elsewhere.
func (s *Scheduler) forgetModels(hive string) {
	delete(s.models, hive)
	for id, p := range s.starts {
		if p.Hive == hive {
			delete(s.starts, id)
		}
	}
}

// stopping reports whether the worker named name on hive is being stopped:
// draining on its hive, or chosen for eviction by a start.
func (s *Scheduler) stopping(hive, name string, now time.Time) bool {
	if until, ok := s.evicting[hive+"/"+name]; ok {
		if now.Before(until) {
			return true
		}
		delete(s.evicting, hive+"/"+name)
	}
	h := s.models[hive]
	return h != nil && h.draining[name]
}

// catalogHas reports whether any hive can start a model for key, even if not
// now.
func (s *Scheduler) catalogHas(key string) bool {
	for _, h := range s.models {
		for _, ks := range h.keys {
			if slices.Contains(ks, key) {
				return true
			}
		}
	}
	return false
}

// loadOf is a model's load in progress: a pending start or a loading worker.
type loadOf struct {
	hive  string
	since time.Time
	entry CatalogModel // on that hive, when known
	stage string       // what the worker waits for first
}

// loading returns the loads in progress for key.
func (s *Scheduler) loading(key string) []loadOf {
	var out []loadOf
	for _, p := range s.starts {
		if p.key == key {
			out = append(out, loadOf{hive: p.Hive, since: p.at})
		}
	}
	for hive, h := range s.models {
		for i, m := range h.Managed {
			if m.State == ManagedLoading && slices.Contains(h.managedKeys[i], key) {
				l := loadOf{hive: hive, since: m.Since, stage: m.Stage}
				if i := h.entryFor(key); i >= 0 {
					l.entry = h.Catalog[i]
				}
				out = append(out, l)
			}
		}
	}
	slices.SortFunc(out, func(a, b loadOf) int { return a.since.Compare(b.since) })
	return out
}

func (h *hiveModels) entryFor(key string) int {
	for i, ks := range h.keys {
		if slices.Contains(ks, key) {
			return i
		}
	}
	return -1
}

// replicas counts the workers rbee runs or is starting for key.
func (s *Scheduler) replicas(key string) int {
	n := 0
	for _, p := range s.starts {
		if p.key == key {
			n++
		}
	}
	for _, h := range s.models {
		for i := range h.Managed {
			if slices.Contains(h.managedKeys[i], key) {
				n++
			}
		}
	}
	return n
}

// Starting lists the starts sent and not yet reported by their hive.
func (s *Scheduler) Starting() []Start {
	out := make([]Start, 0, len(s.starts))
	for _, p := range s.starts {
		out = append(out, p.Start)
	}
	slices.SortFunc(out, func(a, b Start) int { return strings.Compare(a.ID, b.ID) })
	return out
}

// expireStarts forgets starts their hive never reported: the message or the
// hive was lost, and Place may try again.
func (s *Scheduler) expireStarts(now time.Time) {
	for id, p := range s.starts {
		if now.Sub(p.at) > pendingFor {
			delete(s.starts, id)
		}
	}
	for id, until := range s.evicting {
		if !now.Before(until) {
			delete(s.evicting, id)
			if w := s.workers[id]; w != nil {
				w.stopping = s.stopping(w.Hive, w.Name, now)
				s.reindex(w)
			}
		}
	}
}

// CatalogModels lists every model some hive can start, by name, with the
// hives that have it; for /v1/models.
func (s *Scheduler) CatalogModels() map[string][]string {
	out := map[string][]string{}
	for _, hive := range slices.Sorted(maps.Keys(s.models)) {
		for _, c := range s.models[hive].Catalog {
			out[c.Name] = append(out[c.Name], hive)
		}
	}
	return out
}
