package wsapi

import (
	"fmt"
	"time"
)

// Message types of the model lifecycle (see DESIGN.md, "Model lifecycle").
const (
	// TypeModelStart: queen to hive, start a worker for a model.
	TypeModelStart = "model_start"
	// TypeLeaseWait: queen to entry node, once a second, where a waiting
	// request stands (for a streaming client's keep-alive comments).
	TypeLeaseWait = "lease_wait"
)

// Managed worker states, as hives report them in ManagedWorker.State.
const (
	ManagedLoading  = "loading"
	ManagedReady    = "ready"
	ManagedDraining = "draining"
)

// ManagedGroup is the worker group (cgroup rbee.slice/models/<instance>) of
// every worker rbee starts itself; its instance is the worker's port.
const ManagedGroup = "models"

// CatalogEntry is one model a hive can start: an addition to the seed's
// hive_telemetry (HiveTelemetry.Catalog, omitted when empty).
type CatalogEntry struct {
	Name   string `json:"name"`
	Engine string `json:"engine"`
	// Bytes is the model's size on disk (a file, or a folder's files).
	Bytes int64 `json:"bytes"`
	Slots int   `json:"slots"`
	Ctx   int   `json:"ctx,omitempty"`
	// VRAMMB is what placement counts on: learned from an earlier run on
	// this hive, else the entry's vram=, else estimated from what its files
	// say (a GGUF header; config.json and safetensors headers), else from
	// its size and ctx. VRAMSource says which: "learned", "configured",
	// "gguf", "safetensors", "size" (and for the sim engine "file size" or
	// "simulated default"). Hives before the file parsers said "estimated"
	// for both of the last.
	VRAMMB     uint64 `json:"vram_mb"`
	VRAMSource string `json:"vram_source"`
	// Facts is what the model's files say and what they make the engine
	// need, omitted when no parser read them.
	Facts *ModelFacts `json:"facts,omitempty"`
	// LoadMS is the last measured time from start to ready on this hive.
	LoadMS      int64 `json:"load_ms,omitempty"`
	MaxReplicas int   `json:"max_replicas,omitempty"`
	// Unavailable says why the entry cannot start (a missing file, an
	// engine whose binary is not found); empty when it can.
	Unavailable string `json:"unavailable,omitempty"`
	// Failures counts failed starts in a row (reset by a start that got
	// ready), FailedAt is the last, FailReason says why with the last
	// lines of the engine's output: the queen backs off from them.
	Failures   int       `json:"failures,omitempty"`
	FailedAt   time.Time `json:"failed_at,omitzero"`
	FailReason string    `json:"fail_reason,omitempty"`
	// Simulated marks the sim engine (`rbee worker simulate`).
	Simulated bool `json:"simulated,omitempty"`
	// MultiGPU says the entry's engine can split the model across several
	// GPUs of the hive (an even share on each): the queen may place it so
	// when no one GPU has room. Absent (older hives): one GPU only.
	MultiGPU bool `json:"multi_gpu,omitempty"`
	// Shared says other hives may copy the model's files from this one
	// (--share-models, or share=true on its --model) to start it where
	// this hive has no room.
	Shared bool `json:"shared,omitempty"`
	// SHA256 is a one-file model's digest (hex), once the hive has
	// computed it (a peer's first copy does; it is kept in --data-dir).
	SHA256 string `json:"sha256,omitempty"`
}

// ModelFacts is what a model's files say about it (CatalogEntry.Facts).
type ModelFacts struct {
	Format       string `json:"format"` // "gguf" or "safetensors"
	Architecture string `json:"architecture,omitempty"`
	Parameters   uint64 `json:"parameters,omitempty"`
	// Quantization is the GGUF file type ("Q4_K_M") or the dtype holding
	// most of the weights ("BF16").
	Quantization string `json:"quantization,omitempty"`
	Layers       int    `json:"layers,omitempty"`
	KVHeads      int    `json:"kv_heads,omitempty"`
	HeadDim      int    `json:"head_dim,omitempty"`
	// ContextLength is the context the model was trained for.
	ContextLength int  `json:"context_length,omitempty"`
	ChatTemplate  bool `json:"chat_template,omitempty"`
	// WeightsMB and KVCacheMB are on the GPU for the entry's ctx and
	// slots; EstimateMB is all the engine needs there (0 when the files
	// do not tell), whether or not placement counts on it.
	WeightsMB  uint64 `json:"weights_mb,omitempty"`
	KVCacheMB  uint64 `json:"kv_cache_mb,omitempty"`
	EstimateMB uint64 `json:"estimate_mb,omitempty"`
}

