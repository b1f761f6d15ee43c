package telemetry

import (
	"context"
	"fmt"
	"log/slog"
	"net/http"
	"slices"
	"strings"
	"sync"
	"time"

	"github.com/rbee/rbee/internal/backoff"
	"github.com/rbee/rbee/wsapi"
)

const mib = 1 << 20

// WorkerGPU is one worker's GPU figures, summed over its processes and the
// devices they use.
type WorkerGPU struct {
	UtilPct     float64
	VRAMMB      uint64
	TotalVRAMMB uint64
}

// ModelInfo is what a worker serves, as far as rbee could learn.
type ModelInfo struct {
	Model string // "" when unknown
	// Models is every model the worker serves when it serves more than
	// one (an Ollama: all it has installed), Model first; nil otherwise.
	Models []string
	// Aliases are the worker's own names for Model when the user named it
	// otherwise: what its API or command line calls it.
	Aliases []string
	Slots   int // 0 when unknown
	// Refresh: what the worker serves may change while it runs (an
	// Ollama pulls and removes models), so its API is asked again every
	// probeRetry.
	Refresh bool
	// Simulated is true for `rbee worker simulate`: its GPU figures are
	// read from its API, and marked simulated.
	Simulated bool
	// Engine is the engine's kind and version as its API tells them
	// ("ollama 0.17.4", "llama.cpp b5000"); "" when it does not.
	Engine string
}

// CmdlineModel is ModelFromCmdline in the shape CollectorConfig.FromCmdline
// takes.
func CmdlineModel(argv []string) ModelInfo {
	m, slots := ModelFromCmdline(argv)
	return ModelInfo{Model: m, Slots: slots}
}

// ProbeModel is Probe in the shape CollectorConfig.Probe takes: the models
// the worker serves (at most wsapi.MaxWorkerModels), and its slots.
func (p APIProber) ProbeModel(ctx context.Context, baseURL string) (ModelInfo, error) {
	info, err := p.Probe(ctx, baseURL)
	if err != nil {
		return ModelInfo{}, err
	}
	out := ModelInfo{Slots: info.Slots, Simulated: info.Simulated, Refresh: info.Kind == KindOllama, Engine: engineName(info)}
	if len(info.Models) > 0 {
		out.Model = info.Models[0]
	}
	if len(info.Models) > 1 {
		out.Models = info.Models[:min(len(info.Models), wsapi.MaxWorkerModels)]
	}
	return out, nil
}

// engineName is info's engine kind and version, "" for what names no
// engine (the OpenAI API alone, the simulator).
func engineName(info APIInfo) string {
	if info.Simulated || (info.Kind != KindOllama && info.Kind != KindLlamaServer) {
		return ""
	}
	// What a worker says goes on the wire, where Validate wants short
	// printable text: anything else in it is dropped.
	v := strings.Map(func(r rune) rune {
		if r <= ' ' || r > '~' {
			return -1
		}
		return r
	}, info.Version)
	if v == "" {
		return info.Kind
	}
	return info.Kind + " " + v[:min(len(v), maxVersionLen)]
}

// maxVersionLen bounds the version in ProcessStats.Engine: one is a few
// characters.
const maxVersionLen = 40

// NoCgroups as CollectorConfig.CgroupRoot turns cgroup discovery off.
const NoCgroups = "none"

// defaultSlots is a worker's slots when neither the user, its API nor its
// command line says: one request at a time is always safe.
const defaultSlots = 1

