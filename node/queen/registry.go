package queen

import (
	"slices"
	"strings"
	"sync"
	"time"

	"github.com/rbee/rbee/node/api"
	"github.com/rbee/rbee/scheduler"
	"github.com/rbee/rbee/wsapi"
)

// Registry is the queen's view of the hives: the last telemetry of each, and
// when it arrived. It is safe for concurrent use.
type Registry struct {
	ttl    time.Duration
	forget time.Duration

	mu    sync.RWMutex
	hives map[string]*hiveEntry
}

type hiveEntry struct {
	t        *wsapi.HiveTelemetry
	lastSeen time.Time
}

// NewRegistry returns an empty registry in which a hive is online for ttl after
// its last report and forgotten after forget.
func NewRegistry(ttl, forget time.Duration) *Registry {
	return &Registry{ttl: ttl, forget: forget, hives: make(map[string]*hiveEntry)}
}

// Update records telemetry received at now. t must not be modified afterwards.
func (r *Registry) Update(t *wsapi.HiveTelemetry, now time.Time) {
	r.mu.Lock()
	r.hives[t.HiveID] = &hiveEntry{t: t, lastSeen: now}
	r.mu.Unlock()
}

// Reset forgets every hive (the node stopped being queen: its view is stale).
func (r *Registry) Reset() {
	r.mu.Lock()
	clear(r.hives)
	r.mu.Unlock()
}

// Hives returns every hive, sorted by id, and forgets those silent for longer
// than the forget period.
func (r *Registry) Hives(now time.Time) []api.HiveView {
	r.mu.Lock()
	defer r.mu.Unlock()
	out := make([]api.HiveView, 0, len(r.hives))
	for id, e := range r.hives {
		if now.Sub(e.lastSeen) > r.forget {
			delete(r.hives, id)
			continue
		}
		w := e.t.Workers
		online := r.online(e, now)
		switch {
		case w == nil:
			w = []wsapi.ProcessStats{}
		case !online:
			// The states were set when the report came; since then
			// the hive went silent.
			w = slices.Clone(w)
			reason := scheduler.OfflineReason(now.Sub(e.lastSeen))
			for i := range w {
				w[i].State, w[i].StateReason = scheduler.StateOffline, reason
			}
		}
		out = append(out, api.HiveView{HiveID: id, Online: online, LastSeen: e.lastSeen.UTC(), Workers: w, Leases: e.t.Leases,
			Catalog: e.t.Catalog, GPUs: e.t.GPUs, Managed: e.t.Managed, ModelsDirFreeBytes: e.t.ModelsDirFreeBytes, CopyEngines: e.t.CopyEngines})
	}
	slices.SortFunc(out, func(a, b api.HiveView) int { return strings.Compare(a.HiveID, b.HiveID) })
	return out
}

// leasesPerWorker counts the requests a hive serves, by group/instance.
func leasesPerWorker(ls []wsapi.LeaseInfo) map[string]int {
	busy := make(map[string]int, len(ls))
	for _, l := range ls {
		busy[l.Worker]++
	}
	return busy
}

func (r *Registry) online(e *hiveEntry, now time.Time) bool {
	return now.Sub(e.lastSeen) <= r.ttl
}

// Summary builds the feed's queen event. Only online hives count; a worker is
// available when the state the queen gave it allows requests (idle or busy), a
// hive when it has an available worker.
func (r *Registry) Summary(now time.Time, queen string) wsapi.QueenEvent {
	ev := wsapi.QueenEvent{Type: wsapi.TypeQueen, Timestamp: now.UTC(), QueenID: queen, WorkerIDs: []string{}, HiveIDs: []string{}}
	r.mu.RLock()
	defer r.mu.RUnlock()
	for id, e := range r.hives {
		if !r.online(e, now) {
			continue
		}
		ev.HivesOnline++
		ev.HiveIDs = append(ev.HiveIDs, id)
		avail := false
		for i := range e.t.Workers {
			w := &e.t.Workers[i]
			ev.WorkersOnline++
			ev.WorkerIDs = append(ev.WorkerIDs, wsapi.GlobalWorkerID(id, w))
			if scheduler.Available(w.State) {
				ev.WorkersAvailable++
				avail = true
			}
		}
		if avail {
			ev.HivesAvailable++
		}
	}
	slices.Sort(ev.HiveIDs)
	slices.Sort(ev.WorkerIDs)
	return ev
}

// catalogByModel is, for each model some hive lists, the catalog entry of
// the first hive by id that can start it (else the first that lists it).
func (r *Registry) catalogByModel() map[string]wsapi.CatalogEntry {
	r.mu.RLock()
	defer r.mu.RUnlock()
	ids := make([]string, 0, len(r.hives))
	for id := range r.hives {
		ids = append(ids, id)
	}
	slices.Sort(ids)
	out := map[string]wsapi.CatalogEntry{}
	for _, id := range ids {
		for _, c := range r.hives[id].t.Catalog {
			if prev, ok := out[c.Name]; !ok || prev.Unavailable != "" && c.Unavailable == "" {
				out[c.Name] = c
			}
		}
	}
	return out
}
