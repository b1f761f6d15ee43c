package models

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net"
	"net/http"
	"os"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"sync"
	"time"
	"unicode/utf8"

	"github.com/prometheus/client_golang/prometheus"

	"github.com/rbee/rbee/node/hive/launch"
	"github.com/rbee/rbee/wsapi"
)

// Defaults of Config.
const (
	DefaultIdleUnload  = 15 * time.Minute
	DefaultLoadTimeout = 10 * time.Minute
	// DefaultStopGrace is how long an engine gets to exit after SIGTERM:
	// vLLM takes a few seconds to free its GPU memory cleanly.
	DefaultStopGrace = 10 * time.Second
	// simDefaultVRAMMB is a sim entry's footprint when it names neither
	// vram= nor a file to take the size of.
	simDefaultVRAMMB = 4096
)

// Readiness polling: often at first, so a quick engine is used within
// milliseconds of getting ready, then less (a big model loads for minutes).
const (
	pollFast     = 20 * time.Millisecond
	pollSlow     = 250 * time.Millisecond
	pollFastFor  = 10 * time.Second
	pollTimeout  = 2 * time.Second
	tailLines    = 5
	maxLineBytes = 200
)

// Config is a hive's lifecycle setup.
type Config struct {
	Entries []Entry
	// Engines are resolved (ResolveEngines) already.
	Engines map[string]*Engine
	// SimGPUs are made-up GPUs (--sim-gpus); GPUs reads the real ones
	// (NVML); both may be empty.
	SimGPUs []wsapi.GPUInfo
	GPUs    func() []wsapi.GPUInfo
	// IdleUnload stops a worker rbee started that served nothing this
	// long; LoadTimeout fails an engine not ready this long after start.
	IdleUnload, LoadTimeout, StopGrace time.Duration
	// LogDir takes each engine's output, one file per start.
	LogDir string
	// StateFile, when set, keeps what the hive learned of each model (its
	// VRAM, its load time) across restarts.
	StateFile  string
	CgroupRoot string

	// Hooks into the hive. Register tells the collector of a ready worker
	// (ManagedGroup/instance); Leases reports what a worker serves and
	// when its last lease ended; Drain makes the hive refuse it new
	// leases; Notify asks for a telemetry report now.
	Register func(instance string, pid int, model string, slots int) error
	Leases   func(worker string) (int, time.Time)
	Drain    func(worker string)
	Notify   func()
	Logger   *slog.Logger
	Metrics  prometheus.Registerer
}

// item is one catalog entry and what this hive learned of it.
type item struct {
	Entry
	engine      *Engine
	bytes       int64
	unavailable string
	learnedMB   uint64 // peak VRAM of its last run
	loadMS      int64
	failures    int
	failedAt    time.Time
	failReason  string
}

func (it *item) simulated() bool { return it.engine != nil && it.engine.Sim }

// vram is the footprint placement counts on, and where it comes from.
func (it *item) vram() (uint64, string) {
	switch {
	case it.learnedMB > 0:
		return it.learnedMB, "learned"
	case it.VRAMMB > 0:
		return it.VRAMMB, "configured"
	case it.simulated():
		if it.bytes > 0 {
			return uint64((it.bytes + 1<<20 - 1) >> 20), "file size"
		}
		return simDefaultVRAMMB, "simulated default"
	}
	// llama-server's -c is the context of all slots together.
	return EstimateVRAMMB(it.bytes, it.Ctx, 1), "estimated"
}

// worker is an engine this hive started.
type worker struct {
	instance  string // its port
	it        *item
	state     string
	since     time.Time
	readyAt   time.Time
	pid       int
	gpus      []int
	vramMB    uint64
	startID   string
	startedBy string
	peakMB    uint64
	leases    int
	lastUsed  time.Time
	stopWhy   string        // set once a stop is asked for
	stopCh    chan struct{} // closed to ask for the stop
	exited    chan struct{} // closed when it is gone and forgotten
}