// CollectorConfig configures a Collector. Zero values mean: find the cgroup
// root, no static workers, no GPU figures, command-line model detection only.
type CollectorConfig struct {
	// CgroupRoot is the cgroup v2 mount; empty finds it in
	// /proc/self/mountinfo; NoCgroups looks at no cgroups (rbee demo's
	// hives, which must not each report the machine's real workers).
	CgroupRoot string
	// Workers are servers rbee did not start (--worker).
	Workers []WorkerSpec
	// GPU returns the GPU figures of each worker, given each worker's pids,
	// in order; nil means no GPU figures.
	GPU func(workers [][]int32) []WorkerGPU
	// Probe asks a worker's own API what it serves; nil means command line
	// only. It is called with a short deadline, at most one worker a tick.
	Probe func(ctx context.Context, baseURL string) (ModelInfo, error)
	// FromCmdline names the model from a worker's command line.
	FromCmdline func(argv []string) ModelInfo
	// SimGPU reads the made-up GPU figures of a simulated worker (one
	// whose probe said Simulated), every tick, with a short deadline; nil
	// asks the worker's GET /rbee/sim/gpu.
	SimGPU func(ctx context.Context, baseURL string) (WorkerGPU, error)
	// CheckHealth tells whether a --worker server is up, every tick,
	// within healthWait; the error says why not. Nil asks the worker's
	// GET /health, else GET /v1/models (APIProber.CheckHealth).
	CheckHealth func(ctx context.Context, baseURL string) error
	Logger      *slog.Logger
}

// Collector is a hive's hive.Collector: once a tick it lists the workers
// (cgroups under rbee.slice and --worker servers), measures them and returns
// them in the wire's shape. Not safe for concurrent use; the hive calls it
// from one goroutine.
type Collector struct {
	// mu guards registered, which the node's API goroutines write while
	// Collect runs on the hive's.
	mu         sync.Mutex
	registered map[string]registration // by group/instance
	endpoints  map[string]string       // by group/instance, from the last Collect

	cfg    CollectorConfig
	log    *slog.Logger
	cg     *CgroupTracker // nil without cgroup v2
	procs  *ProcSampler
	tree   *treeWalker // descendants of workers outside cgroups
	static []staticWorker
	models map[string]*modelState // by group/instance
	probeQ int                    // round robin over workers needing a probe
	// prober reads simulated workers' GPU figures and checks --worker
	// servers' health when cfg.SimGPU and cfg.CheckHealth are nil: one
	// client for every tick, no idle connections kept.
	prober APIProber
}

// modelState is what is known of one worker's model, by source; info says
// which wins.
type modelState struct {
	configured ModelInfo // what the user named (--worker, rbee worker run)
	api        ModelInfo // what the worker's API said
	cmdline    ModelInfo // what its command line says
	// probed: the API answered, with a model, or at all when the model is
	// configured (the probe then only learns slots and Simulated).
	probed     bool
	probedAt   time.Time
	probeFails int // in a row; spaces the retries out
	baseURL    string
	simWarned  bool // a failed /rbee/sim/gpu read was logged
}

// info is what the worker serves: a configured model and slots win, then
// what its API said, then its command line.
func (m *modelState) info() ModelInfo {
	out := ModelInfo{Model: m.cmdline.Model, Slots: m.cmdline.Slots, Simulated: m.api.Simulated, Engine: m.api.Engine}
	if m.api.Model != "" {
		out.Model, out.Models = m.api.Model, m.api.Models
	}
	if m.api.Slots > 0 {
		out.Slots = m.api.Slots
	}
	if m.configured.Model != "" {
		out.Model, out.Models = m.configured.Model, nil
		out.Aliases = ownNames(m.configured.Model, m.api, m.cmdline)
	}
	if m.configured.Slots > 0 {
		out.Slots = m.configured.Slots
	}
	return out
}

// How often to retry what failed: finding a --worker's pid (a process-table
// walk) and asking a worker's API (it may still be loading its model).
const (
	pidRetry   = 10 * time.Second
	probeRetry = 30 * time.Second
	probeWait  = 300 * time.Millisecond
)

// NewCollector sets up discovery. A machine without cgroup v2 is measured by
// process alone; that is said once here, not every tick.
func NewCollector(cfg CollectorConfig) *Collector {
	c := &Collector{cfg: cfg, log: cfg.Logger, procs: NewProcSampler(), models: make(map[string]*modelState), registered: make(map[string]registration),
		prober: APIProber{Client: &http.Client{Transport: &http.Transport{DisableKeepAlives: true}}}}
	if c.log == nil {
		c.log = slog.New(slog.DiscardHandler)
	}
	c.tree = newTreeWalker("/proc", c.log.Debug)
	root := cfg.CgroupRoot
	if root == NoCgroups {
		root = ""
	} else if root == "" {
		var err error
		if root, err = FindCgroupRoot(); err != nil {
			c.log.Info("no cgroup v2: workers are found from --worker only and measured per process", "reason", err)
		}
	}
	if root != "" {
		c.cg = NewCgroupTracker(CgroupReader{Root: root})
	}
	for _, w := range cfg.Workers {
		c.static = append(c.static, staticWorker{spec: w})
	}
	return c
}

