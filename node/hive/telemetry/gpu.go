//go:build cgo

package telemetry

import (
	"errors"
	"fmt"
	"log/slog"
	"maps"
	"slices"
	"sync"

	"github.com/NVIDIA/go-nvml/pkg/nvml"

	"github.com/rbee/rbee/wsapi"
)

// ErrGPUUnavailable is wrapped by Init's error when this machine yields no
// GPU figures (no NVML library, no driver, no GPU). A node goes on without
// them; the reason has been logged already.
var ErrGPUUnavailable = errors.New("no GPU figures")

// vramNotAvailable is what NVML puts in ProcessInfo.UsedGpuMemory when it
// cannot tell (NVML_VALUE_NOT_AVAILABLE, -1 in a C unsigned long long): under
// Windows WDDM and in some containers.
const vramNotAvailable = ^uint64(0)

// ProcGPU is one process's GPU figures at one sample, summed over the devices
// it uses.
type ProcGPU struct {
	VRAMBytes uint64
	// UtilPct is SM utilisation since the previous sample, summed over
	// devices: 100 is one whole GPU busy, as 100 is one core in CPUPct.
	UtilPct float64
	// TotalVRAMBytes is the total memory of the devices it uses.
	TotalVRAMBytes uint64
	// Devices are the devices it uses, by NVML index, in index order.
	// SumWorker needs them: two processes of one worker on the same GPU
	// share that GPU's total and its 100 %.
	Devices []DeviceUse
}

// DeviceUse is one process's figures on one device.
type DeviceUse struct {
	Index          int
	VRAMBytes      uint64
	UtilPct        float64 // 0..100
	TotalVRAMBytes uint64
}

// GPU reads per-process VRAM and SM utilisation through NVML. NVML is
// initialised once and its device handles and device totals are kept; a
// machine without the library, the driver or a GPU is said once at WARN and
// then yields empty figures without retrying.
//
// Utilisation is read as the samples NVML took since the previous Sample, so
// call Sample once a tick with every pid of interest (Workers does): a call
// for some pids consumes the other pids' samples too. The first Sample
// covers whatever NVML still buffers (a few seconds).
//
// Safe for concurrent use: a mutex serialises Sample and Shutdown, because
// an NVML call after Shutdown would reach an unloaded library.
type GPU struct {
	mu     sync.Mutex
	lib    nvml.Interface
	log    *slog.Logger
	tried  bool   // Init has run (or Shutdown came first): never again
	live   bool   // NVML is initialised and not shut down
	reason string // why there are no figures; "" while live or untried
	devs   []gpuDevice
	warned map[callFailure]bool
}

type gpuDevice struct {
	index int
	dev   nvml.Device
	total uint64 // bytes; 0 when NVML would not say
	// lastSeen is the newest utilisation sample timestamp read (NVML's µs),
	// so each Sample asks only for what came after.
	lastSeen uint64
}

// callFailure is one distinct failure, logged once: a device that does not
// support a call fails the same way every tick.
type callFailure struct {
	index int
	call  string
	ret   nvml.Return
}

// NewGPU wraps an NVML library; production passes nvml.New(), tests
// go-nvml's mock.Interface. Nothing is loaded until Init or the first Sample.
func NewGPU(lib nvml.Interface, log *slog.Logger) *GPU {
	if log == nil {
		log = slog.New(slog.DiscardHandler)
	}
	return &GPU{lib: lib, log: log, warned: make(map[callFailure]bool)}
}

// Init initialises NVML and opens every device, once; later calls return
// the first call's answer. Without GPU figures the error wraps
// ErrGPUUnavailable and the reason, which Init has logged.
func (g *GPU) Init() error {
	g.mu.Lock()
	defer g.mu.Unlock()
	g.initLocked()
	if g.reason != "" {
		return fmt.Errorf("init nvml: %s: %w", g.reason, ErrGPUUnavailable)
	}
	return nil
}

// Unavailable says why there are no GPU figures, "" when there are (or when
// Init has not run yet).
func (g *GPU) Unavailable() string {
	g.mu.Lock()
	defer g.mu.Unlock()
	return g.reason
}

func (g *GPU) initLocked() {
	if g.tried {
		return
	}
	g.tried = true
	g.reason = g.start()
	if g.reason != "" {
		g.log.Warn("no GPU figures on this machine; workers report zero GPU use", "reason", g.reason)
	}
}

