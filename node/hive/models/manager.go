package models

import (
	"context"
	"fmt"
	"log/slog"
	"net/http"
	"os"
	"path/filepath"
	"sync"
	"time"

	"github.com/prometheus/client_golang/prometheus"

	"github.com/rbee/rbee/node/hive/launch"
	"github.com/rbee/rbee/node/hive/modelfile"
	"github.com/rbee/rbee/wsapi"
)

// Defaults of Config.
const (
	DefaultIdleUnload  = 15 * time.Minute
	DefaultLoadTimeout = 10 * time.Minute
	// DefaultStopGrace is how long an engine gets to exit after SIGTERM:
	// vLLM takes a few seconds to free its GPU memory cleanly.
	DefaultStopGrace = 10 * time.Second
	// DefaultStableAfter is how long an engine must have been ready to
	// count as one that works: long past the first requests that a bad
	// build or a wrong flag fails on, short against the hours a good
	// engine runs.
	DefaultStableAfter = 30 * time.Second
	// simDefaultVRAMMB is a sim entry's footprint when it names neither
	// vram= nor a file to take the size of.
	simDefaultVRAMMB = 4096
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
	// StableAfter: an engine ready this long has its model's failures
	// forgotten, and if it then exits on its own it is started again
	// in place at once (see restartDelay) rather than backed off.
	StableAfter time.Duration
	// LogDir takes each engine's output, one file per start.
	LogDir string
	// RunDir records each running engine, so that a hive killed
	// outright has what it left running killed by the next (default
	// LogDir/running; hives may share it).
	RunDir string
	// StateFile, when set, keeps what the hive learned of each model (its
	// VRAM, its load time) across restarts.
	StateFile string
	// OllamaModels is where the ollama engine keeps the models it
	// creates (OLLAMA_MODELS); "" means a temporary folder removed by
	// Close.
	OllamaModels string
	CgroupRoot   string
	// ModelsDir is --models-dir: where a model copied from another hive
	// goes ("" takes none).
	ModelsDir string
	// ShareAll shares every entry with the other hives (--share-models):
	// they may copy its files to start it where this hive has no room.
	ShareAll bool
	// CopyModel copies model's files from the hives from into ModelsDir
	// and returns where the model is (a .gguf file or a folder); progress
	// hears how far it got. Nil: this hive starts no model it must copy.
	CopyModel func(ctx context.Context, model string, from []string, progress func(done, total int64, rate float64)) (string, error)
	// DigestFile keeps the SHA-256 of each model file peers fetched, so
	// that a file is hashed once per version (files.go); "" keeps them
	// in memory.
	DigestFile string

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
	facts       *modelfile.Facts // nil when no parser read its files
	unavailable string
	learnedMB   uint64 // peak VRAM of its last run
	loadMS      int64
	failures    int
	failedAt    time.Time
	failReason  string
	// copyFrom: the model's files are not here yet; a start copies them
	// from these hives first (copy.go).
	copyFrom []string
}

func (it *item) simulated() bool { return it.engine != nil && it.engine.Sim }

// vram is the footprint placement counts on, and where it comes from.
func (it *item) vram() (uint64, string) {
	switch {
	case it.learnedMB > 0:
		return it.learnedMB, SourceLearned
	case it.VRAMMB > 0:
		return it.VRAMMB, SourceConfigured
	case it.simulated():
		if it.bytes > 0 {
			return uint64((it.bytes + 1<<20 - 1) >> 20), "file size"
		}
		return simDefaultVRAMMB, "simulated default"
	case it.facts != nil && it.facts.VRAMBytes > 0:
		return ceilMiB(it.facts.VRAMBytes), it.facts.Format
	}
	// llama-server's -c is the context of all slots together.
	return EstimateVRAMMB(it.bytes, it.Ctx, 1), SourceSize
}

func ceilMiB(b uint64) uint64 { return b>>20 + min(b&(1<<20-1), 1) }

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
	stage     string        // what it waits for before its engine starts
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
	ollama   ollamaStore

	// The digests of the model files peers fetch (files.go).
	digestOnce sync.Once
	digestC    *digestCache
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
	if cfg.StableAfter <= 0 {
		cfg.StableAfter = DefaultStableAfter
	}
	if cfg.LogDir == "" {
		cfg.LogDir = filepath.Join(os.TempDir(), "rbee-engines")
	}
	if cfg.RunDir == "" {
		cfg.RunDir = filepath.Join(cfg.LogDir, "running")
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
		it := m.newItem(e)
		if it.unavailable != "" {
			log.Warn("model cannot start on this hive", "model", e.Name, "reason", it.unavailable)
		}
		m.items = append(m.items, it)
	}
	m.loadState()
	m.metrics(cfg.Metrics)
	// Before any start: an engine a crashed hive left would hold its
	// port and VRAM, and serve beside the copy this hive starts.
	if _, err := launch.KillLeftovers(cfg.RunDir, log); err != nil {
		log.Warn("kill the engines a crashed hive left running", "dir", cfg.RunDir, "err", err)
	}
	m.removeStaleCgroups()
	return m, nil
}

// newItem makes catalog entry e an item: its engine, size and what its
// files say, or why it cannot start.
func (m *Manager) newItem(e Entry) *item {
	it := &item{Entry: e, engine: m.cfg.Engines[e.Engine]}
	it.unavailable = e.Check(m.cfg.Engines)
	// The size counts even when the engine cannot start it: its file is
	// there for a peer to copy.
	if e.Path != "" {
		if n, err := SizeOnDisk(e.Path); err == nil {
			it.bytes = n
		} else if it.unavailable == "" && !it.simulated() {
			it.unavailable = err.Error()
		}
	}
	if it.unavailable == "" && !it.simulated() {
		if f, err := ReadFacts(e); err != nil {
			it.unavailable = err.Error()
		} else {
			it.facts = f
		}
	}
	return it
}

// removeStaleCgroups removes the empty cgroups of engines a hive started
// before it was killed outright (KillLeftovers has killed what they held,
// their cgroups stayed). A cgroup with a process in it is not empty and
// stays: another hive on this machine may run it.
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

func (m *Manager) metrics(reg prometheus.Registerer) {
	m.loads = prometheus.NewCounterVec(prometheus.CounterOpts{Name: "rbee_model_loads_total",
		Help: "Engine starts this hive made, by model and result (ready, failed, timeout, stopped; crashed: exited after serving well, restarted in place)."}, []string{"model", "result"})
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
	if err := m.ollama.close(); err != nil {
		m.log.Warn("remove the ollama engine's models", "err", err)
	}
}

func (m *Manager) notify() {
	if m.cfg.Notify != nil {
		m.cfg.Notify()
	}
}
