package hive

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"slices"
	"time"

	"github.com/prometheus/client_golang/prometheus"

	"github.com/rbee/rbee/node/hive/models"
	"github.com/rbee/rbee/wsapi"
)

// Collector tells a hive which workers run on its machine and how they are
// doing. It is called once per telemetry tick; it must return promptly and
// report what it can (a partial list and an error) rather than nothing.
type Collector interface {
	Collect(ctx context.Context) ([]wsapi.ProcessStats, error)
}

// WorkerRegistrar takes workers announced over the local API by `rbee worker
// run`: their pid and, when the user named them, model and slots. The hive's
// collector implements it.
type WorkerRegistrar interface {
	RegisterWorker(group, instance string, pid int32, model string, slots int) error
}

// WorkerEndpoints knows each worker's API address; a Collector that finds
// workers by address (telemetry.Collector) implements it.
type WorkerEndpoints interface {
	Endpoint(group, instance string) string
}

// NoWorkers is the Collector of a node with no workers: it still reports, so
// the queen sees the hive online.
type NoWorkers struct{}

// Collect returns no workers.
func (NoWorkers) Collect(context.Context) ([]wsapi.ProcessStats, error) { return nil, nil }

// Leases is the data plane's lease table as the hive sees it: the requests
// its workers serve.
type Leases interface {
	// ReportLeases records this tick's workers (their slots), marks in
	// place the ones whose requests fail, and returns the requests the
	// hive is serving.
	ReportLeases(workers []wsapi.ProcessStats, now time.Time) []wsapi.LeaseInfo
	// WorkerLeases is how many requests worker (group/instance) serves
	// now and when its last one ended.
	WorkerLeases(worker string) (n int, lastEnd time.Time)
	// Drain makes the hive refuse worker new leases.
	Drain(worker string)
}

// ErrCannotRegister is returned by RegisterWorker when the hive's collector
// does not take registrations.
var ErrCannotRegister = errors.New("this hive's collector takes no registered workers")

// Config is a hive's setup, from its node.
type Config struct {
	// Name is the hive's (its node's) name, which its reports carry.
	Name      string
	Collector Collector
	// CollectTimeout bounds one collection: the telemetry interval, so a
	// slow collection never delays the next report.
	CollectTimeout time.Duration
	// Models is what the hive can start on demand (its catalog, engines,
	// GPUs); nil starts nothing. The agent fills in its hooks.
	Models *models.Config
	// CopyModel copies a model's files from other hives into the models
	// folder (models.Config.CopyModel); nil: this hive copies none.
	CopyModel func(ctx context.Context, model string, from []string, progress func(done, total int64, rate float64)) (string, error)
	Leases    Leases
	// Fence, when set, is the lowest election term a model_start may
	// carry (as for grants): a queen that was replaced, frozen or cut off
	// and not yet aware of it must not start models here, evicting what
	// the current queen placed.
	Fence func() uint64
	// Metrics takes the model lifecycle's figures.
	Metrics prometheus.Registerer
	Logger  *slog.Logger
}

// Agent is one hive. Report and StartModel are called by the node's session
// to the queen, one at a time; Endpoint and RegisterWorker by HTTP handlers,
// concurrently.
type Agent struct {
	cfg    Config
	log    *slog.Logger
	models *models.Manager // nil without a catalog
	// reportNow asks the session for a report at once, so a worker that
	// got ready is used within milliseconds, not a second.
	reportNow chan struct{}

	// The last collection, for reports between ticks, and the last
	// collector error logged; only Report touches them.
	lastWorkers []wsapi.ProcessStats
	lastErr     string
}

// New returns the hive of cfg; with a catalog it sets up the model
// lifecycle, which Run then runs.
func New(cfg Config) (*Agent, error) {
	if cfg.Collector == nil {
		cfg.Collector = NoWorkers{}
	}
	if cfg.Logger == nil {
		cfg.Logger = slog.New(slog.DiscardHandler)
	}
	a := &Agent{cfg: cfg, log: cfg.Logger, reportNow: make(chan struct{}, 1)}
	if cfg.Models == nil {
		return a, nil
	}
	mc := *cfg.Models
	mc.Logger = cfg.Logger
	mc.Metrics = cfg.Metrics
	if cfg.Leases != nil {
		mc.Leases = cfg.Leases.WorkerLeases
		mc.Drain = cfg.Leases.Drain
	}
	mc.Notify = a.askReport
	mc.CopyModel = cfg.CopyModel
	if reg, ok := cfg.Collector.(WorkerRegistrar); ok {
		mc.Register = func(instance string, pid int, model string, slots int) error {
			return reg.RegisterWorker(wsapi.ManagedGroup, instance, int32(pid), model, slots)
		}
	}
	m, err := models.New(mc)
	if err != nil {
		return nil, err
	}
	a.models = m
	return a, nil
}

