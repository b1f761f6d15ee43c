package scheduler

import (
	"slices"
	"strings"
	"time"

	"github.com/rbee/rbee/internal/spareid"
)

// Worker is one worker as the hive's telemetry describes it.
type Worker struct {
	Hive string
	// Name is group/instance on the hive.
	Name  string
	Model string
	// Models lists every model the worker serves when it serves more than
	// one (an Ollama serves all it has installed), Model first; nil when
	// Model is all it serves. Its slots serve them all together.
	Models []string
	// Aliases are the worker's own names for Model (ProcessStats.Aliases):
	// requests may ask for them.
	Aliases     []string
	Slots       int
	VRAMUsedMB  uint64
	VRAMTotalMB uint64
	GPUUtilPct  float64
	// Healthy is false when the hive says the worker fails requests.
	Healthy bool
	// Down is set when the hive cannot reach the worker (its health
	// "down"), DownReason says why: it takes no request, and a request for
	// a model whose every worker is down fails at once, naming them.
	Down       bool
	DownReason string
}

// ID names the worker cluster-wide: hive/group/instance.
func (w *Worker) ID() string { return w.Hive + "/" + w.Name }

// served lists the names of the models the worker serves: Model, then the
// rest of Models.
func (w *Worker) served() []string {
	out := make([]string, 0, 1+len(w.Models))
	for _, m := range append([]string{w.Model}, w.Models...) {
		if m != "" && !slices.Contains(out, m) {
			out = append(out, m)
		}
	}
	return out
}

// servedFor is the name of the model the worker serves under key: the first
// of served() that answers to it, else Model.
func (w *Worker) servedFor(key string) string {
	if len(w.Models) == 0 {
		return w.Model
	}
	for _, m := range w.served() {
		if slices.Contains(ModelKeys(m), key) {
			return m
		}
	}
	return w.Model
}

// workerKeys is every key of every model w serves, without repeats.
func workerKeys(w *Worker) []string {
	if len(w.Models) == 0 && len(w.Aliases) == 0 {
		return ModelKeys(w.Model)
	}
	var keys []string
	for _, m := range append(w.served(), w.Aliases...) {
		for _, k := range ModelKeys(m) {
			if !slices.Contains(keys, k) {
				keys = append(keys, k)
			}
		}
	}
	return keys
}

// worker is a Worker as the scheduler tracks it. What every decision reads
// (seen, leases, health, then Worker's figures) comes first, so a scan over
// thousands of workers touches two cache lines of each.
type worker struct {
	seen   time.Time
	leases int
	// lastGrant orders ties: the worker granted longest ago goes first,
	// so equal workers take turns.
	lastGrant uint64
	health    health // from Healthy and Down, for the state rule
	// stopping: its hive drains it, or a start evicts it; it takes no
	// new request.
	stopping bool
	// grantedVRAM is what requests granted since its last report need.
	grantedVRAM uint64
	// lastEnd is when rbee's last lease on it ended: a report sampled
	// before that shows rbee's own work, not work outside rbee.
	lastEnd time.Time
	Worker
	id   string
	keys []string // ModelKeys of each of served()
	pos  []int    // index in byKey[keys[i]], for O(1) removal
}