// Manager runs a hive's model lifecycle. Its goroutines (one per engine it
// started) end with Run's context or Close, which stop every engine.
type Manager struct {
	cfg    Config
	log    *slog.Logger
	client *http.Client
	ctx    context.Context
	cancel context.CancelFunc
	wg     sync.WaitGroup

	saveMu   sync.Mutex
	mu       sync.Mutex
	items    []*item
	workers  map[string]*worker // by instance
	seen     []string           // recent start ids, to drop repeats
	closed   bool
	dirty    bool // learned figures changed since StateFile was written
	loads    *prometheus.CounterVec
	loadTime *prometheus.HistogramVec
	states   *prometheus.GaugeVec
}

// New checks the catalog: an entry that cannot start is kept and reported
// with why (and logged once), never fatal for the others. Two entries with
// one name are an error.
func New(cfg Config) (*Manager, error) {
	if cfg.IdleUnload <= 0 {
		cfg.IdleUnload = DefaultIdleUnload
	}
	if cfg.LoadTimeout <= 0 {
		cfg.LoadTimeout = DefaultLoadTimeout
	}
	if cfg.StopGrace <= 0 {
		cfg.StopGrace = DefaultStopGrace
	}
	if cfg.LogDir == "" {
		cfg.LogDir = filepath.Join(os.TempDir(), "rbee-engines")
	}
	log := cfg.Logger
	if log == nil {
		log = slog.New(slog.DiscardHandler)
	}
	m := &Manager{cfg: cfg, log: log, workers: map[string]*worker{},
		client: &http.Client{Timeout: pollTimeout, Transport: &http.Transport{DisableKeepAlives: true}}}
	m.ctx, m.cancel = context.WithCancel(context.Background())
	names := map[string]bool{}
	for _, e := range cfg.Entries {
		if names[e.Name] {
			return nil, fmt.Errorf("model %q is named twice (--model, --models-dir)", e.Name)
		}
		names[e.Name] = true
		it := &item{Entry: e, engine: cfg.Engines[e.Engine]}
		it.unavailable = e.Check(cfg.Engines)
		if it.unavailable == "" && !(it.simulated() && e.Path == "") {
			if n, err := SizeOnDisk(e.Path); err == nil {
				it.bytes = n
			} else if !it.simulated() {
				it.unavailable = err.Error()
			}
		}
		if it.unavailable != "" {
			log.Warn("model cannot start on this hive", "model", e.Name, "reason", it.unavailable)
		}
		m.items = append(m.items, it)
	}
	m.loadState()
	m.metrics(cfg.Metrics)
	m.removeStaleCgroups()
	return m, nil
}

// removeStaleCgroups removes the empty cgroups of engines a hive started
// before it was killed outright (its engines died with it, their cgroups
// stayed). A cgroup with a process in it is not empty and stays.
func (m *Manager) removeStaleCgroups() {
	if m.cfg.CgroupRoot == "" {
		return
	}
	dir := filepath.Join(m.cfg.CgroupRoot, "rbee.slice", wsapi.ManagedGroup)
	ents, err := os.ReadDir(dir)
	if err != nil {
		return
	}
	n := 0
	for _, e := range ents {
		if e.IsDir() && os.Remove(filepath.Join(dir, e.Name())) == nil {
			n++
		}
	}
	if n > 0 {
		m.log.Info("removed the empty cgroups of engines an earlier hive started", "count", n, "dir", dir)
	}
}

// learned is what StateFile keeps of one model.
type learned struct {
	VRAMMB uint64 `json:"vram_mb,omitempty"`
	LoadMS int64  `json:"load_ms,omitempty"`
}

// loadState reads what an earlier run learned; a missing or unreadable
// file only means starting from estimates.
func (m *Manager) loadState() {
	if m.cfg.StateFile == "" {
		return
	}
	b, err := os.ReadFile(m.cfg.StateFile)
	if err != nil {
		if !errors.Is(err, os.ErrNotExist) {
			m.log.Warn("read learned model figures", "file", m.cfg.StateFile, "err", err)
		}
		return
	}
	var st map[string]learned
	if err := json.Unmarshal(b, &st); err != nil {
		m.log.Warn("read learned model figures", "file", m.cfg.StateFile, "err", err)
		return
	}
	for _, it := range m.items {
		if l, ok := st[it.Name]; ok {
			it.learnedMB, it.loadMS = l.VRAMMB, l.LoadMS
		}
	}
}