// Run runs the model lifecycle (idle unloads, what it learned saved) until
// ctx ends; a hive without a catalog has nothing to run.
func (a *Agent) Run(ctx context.Context) error {
	if a.models == nil {
		return nil
	}
	return a.models.Run(ctx)
}

// Close stops the engines the hive started and waits for them. A hive that
// never ran started none.
func (a *Agent) Close() {
	if a.models != nil {
		a.models.Close()
	}
}

func (a *Agent) askReport() {
	select {
	case a.reportNow <- struct{}{}:
	default:
	}
}

// ReportNow yields when the model lifecycle changed (a worker got ready,
// stopped or failed) and the queen should hear at once.
func (a *Agent) ReportNow() <-chan struct{} { return a.reportNow }

// Report is this tick's hive_telemetry. fresh collects anew; otherwise (a
// report asked for by ReportNow) the last collection is reported again with
// the lifecycle's current state, rather than asking every simulated or
// --worker server over HTTP once more. A collector error is logged when it
// first appears or changes, not every tick.
func (a *Agent) Report(ctx context.Context, fresh bool) *wsapi.HiveTelemetry {
	if !fresh && a.lastWorkers != nil {
		return a.report(slices.Clone(a.lastWorkers))
	}
	cctx, cancel := context.WithTimeout(ctx, a.cfg.CollectTimeout)
	defer cancel()
	workers, err := a.cfg.Collector.Collect(cctx)
	switch {
	case err != nil && err.Error() != a.lastErr:
		a.lastErr = err.Error()
		a.log.Warn("collect telemetry", "err", err, "workers", len(workers))
	case err == nil && a.lastErr != "":
		a.lastErr = ""
		a.log.Info("collect telemetry recovered")
	}
	if workers == nil {
		workers = []wsapi.ProcessStats{}
	}
	a.lastWorkers = slices.Clone(workers)
	return a.report(workers)
}

// report is the hive's telemetry with workers: the lifecycle's state and the
// leases it serves added.
func (a *Agent) report(workers []wsapi.ProcessStats) *wsapi.HiveTelemetry {
	t := &wsapi.HiveTelemetry{Type: wsapi.TypeHiveTelemetry, HiveID: a.cfg.Name}
	if a.models != nil {
		workers, t.Catalog, t.GPUs, t.Managed = a.models.Report(workers)
		t.CopyEngines = a.models.CopyEngines()
		t.ModelsDirFreeBytes = a.models.ModelsDirFree()
	}
	now := time.Now()
	t.Timestamp, t.Workers = now.UTC(), workers
	if a.cfg.Leases != nil {
		t.Leases = a.cfg.Leases.ReportLeases(workers, now)
	}
	return t
}

// StartModel carries out the queen's model_start (queen names who asked).
// Starting happens in the background; the reports say how it goes.
func (a *Agent) StartModel(m *wsapi.ModelStart, queen string) error {
	if a.models == nil {
		return fmt.Errorf("start model %q: this node has no catalog", m.Model)
	}
	if err := m.Validate(); err != nil {
		return fmt.Errorf("bad model_start: %w", err)
	}
	if a.cfg.Fence != nil {
		if fence := a.cfg.Fence(); m.Term < fence {
			return fmt.Errorf("model_start for %q from queen %s at term %d: a queen at term %d replaced it", m.Model, queen, m.Term, fence)
		}
	}
	a.models.Start(m, queen)
	return nil
}

// Endpoint is the API address of worker group/instance, for the hive end of
// a request: a worker rbee started listens on its port, known from the
// moment it is ready (before a collection lists it); any other is the
// collector's to know.
func (a *Agent) Endpoint(group, instance string) string {
	if group == wsapi.ManagedGroup && a.models != nil {
		if ep := a.models.Endpoint(instance); ep != "" {
			return ep
		}
	}
	if ep, ok := a.cfg.Collector.(WorkerEndpoints); ok {
		return ep.Endpoint(group, instance)
	}
	return ""
}

// TakesRegistrations reports whether RegisterWorker can succeed: the
// collector takes workers `rbee worker run` announces.
func (a *Agent) TakesRegistrations() bool {
	_, ok := a.cfg.Collector.(WorkerRegistrar)
	return ok
}

// RegisterWorker takes a worker `rbee worker run` started, when the
// collector takes registrations (else ErrCannotRegister).
func (a *Agent) RegisterWorker(group, instance string, pid int32, model string, slots int) error {
	reg, ok := a.cfg.Collector.(WorkerRegistrar)
	if !ok {
		return ErrCannotRegister
	}
	return reg.RegisterWorker(group, instance, pid, model, slots)
}