// UpdateHive replaces a hive's workers with what its telemetry says and takes
// the leases it lists as the truth: a lease it lists that this scheduler does
// not know (granted by a previous queen) is adopted; a confirmed lease it no
// longer lists has ended. It returns the grants that freed capacity allows.
func (s *Scheduler) UpdateHive(hive string, workers []Worker, leases []HiveLease, now time.Time) []Grant {
	s.hiveAt[hive] = now
	old := s.byHive[hive]
	// Every figure of the hive's workers may change at once: they leave
	// the index first and come back with their new figures, which keeps
	// the heaps valid (fixing many changed elements in place does not).
	for _, w := range old {
		s.unindex(w)
	}
	cur := make(map[string]*worker, len(workers))
	for _, in := range workers {
		in.Hive = hive
		if in.Slots <= 0 {
			in.Slots = 1
		}
		if cur[in.Name] != nil {
			continue // a name listed twice: the first stands
		}
		w := old[in.Name]
		if w != nil && (w.Model != in.Model || !slices.Equal(w.Models, in.Models) || !slices.Equal(w.Aliases, in.Aliases)) {
			w = nil
		}
		if w == nil {
			w = &worker{id: in.ID(), keys: workerKeys(&in)}
			s.workers[w.id] = w
		}
		w.Worker = in
		w.health = workerHealth(&in)
		w.stopping = s.stopping(hive, in.Name, now)
		w.seen = now
		w.leases = 0
		cur[in.Name] = w
	}
	for name, w := range old {
		if cur[name] == nil {
			delete(s.workers, w.id)
		}
	}
	s.byHive[hive] = cur

	listed := make(map[string]bool, len(leases))
	for _, hl := range leases {
		if base, ok := spareid.Lease(hl.ID); ok {
			if l := s.leases[base]; l != nil && l.Spare {
				// A use of a spare lease (spare.go): the lease
				// holds the slot, and goes when its entry node
				// releases it.
				listed[base] = true
				continue
			}
			// Another queen's spare lease: adopted as what it is
			// now, one request served.
		}
		listed[hl.ID] = true
		if l := s.leases[hl.ID]; l != nil {
			l.Confirmed = true
			if l.Standby && l.Started.IsZero() {
				// Listed, so it runs: since the hive says.
				l.Started = hl.Since
				if l.Started.IsZero() || l.Started.After(now) {
					l.Started = now
				}
			}
			continue
		}
		if cur[hl.Worker] == nil {
			continue
		}
		// The request a previous queen granted may be waiting here too
		// (its entry node asked again): it is served, not waiting.
		if wt := s.waiting[hl.RequestID]; wt != nil && hl.RequestID != "" {
			s.unwait(wt)
		}
		s.addLease(&Lease{ID: hl.ID, RequestID: hl.RequestID, Entry: hl.Entry, Hive: hive, Worker: hl.Worker,
			Model: hl.Model, Granted: hl.Since, Confirmed: true})
	}
	for id, l := range s.hiveLs[hive] {
		w := cur[l.Worker]
		if l.Spare {
			l.listed = listed[id]
			switch {
			case w != nil && !slices.Contains(w.keys, l.spareKey):
				s.revoke(l) // its worker serves another model now
				w = nil
			case w != nil && (w.health != healthy || w.stopping):
				// Its requests would fail there, or be refused:
				// they ask the queen instead.
				s.revoke(l)
			case w == nil:
				s.revoke(l) // its worker is gone from the report
			}
		}
		if w == nil || (l.Confirmed && !listed[id]) || (l.orphan && !l.listed) {
			s.dropLease(l)
			if w != nil {
				s.slotFreed(w, now)
			}
			continue
		}
		w.leases++
	}
	var grants []Grant
	for _, w := range cur {
		w.grantedVRAM = 0 // the report counts what was granted before it
		s.index(w)
	}
	// Free slots first, on every worker: a standby grant is for when
	// there are none.
	sorted := sortedWorkers(cur)
	for _, w := range sorted {
		grants = s.fill(w, now, grants, false)
	}
	for _, w := range sorted {
		grants = s.fill(w, now, grants, true)
	}
	return grants
}

// RemoveHive forgets a hive (its session ended): its workers get no new
// requests and its leases are gone. If the hive is alive it reports again,
// with the leases it still serves.
func (s *Scheduler) RemoveHive(hive string) {
	for _, w := range s.byHive[hive] {
		s.unindex(w)
		delete(s.workers, w.id)
	}
	delete(s.byHive, hive)
	delete(s.hiveAt, hive)
	s.forgetModels(hive)
	for _, l := range s.hiveLs[hive] {
		if l.Spare {
			s.revoke(l) // the entry node drops it from its pool
		}
		s.dropLease(l)
	}
}

func sortedWorkers(m map[string]*worker) []*worker {
	out := make([]*worker, 0, len(m))
	for _, w := range m {
		out = append(out, w)
	}
	slices.SortFunc(out, func(a, b *worker) int { return strings.Compare(a.id, b.id) })
	return out
}