// saveState writes the learned figures if they changed, outside the lock.
func (m *Manager) saveState() {
	// One writer at a time, and a caller returns only once what it saw
	// is on disk.
	m.saveMu.Lock()
	defer m.saveMu.Unlock()
	m.mu.Lock()
	if !m.dirty || m.cfg.StateFile == "" {
		m.mu.Unlock()
		return
	}
	m.dirty = false
	st := map[string]learned{}
	for _, it := range m.items {
		if it.learnedMB > 0 || it.loadMS > 0 {
			st[it.Name] = learned{VRAMMB: it.learnedMB, LoadMS: it.loadMS}
		}
	}
	m.mu.Unlock()
	b, _ := json.MarshalIndent(st, "", "  ")
	tmp := m.cfg.StateFile + ".tmp"
	err := os.WriteFile(tmp, b, 0o644)
	if err == nil {
		err = os.Rename(tmp, m.cfg.StateFile)
	}
	if err != nil {
		m.log.Warn("save learned model figures", "file", m.cfg.StateFile, "err", err)
	}
}

func (m *Manager) metrics(reg prometheus.Registerer) {
	m.loads = prometheus.NewCounterVec(prometheus.CounterOpts{Name: "rbee_model_loads_total",
		Help: "Engine starts this hive made, by model and result (ready, failed, timeout, stopped)."}, []string{"model", "result"})
	m.loadTime = prometheus.NewHistogramVec(prometheus.HistogramOpts{Name: "rbee_model_load_seconds",
		Help:    "Time from an engine's start to its first ready answer.",
		Buckets: []float64{0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 120, 300, 600}}, []string{"model"})
	m.states = prometheus.NewGaugeVec(prometheus.GaugeOpts{Name: "rbee_managed_workers",
		Help: "Workers rbee started on this hive, by state."}, []string{"state"})
	if reg != nil {
		reg.MustRegister(m.loads, m.loadTime, m.states)
	}
}

// Run unloads idle workers until ctx ends or Close. It leaves the engines
// running: a node that leaves gracefully lets the requests they serve
// finish, then calls Close.
func (m *Manager) Run(ctx context.Context) error {
	t := time.NewTicker(time.Second)
	defer t.Stop()
	for {
		select {
		case <-ctx.Done():
			return nil
		case <-m.ctx.Done():
			return nil
		case now := <-t.C:
			m.unloadIdle(now)
			m.saveState()
		}
	}
}

// Close stops every engine this hive started, waits for them, and keeps
// what it learned (StateFile).
func (m *Manager) Close() {
	m.mu.Lock()
	m.closed = true
	m.mu.Unlock()
	m.cancel()
	m.wg.Wait()
	m.saveState()
}

// unloadIdle stops the ready workers that served nothing for IdleUnload.
func (m *Manager) unloadIdle(now time.Time) {
	m.mu.Lock()
	defer m.mu.Unlock()
	for _, w := range m.workers {
		if w.state != wsapi.ManagedReady || w.stopWhy != "" {
			continue
		}
		m.refreshLeases(w)
		if w.leases == 0 && now.Sub(w.lastUsed) >= m.cfg.IdleUnload {
			m.stopLocked(w, fmt.Sprintf("idle for %s", now.Sub(w.lastUsed).Round(time.Second)))
		}
	}
}

func (m *Manager) refreshLeases(w *worker) {
	if m.cfg.Leases == nil {
		return
	}
	n, last := m.cfg.Leases(wsapi.WorkerID(wsapi.ManagedGroup, w.instance))
	w.leases = n
	if last.After(w.lastUsed) {
		w.lastUsed = last
	}
}

