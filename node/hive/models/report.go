package models

import (
	"net"
	"slices"
	"strings"

	"github.com/rbee/rbee/node/hive/modelfile"
	"github.com/rbee/rbee/wsapi"
)

// Report is this hive's lifecycle for its telemetry, given this tick's
// workers: it drops the workers still loading (they take no request yet),
// learns the VRAM of the ready ones, and returns the catalog, the GPUs and
// the workers rbee started.
func (m *Manager) Report(workers []wsapi.ProcessStats) ([]wsapi.ProcessStats, []wsapi.CatalogEntry, []wsapi.GPUInfo, []wsapi.ManagedWorker) {
	m.mu.Lock()
	defer m.mu.Unlock()
	seen := map[string]uint64{}
	listed := map[string]bool{}
	kept := workers[:0]
	for _, p := range workers {
		if p.Group == wsapi.ManagedGroup {
			w := m.workers[p.Instance]
			if w == nil || w.state == wsapi.ManagedLoading {
				continue
			}
			listed[p.Instance] = true
			// The hive knows what it started, whatever the worker's
			// command line or API say (or have not said yet).
			name := w.it.Name
			p.Model, p.Slots = &name, w.it.Slots
			seen[p.Instance] = p.VRAMMB
			if p.VRAMMB > w.peakMB {
				w.peakMB = p.VRAMMB
				w.it.learnedMB = p.VRAMMB
				m.dirty = true
			}
		}
		kept = append(kept, p)
	}
	// A worker that got ready since the collection is listed from what
	// the hive knows of it, so the queen may use it at once.
	for _, w := range m.workers {
		if w.state != wsapi.ManagedLoading && !listed[w.instance] {
			name := w.it.Name
			kept = append(kept, wsapi.ProcessStats{PID: uint32(w.pid), Group: wsapi.ManagedGroup, Instance: w.instance,
				Model: &name, Slots: w.it.Slots, Simulated: w.it.simulated()})
		}
	}

	cat := make([]wsapi.CatalogEntry, 0, len(m.items))
	for _, it := range m.items {
		vram, src := it.vram()
		cat = append(cat, wsapi.CatalogEntry{Name: it.Name, Engine: it.Engine, Bytes: it.bytes, Slots: it.Slots, Ctx: it.Ctx,
			VRAMMB: vram, VRAMSource: src, Facts: reportFacts(it.facts), LoadMS: it.loadMS, MaxReplicas: it.MaxReplicas, Unavailable: clean(it.unavailable, 250),
			Failures: it.failures, FailedAt: it.failedAt, FailReason: it.failReason, Simulated: it.simulated(),
			MultiGPU: it.engine != nil && it.engine.MultiGPU(), Shared: (it.Share || m.cfg.ShareAll) && it.copyFrom == nil,
			SHA256: m.knownDigest(it.Path)})
	}

	var gpus []wsapi.GPUInfo
	if len(m.cfg.SimGPUs) > 0 {
		gpus = m.simGPUs(kept)
	} else if m.cfg.GPUs != nil {
		gpus = m.cfg.GPUs()
		for i := range gpus {
			for _, w := range m.workers {
				// A worker split over several GPUs takes an even
				// share of its VRAM on each.
				n := len(w.gpus)
				if w.state == wsapi.ManagedLoading && slices.Contains(w.gpus, gpus[i].Index) && w.vramMB > seen[w.instance] {
					gpus[i].ReservedMB += share(w.vramMB-seen[w.instance], n)
				}
			}
		}
	}

	managed := make([]wsapi.ManagedWorker, 0, len(m.workers))
	counts := map[string]float64{wsapi.ManagedLoading: 0, wsapi.ManagedReady: 0, wsapi.ManagedDraining: 0}
	for _, w := range m.workers {
		m.refreshLeases(w)
		counts[w.state]++
		managed = append(managed, wsapi.ManagedWorker{Instance: w.instance, Model: w.it.Name, Engine: w.it.Engine, State: w.state,
			Since: w.since, ReadyAt: w.readyAt, PID: w.pid, GPUs: w.gpus, VRAMMB: w.vramMB, StartID: w.startID,
			StartedBy: w.startedBy, LastUsed: w.lastUsed, Leases: w.leases, Stage: w.stage})
	}
	for st, n := range counts {
		m.states.WithLabelValues(st).Set(n)
	}
	slices.SortFunc(managed, func(a, b wsapi.ManagedWorker) int { return strings.Compare(a.Instance, b.Instance) })
	return kept, cat, gpus, managed
}

// Endpoint is the API of the ready (or draining) worker rbee started on
// port instance, "" when there is none.
func (m *Manager) Endpoint(instance string) string {
	m.mu.Lock()
	defer m.mu.Unlock()
	if w := m.workers[instance]; w != nil && w.state != wsapi.ManagedLoading {
		return "http://" + net.JoinHostPort("127.0.0.1", instance)
	}
	return ""
}

// reportFacts is what the catalog says of a model's files. Their strings
// come from files that may be hostile, hence clean.
func reportFacts(f *modelfile.Facts) *wsapi.ModelFacts {
	if f == nil {
		return nil
	}
	return &wsapi.ModelFacts{Format: f.Format, Architecture: clean(f.Architecture, 64), Parameters: f.Parameters,
		Quantization: clean(f.Quantization, 32), Layers: f.Layers, KVHeads: f.KVHeads, HeadDim: f.HeadDim,
		ContextLength: f.ContextLength, ChatTemplate: f.ChatTemplate, WeightsMB: ceilMiB(f.WeightBytes),
		KVCacheMB: ceilMiB(f.KVBytes), EstimateMB: ceilMiB(f.VRAMBytes)}
}

// share is what vram MiB split evenly over n GPUs takes on each, rounded
// up (the queen counts the same).
func share(vram uint64, n int) uint64 {
	if n <= 1 {
		return vram
	}
	return (vram + uint64(n) - 1) / uint64(n)
}
