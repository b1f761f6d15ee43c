package models

import (
	"math"
	"slices"

	"github.com/rbee/rbee/wsapi"
)

// simGPUs is the hive's simulated GPUs (--sim-gpus) filled with what the
// simulated workers on them report of themselves (`rbee worker simulate`'s
// GET /rbee/sim/gpu, read by the collector into workers): one source of
// made-up figures, so that a GPU's row and its workers' rows agree. Used
// VRAM is the sum of the workers' VRAM (split evenly for a worker on
// several GPUs), utilization the sum of theirs, at most 100%.
//
// A worker rbee started sits on the GPUs it was placed on, and counts its
// placement until it reports figures of its own (while it loads, or when
// its engine is not simulated). A simulated worker named with --worker was
// placed by no one: it sits on the first simulated GPU, which is how
// `rbee demo` runs its workers.
func (m *Manager) simGPUs(workers []wsapi.ProcessStats) []wsapi.GPUInfo {
	gpus := slices.Clone(m.cfg.SimGPUs)
	if len(gpus) == 0 {
		return nil
	}
	at := func(index int) *wsapi.GPUInfo {
		for i := range gpus {
			if gpus[i].Index == index {
				return &gpus[i]
			}
		}
		return nil
	}
	reported := map[string]wsapi.ProcessStats{}
	for _, p := range workers {
		switch {
		case !p.Simulated:
		case p.Group == wsapi.ManagedGroup:
			reported[p.Instance] = p
		default:
			gpus[0].UsedVRAMMB += p.VRAMMB
			gpus[0].UtilPct += p.GPUUtilPct
		}
	}
	for _, w := range m.workers {
		vram, util := w.vramMB, 0.0
		// Zeros with no total are a worker whose figures could not be
		// read this tick: its placement stands in.
		if p, ok := reported[w.instance]; ok && p.TotalVRAMMB > 0 {
			vram, util = p.VRAMMB, p.GPUUtilPct
		}
		for _, index := range w.gpus {
			if g := at(index); g != nil {
				g.UsedVRAMMB += share(vram, len(w.gpus))
				g.UtilPct += util
			}
		}
	}
	for i := range gpus {
		gpus[i].UtilPct = math.Round(min(100, gpus[i].UtilPct)*10) / 10
	}
	return gpus
}