// stopLocked asks w to stop: it takes no new lease, and its supervisor
// stops it once the leases it serves have ended.
func (m *Manager) stopLocked(w *worker, why string) {
	if w.stopWhy != "" {
		return
	}
	w.stopWhy = why
	if w.state == wsapi.ManagedReady {
		w.state = wsapi.ManagedDraining
	}
	if m.cfg.Drain != nil {
		m.cfg.Drain(wsapi.WorkerID(wsapi.ManagedGroup, w.instance))
	}
	close(w.stopCh)
	m.log.Info("stopping worker", "model", w.it.Name, "instance", w.instance, "why", why)
	m.notify()
}

func (m *Manager) notify() {
	if m.cfg.Notify != nil {
		m.cfg.Notify()
	}
}

// Start carries out a queen's model_start: stop the workers it evicts, then
// start the model's engine. It returns at once; the hive's reports say how
// it goes.
func (m *Manager) Start(ms *wsapi.ModelStart, queen string) {
	m.mu.Lock()
	defer m.mu.Unlock()
	if m.closed || slices.Contains(m.seen, ms.StartID) {
		return
	}
	m.seen = append(m.seen, ms.StartID)
	if len(m.seen) > 256 {
		m.seen = m.seen[len(m.seen)-256:]
	}
	var it *item
	for _, c := range m.items {
		if c.Name == ms.Model {
			it = c
		}
	}
	if it == nil {
		m.log.Warn("queen asked to start a model this hive does not have", "model", ms.Model, "queen", queen)
		return
	}
	if it.unavailable != "" {
		m.log.Warn("queen asked to start a model that cannot start here", "model", ms.Model, "reason", it.unavailable)
		return
	}
	var evict []*worker
	for _, inst := range ms.Evict {
		if w := m.workers[inst]; w != nil {
			m.stopLocked(w, "evicted to make room for "+it.Name)
			evict = append(evict, w)
		}
	}
	vram := ms.VRAMMB
	if vram == 0 {
		vram, _ = it.vram()
	}
	m.wg.Add(1)
	go func() {
		defer m.wg.Done()
		m.run(it, ms, queen, vram, evict)
	}()
}

