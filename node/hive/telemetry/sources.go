package telemetry

import (
	"context"
	"slices"
	"strconv"
	"strings"
	"time"

	"github.com/rbee/rbee/wsapi"
)

// source is one worker to report this tick, wherever it was found: a cgroup
// under rbee.slice, a `rbee worker run` registration outside any cgroup, or a
// --worker server.
type source struct {
	group, instance string
	// cgroup holds the figures of a worker found in a cgroup; nil for one
	// measured by process alone.
	cgroup *WorkerCgroupStats
	// pids are the worker's processes, measured and handed to the GPU
	// hook: its cgroup's, or the process tree of a worker outside one
	// (the root first, so it is the oldest and reported as the pid);
	// none for a --worker whose process is not visible.
	pids []int32
	// pid is reported as the worker's pid; 0 reports the oldest live one
	// of pids (a registration names its own).
	pid        int32
	baseURL    string    // its API; "" when unknown
	configured ModelInfo // what the user named: --worker, or rbee worker run
	// static is the --worker server this is, whose health is checked
	// every tick (rbee did not start it, so no process tells it is gone);
	// nil for the workers rbee started.
	static *staticWorker
}

// registration is a worker `rbee worker run` started, as RegisterWorker
// recorded it.
type registration struct {
	group, instance string
	pid             int32
	info            ModelInfo
}

// staticWorker is a --worker server and what is known of its process.
type staticWorker struct {
	spec     WorkerSpec
	pid      int32
	lookedAt time.Time
	warned   bool
	health   health
}

// sources lists this tick's workers: those in cgroups, then registered ones
// outside any cgroup (by group/instance), then --worker servers whose process
// is in no cgroup. The error says which cgroups could not be read; the list
// holds those that could.
func (c *Collector) sources(ctx context.Context, now time.Time) ([]source, error) {
	var cgw []WorkerCgroupStats
	var err error
	if c.cg != nil {
		cgw, err = c.cg.Collect(now)
	}
	inCgroup := make(map[int32]bool)
	for _, w := range cgw {
		for _, p := range w.PIDs {
			inCgroup[p] = true
		}
	}
	regs := c.liveRegistrations()
	regByID := make(map[string]registration, len(regs))
	for _, r := range regs {
		regByID[wsapi.WorkerID(r.group, r.instance)] = r
	}

	// A worker outside a cgroup is measured over its process tree: its
	// children do the work (ollama runner, vLLM's EngineCore). A child in
	// a worker's cgroup is that worker's, not counted twice.
	c.tree.tick()
	srcs := make([]source, 0, len(cgw)+len(regs)+len(c.static))
	for i := range cgw {
		w := &cgw[i]
		srcs = append(srcs, source{group: w.Group, instance: w.Instance, cgroup: w, pids: w.PIDs,
			baseURL: localURL(w.Instance), configured: regByID[wsapi.WorkerID(w.Group, w.Instance)].info})
	}
	for _, r := range regs {
		if !inCgroup[r.pid] {
			srcs = append(srcs, source{group: r.group, instance: r.instance, pids: c.tree.tree(r.pid, inCgroup), pid: r.pid,
				baseURL: localURL(r.instance), configured: r.info})
		}
	}
	for i := range c.static {
		sw := &c.static[i]
		c.resolvePID(ctx, sw, now)
		if sw.pid != 0 && inCgroup[sw.pid] {
			continue // rbee started it: its cgroup already reports it
		}
		var pids []int32
		if sw.pid != 0 {
			pids = c.tree.tree(sw.pid, inCgroup)
		}
		srcs = append(srcs, source{group: sw.spec.Group, instance: sw.spec.Instance, pids: pids,
			baseURL: sw.spec.URL, configured: ModelInfo{Model: sw.spec.Model, Slots: sw.spec.Slots}, static: sw})
	}
	return srcs, err
}

// liveRegistrations returns the registered workers whose process is alive, by
// group/instance, and forgets the others.
func (c *Collector) liveRegistrations() []registration {
	c.mu.Lock()
	regs := make([]registration, 0, len(c.registered))
	for id, r := range c.registered {
		if !pidAlive(r.pid) {
			delete(c.registered, id)
			continue
		}
		regs = append(regs, r)
	}
	c.mu.Unlock()
	slices.SortFunc(regs, func(a, b registration) int {
		return strings.Compare(wsapi.WorkerID(a.group, a.instance), wsapi.WorkerID(b.group, b.instance))
	})
	return regs
}

// query is what the process sampler reads of the worker: only whether its
// processes live, and their command line, when its cgroup gave every figure.
func (s *source) query() ProcQuery {
	all := s.cgroup != nil && s.cgroup.Known.Has(CgroupCPU|CgroupMemory|CgroupIO)
	return ProcQuery{PIDs: s.pids, IdentityOnly: all}
}

// stats is the worker in the wire's shape: its cgroup's figures where the
// cgroup has them, its processes' for the rest.
func (s *source) stats(p ProcStats) wsapi.ProcessStats {
	st := wsapi.ProcessStats{Group: s.group, Instance: s.instance, PID: uint32(p.MainPID),
		CPUPct: p.CPUPct, RSSMB: p.RSSBytes / mib, IOReadMBs: p.ReadBps / mib, IOWriteMBs: p.WriteBps / mib,
		UptimeS: uint64(p.Uptime / time.Second)}
	if s.pid != 0 {
		st.PID = uint32(s.pid)
	}
	if cg := s.cgroup; cg != nil {
		if cg.Known.Has(CgroupCPU) {
			st.CPUPct = cg.CPUPct
		}
		if cg.Known.Has(CgroupMemory) {
			st.RSSMB = cg.RSSMB
		}
		if cg.Known.Has(CgroupIO) {
			st.IOReadMBs, st.IOWriteMBs = cg.IOReadMBs, cg.IOWriteMBs
		}
	}
	return st
}

// resolvePID finds the process behind a --worker's port when it is not known
// or has gone, at most every pidRetry.
func (c *Collector) resolvePID(ctx context.Context, sw *staticWorker, now time.Time) {
	if sw.pid != 0 && pidAlive(sw.pid) {
		return
	}
	if now.Sub(sw.lookedAt) < pidRetry {
		return
	}
	sw.lookedAt = now
	pid, err := PIDListeningOn(ctx, sw.spec.Port)
	if err != nil {
		sw.pid = 0
		if !sw.warned {
			c.log.Info("worker's process not visible; reporting it without process figures", "worker", sw.spec.URL, "reason", err)
			sw.warned = true
		}
		return
	}
	sw.pid, sw.warned = pid, false
}

// localURL guesses a cgroup worker's API from its instance, which is its port
// by convention (rbee worker run --instance 8080).
func localURL(instance string) string {
	if p, err := strconv.Atoi(instance); err == nil && p > 0 && p < 65536 {
		return "http://127.0.0.1:" + instance
	}
	return ""
}