// start returns why NVML gives no figures, or "" with g.devs filled.
func (g *GPU) start() (reason string) {
	// go-nvml reports a missing libnvidia-ml.so as ERROR_LIBRARY_NOT_FOUND,
	// but a broken install (a stub library, a driver half removed) must not
	// take the node down either.
	defer func() {
		if p := recover(); p != nil {
			g.devs = nil
			reason = fmt.Sprintf("load NVML: %v", p)
		}
	}()
	if ret := g.lib.Init(); ret != nvml.SUCCESS {
		return initFailure(ret)
	}
	n, ret := g.lib.DeviceGetCount()
	switch {
	case ret != nvml.SUCCESS:
		reason = "count NVIDIA GPUs: " + ret.Error()
	case n == 0:
		reason = "no NVIDIA GPU"
	}
	for i := 0; reason == "" && i < n; i++ {
		dev, ret := g.lib.DeviceGetHandleByIndex(i)
		if ret != nvml.SUCCESS {
			g.warnOnce(i, "DeviceGetHandleByIndex", ret)
			continue
		}
		// The total is the board's memory: read once, it does not change.
		mem, ret := dev.GetMemoryInfo()
		if ret != nvml.SUCCESS {
			g.warnOnce(i, "GetMemoryInfo", ret)
		}
		g.devs = append(g.devs, gpuDevice{index: i, dev: dev, total: mem.Total})
	}
	if reason == "" && len(g.devs) == 0 {
		reason = fmt.Sprintf("none of %d NVIDIA GPUs could be opened", n)
	}
	if reason != "" {
		// NVML is up but useless: give it back. Its answer changes
		// nothing; the reason is what gets reported.
		_ = g.lib.Shutdown()
		return reason
	}
	g.live = true
	return ""
}

// initFailure turns nvmlInit's answer into what an operator should read.
func initFailure(ret nvml.Return) string {
	switch ret {
	case nvml.ERROR_LIBRARY_NOT_FOUND:
		return "NVML library not found (no NVIDIA driver)"
	case nvml.ERROR_DRIVER_NOT_LOADED:
		return "NVIDIA driver not loaded"
	case nvml.ERROR_NO_PERMISSION:
		return "no permission to use the NVIDIA driver"
	case nvml.ERROR_LIB_RM_VERSION_MISMATCH:
		return "NVML library and NVIDIA kernel driver versions differ (reboot or reinstall the driver)"
	}
	return "initialise NVML: " + ret.Error()
}

// warnOnce logs a failed device call the first time it fails that way.
func (g *GPU) warnOnce(index int, call string, ret nvml.Return) {
	k := callFailure{index: index, call: call, ret: ret}
	if g.warned[k] {
		return
	}
	g.warned[k] = true
	g.log.Warn("GPU call failed; this figure is left out for this GPU", "gpu", index, "call", call, "error", ret.Error())
}

// Sample returns the GPU figures of those of pids that use a GPU; a pid
// absent from the map uses none (or NVML is unavailable). A call failing on
// one device leaves out that figure on that device only, and is logged once.
func (g *GPU) Sample(pids []int32) map[int32]ProcGPU {
	g.mu.Lock()
	defer g.mu.Unlock()
	g.initLocked()
	out := make(map[int32]ProcGPU)
	if !g.live {
		return out
	}
	want := make(map[int32]bool, len(pids))
	for _, p := range pids {
		want[p] = true
	}
	for i := range g.devs {
		for pid, u := range g.sampleDevice(&g.devs[i], want) {
			pg := out[pid]
			pg.VRAMBytes += u.VRAMBytes
			pg.UtilPct += u.UtilPct
			pg.TotalVRAMBytes += u.TotalVRAMBytes
			pg.Devices = append(pg.Devices, u)
			out[pid] = pg
		}
	}
	return out
}

// sampleDevice returns, per wanted pid, its use of one device. A pid uses a
// device when NVML lists it there as a running process or has utilisation
// samples of it.
func (g *GPU) sampleDevice(d *gpuDevice, want map[int32]bool) map[int32]DeviceUse {
	use := make(map[int32]DeviceUse)
	note := func(pid uint32) (DeviceUse, bool) {
		p := int32(pid)
		if !want[p] {
			return DeviceUse{}, false
		}
		u, ok := use[p]
		if !ok {
			u = DeviceUse{Index: d.index, TotalVRAMBytes: d.total}
		}
		return u, true
	}
	for _, call := range []struct {
		name string
		get  func() ([]nvml.ProcessInfo, nvml.Return)
	}{
		{"GetComputeRunningProcesses", d.dev.GetComputeRunningProcesses},
		{"GetGraphicsRunningProcesses", d.dev.GetGraphicsRunningProcesses},
	} {
		procs, ret := call.get()
		if ret != nvml.SUCCESS {
			g.warnOnce(d.index, call.name, ret)
			continue
		}
		for _, p := range procs {
			u, ok := note(p.Pid)
			if !ok {
				continue
			}
			// A process with compute and graphics contexts (nvidia-smi's
			// "C+G") is listed in both with its one memory figure: take
			// it once, not twice.
			if p.UsedGpuMemory != vramNotAvailable {
				u.VRAMBytes = max(u.VRAMBytes, p.UsedGpuMemory)
			}
			use[int32(p.Pid)] = u
		}
	}

	samples, ret := d.dev.GetProcessUtilization(d.lastSeen)
	switch {
	case ret == nvml.SUCCESS:
	case ret == nvml.ERROR_NOT_FOUND,
		// go-nvml answers "no samples" with an empty slice and the
		// first call's ERROR_INSUFFICIENT_SIZE.
		ret == nvml.ERROR_INSUFFICIENT_SIZE && len(samples) == 0:
		return use
	default:
		g.warnOnce(d.index, "GetProcessUtilization", ret)
		return use
	}
	type acc struct {
		sum float64
		n   int
	}
	util := make(map[int32]acc)
	newest := d.lastSeen
	for _, s := range samples {
		// NVML filters by lastSeen itself; checking again keeps one
		// sample from being counted in two ticks if a driver does not.
		if s.TimeStamp <= d.lastSeen {
			continue
		}
		newest = max(newest, s.TimeStamp)
		if !want[int32(s.Pid)] {
			continue
		}
		a := util[int32(s.Pid)]
		a.sum += float64(s.SmUtil)
		a.n++
		util[int32(s.Pid)] = a
	}
	d.lastSeen = newest
	for pid, a := range util {
		u, _ := note(uint32(pid))
		// Each sample is the share of one sampling period: their mean is
		// the share of the time since the last tick.
		u.UtilPct = min(a.sum/float64(a.n), 100)
		use[pid] = u
	}
	return use
}