// run starts one engine and supervises it until it exits or is stopped.
func (m *Manager) run(it *item, ms *wsapi.ModelStart, queen string, vram uint64, evict []*worker) {
	for _, w := range evict {
		select {
		case <-w.exited:
		case <-m.ctx.Done():
			return
		}
	}
	start := time.Now()
	port, err := m.freePort()
	if err != nil {
		m.fail(it, start, "failed", fmt.Sprintf("no free port: %v", err))
		return
	}
	w := &worker{instance: strconv.Itoa(port), it: it, state: wsapi.ManagedLoading, since: start, gpus: ms.GPUs,
		vramMB: vram, startID: ms.StartID, startedBy: queen, stopCh: make(chan struct{}), exited: make(chan struct{})}
	defer close(w.exited)
	argv, err := m.argv(it, w)
	if err != nil {
		m.fail(it, start, "failed", err.Error())
		return
	}
	out := &tail{}
	var sink io.Writer = out
	logPath := filepath.Join(m.cfg.LogDir, fmt.Sprintf("%s-%d.log", safeFile(it.Name), port))
	if err := os.MkdirAll(m.cfg.LogDir, 0o755); err == nil {
		pruneLogs(m.cfg.LogDir, safeFile(it.Name), keepLogs-1)
		if f, err := os.OpenFile(logPath, os.O_CREATE|os.O_WRONLY|os.O_TRUNC, 0o644); err == nil {
			defer f.Close()
			sink = io.MultiWriter(&capped{w: f, left: maxLogBytes}, out)
		}
	}
	var env []string
	if len(w.gpus) > 0 {
		ids := make([]string, len(w.gpus))
		for i, g := range w.gpus {
			ids[i] = strconv.Itoa(g)
		}
		env = append(env, "CUDA_VISIBLE_DEVICES="+strings.Join(ids, ","))
	}
	proc, err := launch.Start(launch.StartConfig{CgroupRoot: m.cfg.CgroupRoot, Group: wsapi.ManagedGroup, Instance: w.instance,
		Argv: argv, Env: env, Output: sink, Logger: m.log})
	if err != nil {
		m.fail(it, start, "failed", err.Error())
		return
	}
	w.pid = proc.Pid
	m.mu.Lock()
	m.workers[w.instance] = w
	m.mu.Unlock()
	m.log.Info("starting worker", "model", it.Name, "engine", it.Engine, "instance", w.instance, "pid", proc.Pid,
		"gpus", w.gpus, "in_cgroup", proc.InCgroup, "log", logPath, "queen", queen)
	m.notify()
	defer func() {
		m.mu.Lock()
		if m.workers[w.instance] == w {
			delete(m.workers, w.instance)
		}
		m.mu.Unlock()
		m.notify()
	}()

	result, why := m.await(it, w, proc, out, start)
	loadTime := time.Since(start)
	if result != "ready" {
		proc.Stop(m.cfg.StopGrace)
		if result == "stopped" {
			m.loads.WithLabelValues(it.Name, result).Inc()
			m.log.Info("worker stopped while loading", "model", it.Name, "instance", w.instance, "why", why)
			return
		}
		m.fail(it, start, result, why)
		return
	}
	m.loads.WithLabelValues(it.Name, "ready").Inc()
	m.loadTime.WithLabelValues(it.Name).Observe(loadTime.Seconds())
	m.mu.Lock()
	w.state, w.readyAt, w.lastUsed = wsapi.ManagedReady, time.Now(), time.Now()
	it.loadMS, it.failures, it.failReason = loadTime.Milliseconds(), 0, ""
	m.dirty = true
	m.mu.Unlock()
	if m.cfg.Register != nil {
		if err := m.cfg.Register(w.instance, proc.Pid, it.Name, it.Slots); err != nil {
			m.log.Warn("register started worker", "instance", w.instance, "err", err)
		}
	}
	m.log.Info("worker ready", "model", it.Name, "instance", w.instance, "load_time", loadTime.Round(time.Millisecond))
	m.notify()

	select {
	case <-proc.Done():
		m.fail(it, start, "exited", fmt.Sprintf("%s after %s ready%s", exitText(proc.Err()),
			time.Since(w.readyAt).Round(time.Second), out.text()))
	case <-m.ctx.Done():
		proc.Stop(m.cfg.StopGrace)
	case <-w.stopCh:
		m.drain(w, proc)
		m.log.Info("worker stopped", "model", it.Name, "instance", w.instance, "why", m.whyStopped(w))
	}
}

func (m *Manager) whyStopped(w *worker) string {
	m.mu.Lock()
	defer m.mu.Unlock()
	return w.stopWhy
}

// await polls the engine until it answers ready, exits, runs out of time, or
// is stopped. It returns "ready", or the failure's result and reason.
func (m *Manager) await(it *item, w *worker, proc *launch.Process, out *tail, start time.Time) (result, why string) {
	base := "http://" + net.JoinHostPort("127.0.0.1", w.instance)
	deadline := time.NewTimer(m.cfg.LoadTimeout)
	defer deadline.Stop()
	poll := time.NewTimer(pollFast)
	defer poll.Stop()
	for {
		select {
		case <-proc.Done():
			return "failed", fmt.Sprintf("%s before it was ready%s", exitText(proc.Err()), out.text())
		case <-deadline.C:
			return "timeout", fmt.Sprintf("not ready within %s%s", m.cfg.LoadTimeout, out.text())
		case <-m.ctx.Done():
			return "stopped", "hive stopping"
		case <-w.stopCh:
			return "stopped", m.whyStopped(w)
		case <-poll.C:
		}
		if m.ready(base) {
			return "ready", ""
		}
		if time.Since(start) < pollFastFor {
			poll.Reset(pollFast)
		} else {
			poll.Reset(pollSlow)
		}
	}
}