// RegisterWorker records a worker started by `rbee worker run`: its model and
// slots describe its cgroup worker, or, when it runs outside any cgroup, it is
// measured by pid until that process exits.
func (c *Collector) RegisterWorker(group, instance string, pid int32, model string, slots int) error {
	if pid <= 0 {
		return fmt.Errorf("register worker %s/%s: bad pid %d", group, instance, pid)
	}
	c.mu.Lock()
	defer c.mu.Unlock()
	if len(c.registered) >= maxRegistered {
		return fmt.Errorf("register worker %s/%s: %d workers registered already", group, instance, maxRegistered)
	}
	c.registered[wsapi.WorkerID(group, instance)] = registration{group: group, instance: instance, pid: pid, info: ModelInfo{Model: model, Slots: slots}}
	return nil
}

// maxRegistered bounds what the local API can make a collector track.
const maxRegistered = 1024

// Collect returns this tick's workers. An error comes with the workers that
// could be read; it names what could not.
func (c *Collector) Collect(ctx context.Context) ([]wsapi.ProcessStats, error) {
	// The hive's hive.Collector passes no time: the tick's is read here,
	// once, and everything below takes it.
	now := time.Now()
	srcs, err := c.sources(ctx, now)
	checks := c.startHealthChecks(ctx, srcs)
	queries := make([]ProcQuery, len(srcs))
	for i := range srcs {
		queries[i] = srcs[i].query()
	}
	ps := c.procs.Sample(ctx, queries, now)
	out := make([]wsapi.ProcessStats, len(srcs))
	for i := range srcs {
		out[i] = srcs[i].stats(ps[i])
		c.noteModel(out[i].ID(), ps[i].Cmdline, srcs[i].baseURL, srcs[i].configured)
	}
	c.fillGPU(srcs, out)
	c.probeOne(ctx, now)
	for i := range out {
		c.fillModel(&out[i])
	}
	c.fillSimulated(ctx, out)
	c.markHealth(ctx, checks, srcs, out, now)
	c.forgetModels(out)
	c.publishEndpoints(out)
	return out, err
}

// fillGPU gives each worker the GPU figures of its processes.
func (c *Collector) fillGPU(srcs []source, out []wsapi.ProcessStats) {
	if c.cfg.GPU == nil {
		return
	}
	pids := make([][]int32, len(srcs))
	for i := range srcs {
		pids[i] = srcs[i].pids
	}
	for i, g := range c.cfg.GPU(pids) {
		out[i].GPUUtilPct, out[i].VRAMMB, out[i].TotalVRAMMB = g.UtilPct, g.VRAMMB, g.TotalVRAMMB
	}
}

// fillModel gives the worker what it serves, as far as is known, and its
// slots: defaultSlots when nothing says.
func (c *Collector) fillModel(w *wsapi.ProcessStats) {
	w.Slots = defaultSlots
	m := c.models[w.ID()]
	if m == nil {
		return
	}
	info := m.info()
	if info.Model != "" {
		name := info.Model
		w.Model = &name
		w.Models = info.Models
		w.Aliases = info.Aliases
	}
	if info.Slots > 0 {
		w.Slots = info.Slots
	}
	w.Simulated = info.Simulated
	w.Engine = info.Engine
}

// publishEndpoints records each reported worker's API for Endpoint, which the
// hive's proxy calls from other goroutines.
func (c *Collector) publishEndpoints(live []wsapi.ProcessStats) {
	eps := make(map[string]string, len(live))
	for _, w := range live {
		id := w.ID()
		if m := c.models[id]; m != nil && m.baseURL != "" {
			eps[id] = m.baseURL
		}
	}
	c.mu.Lock()
	c.endpoints = eps
	c.mu.Unlock()
}