// SumWorker sums one worker's figures over its pids. Memory adds up; a
// device's total counts once however many of the worker's pids use it; SM
// utilisation adds up per device but is capped at 100 there, so a worker
// reads at most 100 × the devices it uses, like CPU % over cores. A pid
// listed twice counts once.
func SumWorker(per map[int32]ProcGPU, pids []int32) WorkerGPU {
	type dev struct {
		util  float64
		total uint64
	}
	devs := make(map[int]dev)
	var vram uint64
	seen := make(map[int32]bool, len(pids))
	for _, pid := range pids {
		if seen[pid] {
			continue
		}
		seen[pid] = true
		for _, u := range per[pid].Devices {
			vram += u.VRAMBytes
			d := devs[u.Index]
			d.util += u.UtilPct
			d.total = u.TotalVRAMBytes
			devs[u.Index] = d
		}
	}
	var w WorkerGPU
	var total uint64
	// In index order, so the float sum is the same every time.
	for _, i := range slices.Sorted(maps.Keys(devs)) {
		w.UtilPct += min(devs[i].util, 100)
		total += devs[i].total
	}
	w.VRAMMB, w.TotalVRAMMB = vram/mib, total/mib
	return w
}

// Workers is a CollectorConfig.GPU: one Sample for all workers' pids, then
// each worker's sum, in the order given.
func (g *GPU) Workers(workers [][]int32) []WorkerGPU {
	var all []int32
	for _, w := range workers {
		all = append(all, w...)
	}
	per := g.Sample(all)
	out := make([]WorkerGPU, len(workers))
	for i, w := range workers {
		out[i] = SumWorker(per, w)
	}
	return out
}

// Shutdown releases NVML if Init took it, once; later Samples are empty and
// NVML is never initialised again.
func (g *GPU) Shutdown() {
	g.mu.Lock()
	defer g.mu.Unlock()
	g.tried = true
	if g.reason == "" {
		g.reason = "NVML shut down"
	}
	if !g.live {
		return
	}
	g.live, g.devs = false, nil
	if ret := g.lib.Shutdown(); ret != nvml.SUCCESS {
		g.log.Warn("shut down NVML", "error", ret.Error())
	}
}

// Devices is the machine's GPU inventory for the model lifecycle: each
// device's name, VRAM used and total, and utilization, read now. Empty
// without NVML. A figure NVML will not give is left zero.
func (g *GPU) Devices() []wsapi.GPUInfo {
	g.mu.Lock()
	defer g.mu.Unlock()
	g.initLocked()
	if !g.live {
		return nil
	}
	out := make([]wsapi.GPUInfo, 0, len(g.devs))
	for i := range g.devs {
		d := &g.devs[i]
		info := wsapi.GPUInfo{Index: d.index, TotalVRAMMB: d.total >> 20}
		if name, ret := d.dev.GetName(); ret == nvml.SUCCESS {
			info.Name = name
		} else {
			g.warnOnce(d.index, "GetName", ret)
		}
		if mem, ret := d.dev.GetMemoryInfo(); ret == nvml.SUCCESS {
			info.UsedVRAMMB, info.TotalVRAMMB = mem.Used>>20, mem.Total>>20
		} else {
			g.warnOnce(d.index, "GetMemoryInfo", ret)
		}
		if u, ret := d.dev.GetUtilizationRates(); ret == nvml.SUCCESS {
			info.UtilPct = float64(u.Gpu)
		} else {
			g.warnOnce(d.index, "GetUtilizationRates", ret)
		}
		out = append(out, info)
	}
	return out
}