// GPUInfo is one GPU of a hive (HiveTelemetry.GPUs, omitted when empty).
type GPUInfo struct {
	Index       int     `json:"index"`
	Name        string  `json:"name"`
	TotalVRAMMB uint64  `json:"total_vram_mb"`
	UsedVRAMMB  uint64  `json:"used_vram_mb"`
	UtilPct     float64 `json:"util_pct"`
	// ReservedMB is VRAM promised to workers still loading beyond what
	// they hold yet: placement counts it as used.
	ReservedMB uint64 `json:"reserved_mb,omitempty"`
	// Simulated marks --sim-gpus: used VRAM is the sum of the simulated
	// workers placed on it.
	Simulated bool `json:"simulated,omitempty"`
}

// ManagedWorker is a worker rbee started on this hive (HiveTelemetry.Managed,
// omitted when empty): loading, ready or draining. A failed start leaves
// the list and is recorded on its catalog entry.
type ManagedWorker struct {
	// Instance is its port; the worker is ManagedGroup/Instance.
	Instance string `json:"instance"`
	Model    string `json:"model"`
	Engine   string `json:"engine"`
	State    string `json:"state"`
	// Since is when it started loading; ReadyAt when it got ready.
	Since   time.Time `json:"since"`
	ReadyAt time.Time `json:"ready_at,omitzero"`
	PID     int       `json:"pid,omitempty"`
	GPUs    []int     `json:"gpus,omitempty"`
	// VRAMMB is the footprint placement counted for it.
	VRAMMB uint64 `json:"vram_mb"`
	// StartID is the queen's model_start that asked for it, StartedBy
	// that queen's name.
	StartID   string `json:"start_id,omitempty"`
	StartedBy string `json:"started_by,omitempty"`
	// LastUsed is when its last lease ended (ReadyAt before any):
	// eviction takes the least recently used first.
	LastUsed time.Time `json:"last_used,omitzero"`
	Leases   int       `json:"leases"`
	// Stage says what a loading worker waits for before its engine
	// starts, in words: "copying 43% of 4.1 GiB at 1.1 GB/s, eta 12s"
	// while its model's files come from another hive. Empty otherwise.
	Stage string `json:"stage,omitempty"`
}

// ID is the worker's group/instance.
func (m *ManagedWorker) ID() string { return WorkerID(ManagedGroup, m.Instance) }

// ModelStart asks a hive to start a worker for Model on GPUs, after stopping
// the idle workers in Evict (instances of ManagedGroup) to make room.
type ModelStart struct {
	Type    string   `json:"type"`
	StartID string   `json:"start_id"`
	Model   string   `json:"model"`
	GPUs    []int    `json:"gpus,omitempty"`
	Evict   []string `json:"evict,omitempty"`
	// VRAMMB is the footprint the queen counted, for the hive's report.
	VRAMMB uint64 `json:"vram_mb,omitempty"`
	Term   uint64 `json:"term,omitempty"`
	// Copy, when set, starts a model this hive does not have: it copies
	// the files from the hives From first (their catalogs share it), into
	// its --models-dir, and serves it as they do.
	Copy *ModelCopy `json:"copy,omitempty"`
}

// ModelCopy is how a hive gets and serves a model it copies from others.
type ModelCopy struct {
	From   []string `json:"from"`
	Engine string   `json:"engine"`
	Slots  int      `json:"slots,omitempty"`
	Ctx    int      `json:"ctx,omitempty"`
}

// LeaseWait tells an entry node where a waiting request stands. Loading
// names a model start under way that the request waits for.
type LeaseWait struct {
	Type      string `json:"type"`
	RequestID string `json:"request_id"`
	Position  int    `json:"position"`
	ETAMS     int64  `json:"eta_ms,omitempty"`
	// Loading, LoadingHive and LoadingMS: the worker being started for
	// the model, where, and for how long so far.
	Loading     string `json:"loading,omitempty"`
	LoadingHive string `json:"loading_hive,omitempty"`
	LoadingMS   int64  `json:"loading_ms,omitempty"`
	// LoadingStage is the worker's stage before its engine starts
	// (ManagedWorker.Stage), empty when none.
	LoadingStage string `json:"loading_stage,omitempty"`
}

// Limits on the lifecycle lists of one report.
const (
	MaxCatalog = 1024
	MaxGPUs    = 64
)