// Endpoint returns the base URL (http://127.0.0.1:PORT) of the worker
// group/instance as of the last Collect, or "" when it has none: the worker
// is gone, or its API address is unknown (a cgroup worker whose instance is
// not its port). Safe for concurrent use.
func (c *Collector) Endpoint(group, instance string) string {
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.endpoints[wsapi.WorkerID(group, instance)]
}

// Models returns what each worker serves, by group/instance, for callers that
// need slots (the scheduler).
func (c *Collector) Models() map[string]ModelInfo {
	out := make(map[string]ModelInfo, len(c.models))
	for k, m := range c.models {
		out[k] = m.info()
	}
	return out
}

// noteModel records what is known without I/O: what the user configured,
// and, until the worker's API has answered, its command line.
func (c *Collector) noteModel(id string, argv []string, baseURL string, configured ModelInfo) {
	m := c.models[id]
	if m == nil {
		m = &modelState{}
		c.models[id] = m
	}
	m.baseURL, m.configured = baseURL, configured
	if !m.probed && c.cfg.FromCmdline != nil && len(argv) > 0 {
		m.cmdline = c.cfg.FromCmdline(argv)
	}
}

// probeOne asks one worker's API per tick, so a hive with many workers never
// spends a tick waiting on them. A worker whose model is configured is asked
// too, once, for what only its API tells: slots and whether it is simulated.
func (c *Collector) probeOne(ctx context.Context, now time.Time) {
	if c.cfg.Probe == nil || len(c.models) == 0 {
		return
	}
	keys := make([]string, 0, len(c.models))
	for k, m := range c.models {
		due := !m.probed && now.Sub(m.probedAt) >= probeBackoff(m.probeFails)
		// A worker whose models change (Ollama) is asked again: a
		// failure keeps what it said last.
		due = due || m.probed && m.api.Refresh && now.Sub(m.probedAt) >= probeRetry
		if due && m.baseURL != "" {
			keys = append(keys, k)
		}
	}
	if len(keys) == 0 {
		return
	}
	slices.Sort(keys)
	c.probeQ = (c.probeQ + 1) % len(keys)
	m := c.models[keys[c.probeQ]]
	m.probedAt = now
	pctx, cancel := context.WithTimeout(ctx, probeWait)
	defer cancel()
	info, err := c.cfg.Probe(pctx, m.baseURL)
	if err != nil || (info.Model == "" && m.configured.Model == "") {
		m.probeFails++
		return // not up yet, or nothing installed: ask again later
	}
	if m.probed && !slices.Equal(servedNames(m.api), servedNames(info)) {
		c.log.Info("worker's models changed", "url", m.baseURL, "models", strings.Join(servedNames(info), ","))
	}
	m.api, m.probed, m.probeFails = info, true, 0
}

// ownNames is what a worker whose model the user named calls it itself:
// llama-server answers to its file's name, vLLM to its --served-model-name.
// A client that talked to the worker directly keeps using that name. Only a
// worker that serves one model has them: an Ollama named model=X still
// serves every model it has, each under its own name.
func ownNames(configured string, api, cmdline ModelInfo) []string {
	if len(api.Models) > 1 {
		return nil
	}
	var out []string
	for _, n := range []string{api.Model, cmdline.Model} {
		n = strings.TrimSpace(n)
		if n == "" || strings.EqualFold(n, configured) || len(out) == wsapi.MaxWorkerAliases {
			continue
		}
		if !slices.ContainsFunc(out, func(o string) bool { return strings.EqualFold(o, n) }) {
			out = append(out, n)
		}
	}
	return out
}

// servedNames is every model info names, Model first.
func servedNames(info ModelInfo) []string {
	if len(info.Models) > 0 {
		return info.Models
	}
	return []string{info.Model}
}

// probeBackoff spaces out the probes of a worker that does not answer: a
// worker started with its node answers within seconds, one loading a large
// model may take minutes.
func probeBackoff(fails int) time.Duration {
	return backoff.Policy{First: time.Second, Max: probeRetry}.Delay(fails)
}

func (c *Collector) forgetModels(live []wsapi.ProcessStats) {
	if len(c.models) <= len(live) {
		return
	}
	keep := make(map[string]bool, len(live))
	for _, w := range live {
		keep[w.ID()] = true
	}
	for k := range c.models {
		if !keep[k] {
			delete(c.models, k)
		}
	}
}