// ready asks an engine whether it serves: llama-server's and vLLM's
// GET /health answers 200 once the model is loaded (503 before); a server
// without /health counts as ready when GET /v1/models answers 200.
func (m *Manager) ready(base string) bool {
	for _, path := range []string{"/health", "/v1/models"} {
		req, err := http.NewRequestWithContext(m.ctx, http.MethodGet, base+path, nil)
		if err != nil {
			return false
		}
		resp, err := m.client.Do(req)
		if err != nil {
			return false
		}
		_, _ = io.Copy(io.Discard, io.LimitReader(resp.Body, 64<<10))
		resp.Body.Close()
		switch {
		case resp.StatusCode == http.StatusOK:
			return true
		case resp.StatusCode != http.StatusNotFound:
			return false // loading (503) or broken: ask again
		}
	}
	return false
}

// drain waits for w's leases to end (it takes no new one), then stops it.
func (m *Manager) drain(w *worker, proc *launch.Process) {
	t := time.NewTicker(100 * time.Millisecond)
	defer t.Stop()
	for {
		m.mu.Lock()
		m.refreshLeases(w)
		n := w.leases
		m.mu.Unlock()
		if n == 0 {
			break
		}
		select {
		case <-proc.Done():
			return
		case <-m.ctx.Done():
			proc.Stop(m.cfg.StopGrace)
			return
		case <-t.C:
		}
	}
	proc.Stop(m.cfg.StopGrace)
}

// fail records a start that did not get (or stay) ready: the queen backs off
// from this model on this hive by the failures in a row.
func (m *Manager) fail(it *item, start time.Time, result, why string) {
	m.loads.WithLabelValues(it.Name, result).Inc()
	m.mu.Lock()
	it.failures++
	it.failedAt = time.Now()
	it.failReason = clean(why, 900)
	n := it.failures
	m.mu.Unlock()
	m.log.Warn("worker failed to start", "model", it.Name, "result", result, "after", time.Since(start).Round(time.Millisecond),
		"failures_in_a_row", n, "reason", why)
	m.notify()
}