// validateModels checks the lifecycle additions of a telemetry report.
func (t *HiveTelemetry) validateModels() error {
	if len(t.Catalog) > MaxCatalog {
		return fmt.Errorf("%w: %d catalog entries, at most %d", ErrInvalid, len(t.Catalog), MaxCatalog)
	}
	for i := range t.Catalog {
		c := &t.Catalog[i]
		if err := checkText("name", c.Name, maxModelLen); err != nil || c.Name == "" {
			return fmt.Errorf("catalog %d: %w: name must be non-empty text", i, ErrInvalid)
		}
		for _, f := range []struct{ name, v string }{{"engine", c.Engine}, {"vram_source", c.VRAMSource},
			{"unavailable", c.Unavailable}} {
			if err := checkText(f.name, f.v, maxFieldLen); err != nil {
				return fmt.Errorf("catalog %d: %w", i, err)
			}
		}
		if err := checkText("fail_reason", c.FailReason, 4*maxFieldLen); err != nil {
			return fmt.Errorf("catalog %d: %w", i, err)
		}
		if f := c.Facts; f != nil {
			for _, t := range []struct{ name, v string }{{"format", f.Format}, {"architecture", f.Architecture},
				{"quantization", f.Quantization}} {
				if err := checkText(t.name, t.v, maxFieldLen); err != nil {
					return fmt.Errorf("catalog %d: facts: %w", i, err)
				}
			}
			if f.Layers < 0 || f.KVHeads < 0 || f.HeadDim < 0 || f.ContextLength < 0 {
				return fmt.Errorf("catalog %d: %w: negative figure in facts", i, ErrInvalid)
			}
		}
		if c.Slots < 0 || c.Ctx < 0 || c.Bytes < 0 || c.LoadMS < 0 || c.MaxReplicas < 0 || c.Failures < 0 {
			return fmt.Errorf("catalog %d: %w: negative figure", i, ErrInvalid)
		}
	}
	if len(t.GPUs) > MaxGPUs {
		return fmt.Errorf("%w: %d gpus, at most %d", ErrInvalid, len(t.GPUs), MaxGPUs)
	}
	if len(t.CopyEngines) > MaxGPUs {
		return fmt.Errorf("%w: %d copy engines, at most %d", ErrInvalid, len(t.CopyEngines), MaxGPUs)
	}
	for _, e := range t.CopyEngines {
		if err := checkLabel("copy engine", e, maxFieldLen); err != nil {
			return err
		}
	}
	for i := range t.GPUs {
		if err := checkText("gpu name", t.GPUs[i].Name, maxFieldLen); err != nil {
			return fmt.Errorf("gpu %d: %w", i, err)
		}
	}
	if len(t.Managed) > MaxWorkers {
		return fmt.Errorf("%w: %d managed workers, at most %d", ErrInvalid, len(t.Managed), MaxWorkers)
	}
	for i := range t.Managed {
		m := &t.Managed[i]
		if err := checkLabel("instance", m.Instance, maxFieldLen); err != nil {
			return fmt.Errorf("managed %d: %w", i, err)
		}
		if err := checkText("model", m.Model, maxModelLen); err != nil {
			return fmt.Errorf("managed %d: %w", i, err)
		}
		switch m.State {
		case ManagedLoading, ManagedReady, ManagedDraining:
		default:
			return fmt.Errorf("managed %d: %w: state %q", i, ErrInvalid, truncate(m.State, 40))
		}
		for _, f := range []struct{ name, v string }{{"engine", m.Engine}, {"start_id", m.StartID}, {"started_by", m.StartedBy}, {"stage", m.Stage}} {
			if err := checkText(f.name, f.v, maxFieldLen); err != nil {
				return fmt.Errorf("managed %d: %w", i, err)
			}
		}
		if len(m.GPUs) > MaxGPUs || m.Leases < 0 {
			return fmt.Errorf("managed %d: %w: gpus or leases out of range", i, ErrInvalid)
		}
	}
	return nil
}

// Validate checks a model start from the queen.
func (m *ModelStart) Validate() error {
	if err := checkText("start_id", m.StartID, maxFieldLen); err != nil || m.StartID == "" {
		return fmt.Errorf("%w: start_id must be non-empty text", ErrInvalid)
	}
	if err := checkText("model", m.Model, maxModelLen); err != nil || m.Model == "" {
		return fmt.Errorf("%w: model must be non-empty text", ErrInvalid)
	}
	if len(m.GPUs) > MaxGPUs || len(m.Evict) > MaxWorkers {
		return fmt.Errorf("%w: too many gpus or evictions", ErrInvalid)
	}
	for _, e := range m.Evict {
		if err := checkLabel("evict", e, maxFieldLen); err != nil {
			return err
		}
	}
	if c := m.Copy; c != nil {
		if len(c.From) == 0 || len(c.From) > MaxCopyFrom || c.Slots < 0 || c.Ctx < 0 {
			return fmt.Errorf("%w: copy from %d hives (1 to %d), slots %d, ctx %d", ErrInvalid, len(c.From), MaxCopyFrom, c.Slots, c.Ctx)
		}
		for _, h := range c.From {
			if err := ValidName(h); err != nil {
				return fmt.Errorf("copy from: %w", err)
			}
		}
		if err := checkLabel("copy engine", c.Engine, maxFieldLen); err != nil {
			return err
		}
	}
	return nil
}

// MaxCopyFrom bounds the hives a model is copied from at once.
const MaxCopyFrom = 16
