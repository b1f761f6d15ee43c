package telemetry

import (
	"context"
	"fmt"
	"math"
	"time"

	"github.com/rbee/rbee/wsapi"
)

const (
	// simGPUWait bounds one read of a simulated worker's GPU figures: it
	// is on loopback and answers from memory in well under a millisecond.
	simGPUWait = 150 * time.Millisecond
	// simGPUBudget bounds all of a tick's reads, so that simulators that
	// hang cannot stretch a tick however many there are.
	simGPUBudget = 300 * time.Millisecond
)

// SimGPU reads the made-up GPU figures of `rbee worker simulate` at baseURL:
// GET /rbee/sim/gpu, {"gpu_util_pct":..,"vram_mb":..,"total_vram_mb":..}.
func (p APIProber) SimGPU(ctx context.Context, baseURL string) (WorkerGPU, error) {
	base, err := modelAPIBase(baseURL)
	if err != nil {
		return WorkerGPU{}, fmt.Errorf("read simulated gpu of %q: %w", baseURL, err)
	}
	var g struct {
		UtilPct     *float64 `json:"gpu_util_pct"`
		VRAMMB      *uint64  `json:"vram_mb"`
		TotalVRAMMB *uint64  `json:"total_vram_mb"`
	}
	if err := p.getJSON(ctx, base+"/rbee/sim/gpu", &g); err != nil {
		return WorkerGPU{}, err
	}
	if g.UtilPct == nil || g.VRAMMB == nil || g.TotalVRAMMB == nil {
		return WorkerGPU{}, fmt.Errorf("read %s/rbee/sim/gpu: want gpu_util_pct, vram_mb and total_vram_mb", base)
	}
	if math.IsNaN(*g.UtilPct) || *g.UtilPct < 0 || *g.UtilPct > 100 || *g.VRAMMB > *g.TotalVRAMMB {
		return WorkerGPU{}, fmt.Errorf("read %s/rbee/sim/gpu: figures out of range: %v%%, %d of %d MiB", base, *g.UtilPct, *g.VRAMMB, *g.TotalVRAMMB)
	}
	return WorkerGPU{UtilPct: *g.UtilPct, VRAMMB: *g.VRAMMB, TotalVRAMMB: *g.TotalVRAMMB}, nil
}

// fillSimulated gives each simulated worker in out the GPU figures its own
// API makes up, in place of any the GPU hook found (none: it is not on a
// GPU). A worker that does not answer in time reports zeros this tick; that
// is logged once until it answers again. Reads are one after the other,
// within simGPUBudget in all.
func (c *Collector) fillSimulated(ctx context.Context, out []wsapi.ProcessStats) {
	read := c.cfg.SimGPU
	if read == nil {
		read = c.prober.SimGPU
	}
	var bctx context.Context
	for i := range out {
		w := &out[i]
		if !w.Simulated {
			continue
		}
		w.GPUUtilPct, w.VRAMMB, w.TotalVRAMMB = 0, 0, 0
		m := c.models[w.ID()]
		if m == nil || m.baseURL == "" {
			continue
		}
		if bctx == nil {
			var cancel context.CancelFunc
			bctx, cancel = context.WithTimeout(ctx, simGPUBudget)
			defer cancel()
		}
		rctx, cancel := context.WithTimeout(bctx, simGPUWait)
		g, err := read(rctx, m.baseURL)
		cancel()
		switch {
		case err == nil:
			w.GPUUtilPct, w.VRAMMB, w.TotalVRAMMB = g.UtilPct, g.VRAMMB, g.TotalVRAMMB
			m.simWarned = false
		case !m.simWarned && ctx.Err() == nil:
			c.log.Info("simulated worker's GPU figures unreadable; reporting zeros", "worker", m.baseURL, "reason", err)
			m.simWarned = true
		}
	}
}