// argv builds the engine's command line for w.
func (m *Manager) argv(it *item, w *worker) ([]string, error) {
	vars := map[string]string{"path": it.Path, "port": w.instance, "slots": strconv.Itoa(it.Slots),
		"ctx": strconv.Itoa(it.Ctx), "name": it.Name, "host": "127.0.0.1"}
	argv, err := it.engine.Argv(vars)
	if err != nil {
		return nil, fmt.Errorf("engine %s: %w", it.Engine, err)
	}
	if it.engine.Sim {
		total := uint64(0)
		for _, g := range m.cfg.SimGPUs {
			if slices.Contains(w.gpus, g.Index) {
				total += g.TotalVRAMMB
			}
		}
		argv = append(argv, "--load-ms", strconv.Itoa(it.LoadMS), "--model-vram-mb", strconv.FormatUint(w.vramMB, 10))
		if total > 0 {
			argv = append(argv, "--vram-mb", strconv.FormatUint(total, 10))
		}
	}
	return append(argv, it.Args...), nil
}

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
			VRAMMB: vram, VRAMSource: src, LoadMS: it.loadMS, MaxReplicas: it.MaxReplicas, Unavailable: clean(it.unavailable, 250),
			Failures: it.failures, FailedAt: it.failedAt, FailReason: it.failReason, Simulated: it.simulated()})
	}

	var gpus []wsapi.GPUInfo
	if len(m.cfg.SimGPUs) > 0 {
		gpus = slices.Clone(m.cfg.SimGPUs)
		for i := range gpus {
			for _, w := range m.workers {
				if slices.Contains(w.gpus, gpus[i].Index) {
					gpus[i].UsedVRAMMB += w.vramMB
				}
			}
		}
	} else if m.cfg.GPUs != nil {
		gpus = m.cfg.GPUs()
		for i := range gpus {
			for _, w := range m.workers {
				if w.state == wsapi.ManagedLoading && slices.Contains(w.gpus, gpus[i].Index) && w.vramMB > seen[w.instance] {
					gpus[i].ReservedMB += w.vramMB - seen[w.instance]
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
			StartedBy: w.startedBy, LastUsed: w.lastUsed, Leases: w.leases})
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

// Engine logs: the last keepLogs starts of each model are kept, each cut at
// maxLogBytes (vLLM logs every request), so a long-lived hive's disk does
// not fill with them.
const (
	keepLogs    = 5
	maxLogBytes = 64 << 20
)

// pruneLogs removes all but the newest keep logs of model in dir.
func pruneLogs(dir, model string, keep int) {
	paths, _ := filepath.Glob(filepath.Join(dir, model+"-*.log"))
	type logFile struct {
		path string
		mod  time.Time
	}
	var logs []logFile
	for _, p := range paths {
		// model-<port>.log only: another model's name may start with this one's.
		if _, err := strconv.Atoi(strings.TrimSuffix(strings.TrimPrefix(filepath.Base(p), model+"-"), ".log")); err != nil {
			continue
		}
		if st, err := os.Stat(p); err == nil {
			logs = append(logs, logFile{p, st.ModTime()})
		}
	}
	slices.SortFunc(logs, func(a, b logFile) int { return b.mod.Compare(a.mod) })
	for i := keep; i < len(logs); i++ {
		_ = os.Remove(logs[i].path)
	}
}

// capped writes to w until left bytes are written, then drops the rest
// (reporting it written: the engine must not fail for its log).
type capped struct {
	w    io.Writer
	left int64
}

func (c *capped) Write(p []byte) (int, error) {
	if c.left > 0 {
		n := min(int64(len(p)), c.left)
		if _, err := c.w.Write(p[:n]); err != nil {
			c.left = 0
		} else {
			c.left -= n
		}
	}
	return len(p), nil
}

// freePort asks the kernel for a free loopback port. Another process may
// take it before the engine binds it; the start then fails and is retried
// like any other failure.
func (m *Manager) freePort() (int, error) {
	for range 10 {
		l, err := net.Listen("tcp", "127.0.0.1:0")
		if err != nil {
			return 0, err
		}
		port := l.Addr().(*net.TCPAddr).Port
		l.Close()
		m.mu.Lock()
		_, taken := m.workers[strconv.Itoa(port)]
		m.mu.Unlock()
		if !taken { // another start may have just been given it
			return port, nil
		}
	}
	return 0, errors.New("no free port that no starting engine holds")
}

func exitText(err error) string {
	var ee launch.ExitError
	if errors.As(err, &ee) {
		return fmt.Sprintf("exited with status %d", ee.Code)
	}
	if err == nil {
		return "exited with status 0"
	}
	return err.Error()
}

func safeFile(name string) string {
	return strings.Map(func(r rune) rune {
		if r == '/' || r == '\\' || r < 0x20 {
			return '_'
		}
		return r
	}, name)
}

// clean makes s fit a telemetry text field: printable UTF-8 (engines color
// their logs with escape codes) and at most about n bytes.
func clean(s string, n int) string {
	s = strings.Map(func(r rune) rune {
		if r < 0x20 || r == 0x7f {
			return ' '
		}
		return r
	}, strings.ToValidUTF8(s, "?"))
	if len(s) > n {
		for n > 0 && !utf8.RuneStart(s[n]) {
			n--
		}
		s = s[:n] + "..."
	}
	return s
}

// tail keeps the last lines an engine wrote, for a failure's reason.
type tail struct {
	mu    sync.Mutex
	lines []string
	part  []byte
}

func (t *tail) Write(p []byte) (int, error) {
	t.mu.Lock()
	defer t.mu.Unlock()
	for _, b := range p {
		if b == '\n' || b == '\r' {
			t.push()
			continue
		}
		if len(t.part) < maxLineBytes {
			t.part = append(t.part, b)
		}
	}
	return len(p), nil
}

func (t *tail) push() {
	line := strings.TrimSpace(clean(string(t.part), maxLineBytes))
	t.part = t.part[:0]
	if line == "" {
		return
	}
	t.lines = append(t.lines, line)
	if len(t.lines) > tailLines {
		t.lines = t.lines[1:]
	}
}

// text is the last lines as ": a | b | c", or "" when it wrote nothing.
func (t *tail) text() string {
	t.mu.Lock()
	defer t.mu.Unlock()
	if len(t.part) > 0 {
		t.push()
	}
	if len(t.lines) == 0 {
		return ""
	}
	return ": " + strings.Join(t.lines, " | ")
}
