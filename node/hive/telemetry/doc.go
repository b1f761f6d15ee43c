// Package telemetry measures a hive's workers: their cgroup v2 counters
// (CgroupReader, CgroupTracker), their processes through gopsutil
// (ProcSampler), and the workers rbee did not start (WorkerSpec). The node's
// collector combines these into the wire's wsapi.ProcessStats once a tick.
//
// Main types: Collector (the hive's hive.Collector, combining the rest),
// CgroupReader (finds rbee.slice/<group>/<instance> cgroups and reads their
// files), CgroupTracker (turns two samples into rates), ProcSampler
// (per-process CPU, RSS, IO and uptime), GPU (per-process VRAM and SM
// utilisation through NVIDIA's NVML; needs cgo), WorkerSpec (--worker), and
// model detection: ModelFromCmdline (llama-server, vLLM, SGLang, Ollama
// command lines) and APIProber (llama-server /props, Ollama /api/ps, OpenAI
// /v1/models).
//
// No goroutine outlives a Collect call: the tick's health checks of --worker
// servers (CheckHealth: GET /health, else /v1/models; one that refuses or
// answers an error is reported down, with why) run at once while Collect does the rest,
// each within a deadline, and Collect waits for them before it returns; its
// model probes and reads of simulated workers run one after another, each
// within a deadline.
// CgroupTracker and ProcSampler read no clock: the caller passes the time of
// each tick, so rates are computed over the wall time it says passed.
// Collector.Collect is the one edge that reads it, time.Now once a tick,
// because the hive's hive.Collector passes none; it hands that time to the
// trackers and to its own retry timing (finding a --worker's pid, probing a
// worker's API). The deadlines of those network calls run on the real clock.
// A worker is its process tree: engines do their work in child processes
// (`ollama serve` in an `ollama runner`, vLLM in its EngineCore, which also
// holds the GPU memory). A worker in a cgroup has the tree already (children
// are born in their parent's cgroup, whose counters cover them); for one
// outside any cgroup (--worker, `rbee worker run` without cgroups) the
// collector walks the descendants of its pid each tick
// (/proc/<pid>/task/<tid>/children, else a scan of parent pids) and the
// process and GPU figures are summed over them. Each pid's rate comes from
// its own previous sample, so a child first seen mid-way adds nothing until
// its second tick; the last interval of a child that exits is lost.
// It never writes to a cgroup and never needs root to read one; a machine
// without cgroup v2 (ErrNoCgroup2) is measured by process alone.
package telemetry
