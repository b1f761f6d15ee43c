//go:build cgo

package telemetry

import (
	"context"
	"errors"
	"log/slog"
	"reflect"
	"strings"
	"sync"
	"testing"

	"github.com/NVIDIA/go-nvml/pkg/nvml"
	"github.com/NVIDIA/go-nvml/pkg/nvml/mock"

	"github.com/rbee/rbee/wsapi"
)

const gib = 1 << 30

// gpuLogs is a slog.Handler that keeps every record, to count lines.
type gpuLogs struct {
	mu   sync.Mutex
	recs []slog.Record
}

func (h *gpuLogs) Enabled(context.Context, slog.Level) bool { return true }
func (h *gpuLogs) WithAttrs([]slog.Attr) slog.Handler       { return h }
func (h *gpuLogs) WithGroup(string) slog.Handler            { return h }

func (h *gpuLogs) Handle(_ context.Context, r slog.Record) error {
	h.mu.Lock()
	defer h.mu.Unlock()
	h.recs = append(h.recs, r.Clone())
	return nil
}

func (h *gpuLogs) lines() []string {
	h.mu.Lock()
	defer h.mu.Unlock()
	var out []string
	for _, r := range h.recs {
		line := r.Level.String() + " " + r.Message
		r.Attrs(func(a slog.Attr) bool {
			line += " " + a.String()
			return true
		})
		out = append(out, line)
	}
	return out
}

// newMockGPU is a device with total bytes of memory, no processes and no
// utilisation samples; tests set the figures they need.
func newMockGPU(total uint64) *mock.Device {
	none := func() ([]nvml.ProcessInfo, nvml.Return) { return nil, nvml.SUCCESS }
	return &mock.Device{
		GetMemoryInfoFunc: func() (nvml.Memory, nvml.Return) {
			return nvml.Memory{Total: total, Free: total}, nvml.SUCCESS
		},
		GetComputeRunningProcessesFunc:  none,
		GetGraphicsRunningProcessesFunc: none,
		GetProcessUtilizationFunc: func(uint64) ([]nvml.ProcessUtilizationSample, nvml.Return) {
			return nil, nvml.ERROR_NOT_FOUND
		},
	}
}

// newMockNVML is a library that initialises and lists devs.
func newMockNVML(devs ...*mock.Device) *mock.Interface {
	return &mock.Interface{
		InitFunc:           func() nvml.Return { return nvml.SUCCESS },
		ShutdownFunc:       func() nvml.Return { return nvml.SUCCESS },
		DeviceGetCountFunc: func() (int, nvml.Return) { return len(devs), nvml.SUCCESS },
		DeviceGetHandleByIndexFunc: func(i int) (nvml.Device, nvml.Return) {
			return devs[i], nvml.SUCCESS
		},
	}
}

func processes(ps ...nvml.ProcessInfo) func() ([]nvml.ProcessInfo, nvml.Return) {
	return func() ([]nvml.ProcessInfo, nvml.Return) { return ps, nvml.SUCCESS }
}

func utilSamples(ss ...nvml.ProcessUtilizationSample) func(uint64) ([]nvml.ProcessUtilizationSample, nvml.Return) {
	return func(uint64) ([]nvml.ProcessUtilizationSample, nvml.Return) { return ss, nvml.SUCCESS }
}

// freshUtil answers every call with one sample per pid newer than the
// caller's lastSeen, as NVML does while a process keeps running.
func freshUtil(smByPID map[uint32]uint32) func(uint64) ([]nvml.ProcessUtilizationSample, nvml.Return) {
	return func(lastSeen uint64) ([]nvml.ProcessUtilizationSample, nvml.Return) {
		var out []nvml.ProcessUtilizationSample
		for pid, sm := range smByPID {
			out = append(out, nvml.ProcessUtilizationSample{Pid: pid, TimeStamp: lastSeen + 1000, SmUtil: sm})
		}
		return out, nvml.SUCCESS
	}
}

func TestGPU_ProcessesOnTwoDevicesAreSummedPerPID(t *testing.T) {
	gpu0 := newMockGPU(80 * gib)
	gpu0.GetComputeRunningProcessesFunc = processes(
		nvml.ProcessInfo{Pid: 10, UsedGpuMemory: 4 * gib},
		nvml.ProcessInfo{Pid: 11, UsedGpuMemory: 1 * gib},
	)
	// pid 10 also has a graphics context: the same memory, listed twice.
	gpu0.GetGraphicsRunningProcessesFunc = processes(nvml.ProcessInfo{Pid: 10, UsedGpuMemory: 4 * gib})
	gpu0.GetProcessUtilizationFunc = utilSamples(
		nvml.ProcessUtilizationSample{Pid: 10, TimeStamp: 100, SmUtil: 50},
		nvml.ProcessUtilizationSample{Pid: 10, TimeStamp: 200, SmUtil: 70},
		nvml.ProcessUtilizationSample{Pid: 11, TimeStamp: 150, SmUtil: 20},
		nvml.ProcessUtilizationSample{Pid: 12, TimeStamp: 150, SmUtil: 99},
	)
	gpu1 := newMockGPU(24 * gib)
	gpu1.GetComputeRunningProcessesFunc = processes(
		nvml.ProcessInfo{Pid: 10, UsedGpuMemory: 2 * gib},
		nvml.ProcessInfo{Pid: 12, UsedGpuMemory: 3 * gib},
	)
	gpu1.GetProcessUtilizationFunc = utilSamples(nvml.ProcessUtilizationSample{Pid: 10, TimeStamp: 120, SmUtil: 30})
	lib := newMockNVML(gpu0, gpu1)
	g := NewGPU(lib, nil)

	got := g.Sample([]int32{10, 11, 13}) // 13 uses no GPU; 12 is not asked for
	want := map[int32]ProcGPU{
		10: {VRAMBytes: 6 * gib, UtilPct: 90, TotalVRAMBytes: 104 * gib, Devices: []DeviceUse{
			{Index: 0, VRAMBytes: 4 * gib, UtilPct: 60, TotalVRAMBytes: 80 * gib},
			{Index: 1, VRAMBytes: 2 * gib, UtilPct: 30, TotalVRAMBytes: 24 * gib},
		}},
		11: {VRAMBytes: 1 * gib, UtilPct: 20, TotalVRAMBytes: 80 * gib, Devices: []DeviceUse{
			{Index: 0, VRAMBytes: 1 * gib, UtilPct: 20, TotalVRAMBytes: 80 * gib},
		}},
	}
	if !reflect.DeepEqual(got, want) {
		t.Errorf("sample =\n%+v\nwant\n%+v", got, want)
	}
	if n := len(lib.InitCalls()); n != 1 {
		t.Errorf("nvml init called %d times by a first Sample, want 1", n)
	}
	if n := len(gpu0.GetMemoryInfoCalls()); n != 1 {
		t.Errorf("device total read %d times, want once at init", n)
	}
	g.Sample([]int32{10})
	if n := len(lib.InitCalls()) + len(lib.DeviceGetHandleByIndexCalls()) + len(gpu0.GetMemoryInfoCalls()); n != 1+2+1 {
		t.Errorf("init, handle and total calls after two samples = %d, want 4: they are kept, not re-read", n)
	}
}

func TestGPU_UtilisationSamplesAlreadySeenAreNotCountedAgain(t *testing.T) {
	ticks := []struct {
		name         string
		samples      []nvml.ProcessUtilizationSample
		wantLastSeen uint64 // the argument NVML is asked with
		wantUtil     float64
	}{
		{"first tick takes every buffered sample", []nvml.ProcessUtilizationSample{
			{Pid: 10, TimeStamp: 100, SmUtil: 50}, {Pid: 10, TimeStamp: 200, SmUtil: 70},
		}, 0, 60},
		{"second tick skips the sample the first counted", []nvml.ProcessUtilizationSample{
			{Pid: 10, TimeStamp: 200, SmUtil: 70}, {Pid: 10, TimeStamp: 300, SmUtil: 10},
		}, 200, 10},
		{"only old samples mean idle", []nvml.ProcessUtilizationSample{
			{Pid: 10, TimeStamp: 250, SmUtil: 90}, {Pid: 10, TimeStamp: 300, SmUtil: 10},
		}, 300, 0},
		{"no samples keep the last seen", nil, 300, 0},
		{"a new sample after a quiet tick", []nvml.ProcessUtilizationSample{
			{Pid: 10, TimeStamp: 400, SmUtil: 40},
		}, 300, 40},
	}
	dev := newMockGPU(16 * gib)
	dev.GetComputeRunningProcessesFunc = processes(nvml.ProcessInfo{Pid: 10, UsedGpuMemory: 1 * gib})
	tick := 0
	dev.GetProcessUtilizationFunc = func(uint64) ([]nvml.ProcessUtilizationSample, nvml.Return) {
		if ticks[tick].samples == nil {
			return nil, nvml.ERROR_NOT_FOUND
		}
		return ticks[tick].samples, nvml.SUCCESS
	}
	g := NewGPU(newMockNVML(dev), nil)
	for i, tc := range ticks {
		tick = i
		got := g.Sample([]int32{10})[10]
		if got.UtilPct != tc.wantUtil {
			t.Errorf("%s: util = %v, want %v", tc.name, got.UtilPct, tc.wantUtil)
		}
		if got.VRAMBytes != 1*gib {
			t.Errorf("%s: vram = %d, want 1 GiB whatever the utilisation", tc.name, got.VRAMBytes)
		}
		calls := dev.GetProcessUtilizationCalls()
		if len(calls) != i+1 {
			t.Fatalf("%s: %d utilisation calls, want %d", tc.name, len(calls), i+1)
		}
		if calls[i].V != tc.wantLastSeen {
			t.Errorf("%s: asked NVML for samples after %d, want %d", tc.name, calls[i].V, tc.wantLastSeen)
		}
	}
}

func TestGPU_UnavailableIsSaidOnceAndNeverRetried(t *testing.T) {
	cases := []struct {
		name          string
		lib           func() *mock.Interface
		wantReason    string
		wantLogs      int // WARN lines in all: the reason, and any device that would not open
		wantShutdowns int // NVML given back when it came up with nothing to use
	}{
		{
			name: "library missing",
			lib: func() *mock.Interface {
				l := newMockNVML()
				l.InitFunc = func() nvml.Return { return nvml.ERROR_LIBRARY_NOT_FOUND }
				return l
			},
			wantReason: "NVML library not found (no NVIDIA driver)",
			wantLogs:   1,
		},
		{
			name: "library panics on load",
			lib: func() *mock.Interface {
				l := newMockNVML()
				l.InitFunc = func() nvml.Return { panic("libnvidia-ml.so.1: cannot open shared object file") }
				return l
			},
			wantReason: "load NVML: libnvidia-ml.so.1: cannot open shared object file",
			wantLogs:   1,
		},
		{
			name: "driver not loaded",
			lib: func() *mock.Interface {
				l := newMockNVML()
				l.InitFunc = func() nvml.Return { return nvml.ERROR_DRIVER_NOT_LOADED }
				return l
			},
			wantReason: "NVIDIA driver not loaded",
			wantLogs:   1,
		},
		{
			name:          "no GPU",
			lib:           func() *mock.Interface { return newMockNVML() },
			wantReason:    "no NVIDIA GPU",
			wantLogs:      1,
			wantShutdowns: 1,
		},
		{
			name: "device count fails",
			lib: func() *mock.Interface {
				l := newMockNVML()
				l.DeviceGetCountFunc = func() (int, nvml.Return) { return 0, nvml.ERROR_UNKNOWN }
				return l
			},
			wantReason:    "count NVIDIA GPUs: ERROR_UNKNOWN",
			wantLogs:      1,
			wantShutdowns: 1,
		},
		{
			name: "no device opens",
			lib: func() *mock.Interface {
				l := newMockNVML(newMockGPU(gib), newMockGPU(gib))
				l.DeviceGetHandleByIndexFunc = func(int) (nvml.Device, nvml.Return) { return nil, nvml.ERROR_NO_PERMISSION }
				return l
			},
			wantReason:    "none of 2 NVIDIA GPUs could be opened",
			wantLogs:      3,
			wantShutdowns: 1,
		},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			lib := tc.lib()
			logs := &gpuLogs{}
			g := NewGPU(lib, slog.New(logs))
			err := g.Init()
			if !errors.Is(err, ErrGPUUnavailable) {
				t.Fatalf("init error = %v, want ErrGPUUnavailable", err)
			}
			if !strings.Contains(err.Error(), tc.wantReason) {
				t.Errorf("init error %q does not say %q", err, tc.wantReason)
			}
			if err2 := g.Init(); err2 == nil || err2.Error() != err.Error() {
				t.Errorf("second init = %v, want the first answer %v", err2, err)
			}
			for range 50 {
				if got := g.Sample([]int32{10, 11}); len(got) != 0 {
					t.Fatalf("sample without NVML = %v, want empty", got)
				}
			}
			if got := g.Workers([][]int32{{10}, {11}}); !reflect.DeepEqual(got, []WorkerGPU{{}, {}}) {
				t.Errorf("workers without NVML = %+v, want two zero figures", got)
			}
			if got := g.Unavailable(); got != tc.wantReason {
				t.Errorf("unavailable = %q, want %q", got, tc.wantReason)
			}
			if n := len(lib.InitCalls()); n != 1 {
				t.Errorf("nvml init called %d times, want 1: no retry", n)
			}
			lines := logs.lines()
			if len(lines) != tc.wantLogs {
				t.Errorf("%d log lines over 50 samples, want %d:\n%s", len(lines), tc.wantLogs, strings.Join(lines, "\n"))
			}
			if len(lines) > 0 && !strings.Contains(lines[len(lines)-1], tc.wantReason) {
				t.Errorf("log %q does not say %q", lines[len(lines)-1], tc.wantReason)
			}
			g.Shutdown()
			if n := len(lib.ShutdownCalls()); n != tc.wantShutdowns {
				t.Errorf("nvml shutdown called %d times, want %d", n, tc.wantShutdowns)
			}
			if got := g.Unavailable(); got != tc.wantReason {
				t.Errorf("unavailable after shutdown = %q, want the reason kept, %q", got, tc.wantReason)
			}
		})
	}
}

func TestGPU_FailingDeviceCallLeavesOutOnlyThatFigure(t *testing.T) {
	// Before each case: pid 10 holds 4 GiB at 40 % on gpu 0 (80 GiB) and
	// 2 GiB at 30 % on gpu 1 (24 GiB).
	cases := []struct {
		name     string
		fail     func(gpu0, gpu1 *mock.Device)
		want     ProcGPU
		wantLogs int
	}{
		{
			name: "utilisation not supported",
			fail: func(gpu0, _ *mock.Device) {
				gpu0.GetProcessUtilizationFunc = func(uint64) ([]nvml.ProcessUtilizationSample, nvml.Return) {
					return nil, nvml.ERROR_NOT_SUPPORTED
				}
			},
			want: ProcGPU{VRAMBytes: 6 * gib, UtilPct: 30, TotalVRAMBytes: 104 * gib, Devices: []DeviceUse{
				{Index: 0, VRAMBytes: 4 * gib, TotalVRAMBytes: 80 * gib},
				{Index: 1, VRAMBytes: 2 * gib, UtilPct: 30, TotalVRAMBytes: 24 * gib},
			}},
			wantLogs: 1,
		},
		{
			name: "graphics list not supported",
			fail: func(gpu0, gpu1 *mock.Device) {
				for _, d := range []*mock.Device{gpu0, gpu1} {
					d.GetGraphicsRunningProcessesFunc = func() ([]nvml.ProcessInfo, nvml.Return) { return nil, nvml.ERROR_NOT_SUPPORTED }
				}
			},
			want: ProcGPU{VRAMBytes: 6 * gib, UtilPct: 70, TotalVRAMBytes: 104 * gib, Devices: []DeviceUse{
				{Index: 0, VRAMBytes: 4 * gib, UtilPct: 40, TotalVRAMBytes: 80 * gib},
				{Index: 1, VRAMBytes: 2 * gib, UtilPct: 30, TotalVRAMBytes: 24 * gib},
			}},
			wantLogs: 2, // one per GPU
		},
		{
			name: "one GPU lost",
			fail: func(_, gpu1 *mock.Device) {
				gpu1.GetComputeRunningProcessesFunc = func() ([]nvml.ProcessInfo, nvml.Return) { return nil, nvml.ERROR_GPU_IS_LOST }
				gpu1.GetGraphicsRunningProcessesFunc = gpu1.GetComputeRunningProcessesFunc
				gpu1.GetProcessUtilizationFunc = func(uint64) ([]nvml.ProcessUtilizationSample, nvml.Return) {
					return nil, nvml.ERROR_GPU_IS_LOST
				}
			},
			want: ProcGPU{VRAMBytes: 4 * gib, UtilPct: 40, TotalVRAMBytes: 80 * gib, Devices: []DeviceUse{
				{Index: 0, VRAMBytes: 4 * gib, UtilPct: 40, TotalVRAMBytes: 80 * gib},
			}},
			wantLogs: 3, // one per call
		},
		{
			name: "no utilisation samples yet",
			fail: func(gpu0, _ *mock.Device) {
				gpu0.GetProcessUtilizationFunc = func(uint64) ([]nvml.ProcessUtilizationSample, nvml.Return) {
					return nil, nvml.ERROR_NOT_FOUND
				}
			},
			want: ProcGPU{VRAMBytes: 6 * gib, UtilPct: 30, TotalVRAMBytes: 104 * gib, Devices: []DeviceUse{
				{Index: 0, VRAMBytes: 4 * gib, TotalVRAMBytes: 80 * gib},
				{Index: 1, VRAMBytes: 2 * gib, UtilPct: 30, TotalVRAMBytes: 24 * gib},
			}},
		},
		{
			name: "go-nvml's empty answer with insufficient size",
			fail: func(gpu0, _ *mock.Device) {
				gpu0.GetProcessUtilizationFunc = func(uint64) ([]nvml.ProcessUtilizationSample, nvml.Return) {
					return []nvml.ProcessUtilizationSample{}, nvml.ERROR_INSUFFICIENT_SIZE
				}
			},
			want: ProcGPU{VRAMBytes: 6 * gib, UtilPct: 30, TotalVRAMBytes: 104 * gib, Devices: []DeviceUse{
				{Index: 0, VRAMBytes: 4 * gib, TotalVRAMBytes: 80 * gib},
				{Index: 1, VRAMBytes: 2 * gib, UtilPct: 30, TotalVRAMBytes: 24 * gib},
			}},
		},
		{
			name: "device total not supported",
			fail: func(_, gpu1 *mock.Device) {
				gpu1.GetMemoryInfoFunc = func() (nvml.Memory, nvml.Return) { return nvml.Memory{}, nvml.ERROR_NOT_SUPPORTED }
			},
			want: ProcGPU{VRAMBytes: 6 * gib, UtilPct: 70, TotalVRAMBytes: 80 * gib, Devices: []DeviceUse{
				{Index: 0, VRAMBytes: 4 * gib, UtilPct: 40, TotalVRAMBytes: 80 * gib},
				{Index: 1, VRAMBytes: 2 * gib, UtilPct: 30},
			}},
			wantLogs: 1,
		},
		{
			name: "process memory not available",
			fail: func(gpu0, _ *mock.Device) {
				gpu0.GetComputeRunningProcessesFunc = processes(nvml.ProcessInfo{Pid: 10, UsedGpuMemory: ^uint64(0)})
			},
			want: ProcGPU{VRAMBytes: 2 * gib, UtilPct: 70, TotalVRAMBytes: 104 * gib, Devices: []DeviceUse{
				{Index: 0, UtilPct: 40, TotalVRAMBytes: 80 * gib},
				{Index: 1, VRAMBytes: 2 * gib, UtilPct: 30, TotalVRAMBytes: 24 * gib},
			}},
		},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			gpu0 := newMockGPU(80 * gib)
			gpu0.GetComputeRunningProcessesFunc = processes(nvml.ProcessInfo{Pid: 10, UsedGpuMemory: 4 * gib})
			gpu0.GetProcessUtilizationFunc = freshUtil(map[uint32]uint32{10: 40})
			gpu1 := newMockGPU(24 * gib)
			gpu1.GetComputeRunningProcessesFunc = processes(nvml.ProcessInfo{Pid: 10, UsedGpuMemory: 2 * gib})
			gpu1.GetProcessUtilizationFunc = freshUtil(map[uint32]uint32{10: 30})
			tc.fail(gpu0, gpu1)
			logs := &gpuLogs{}
			g := NewGPU(newMockNVML(gpu0, gpu1), slog.New(logs))
			if err := g.Init(); err != nil {
				t.Fatalf("init: %v", err)
			}
			for tick := range 10 {
				got := g.Sample([]int32{10})[10]
				if !reflect.DeepEqual(got, tc.want) {
					t.Fatalf("tick %d: pid 10 =\n%+v\nwant\n%+v", tick, got, tc.want)
				}
			}
			if lines := logs.lines(); len(lines) != tc.wantLogs {
				t.Errorf("%d log lines over 10 samples, want %d:\n%s", len(lines), tc.wantLogs, strings.Join(lines, "\n"))
			}
		})
	}
}

func TestGPU_ShutdownIsIdempotent(t *testing.T) {
	t.Run("after init", func(t *testing.T) {
		dev := newMockGPU(gib)
		lib := newMockNVML(dev)
		g := NewGPU(lib, nil)
		if err := g.Init(); err != nil {
			t.Fatalf("init: %v", err)
		}
		for range 3 {
			g.Shutdown()
		}
		if n := len(lib.ShutdownCalls()); n != 1 {
			t.Errorf("nvml shutdown called %d times, want 1", n)
		}
		if got := g.Sample([]int32{10}); len(got) != 0 {
			t.Errorf("sample after shutdown = %v, want empty", got)
		}
		if n := len(dev.GetComputeRunningProcessesCalls()); n != 0 {
			t.Errorf("%d device calls after shutdown, want none", n)
		}
		if err := g.Init(); !errors.Is(err, ErrGPUUnavailable) || len(lib.InitCalls()) != 1 {
			t.Errorf("init after shutdown = %v with %d nvml inits, want ErrGPUUnavailable and no second init", err, len(lib.InitCalls()))
		}
		if got := g.Unavailable(); got != "NVML shut down" {
			t.Errorf("unavailable = %q, want %q", got, "NVML shut down")
		}
	})
	t.Run("before init", func(t *testing.T) {
		lib := newMockNVML(newMockGPU(gib))
		g := NewGPU(lib, nil)
		g.Shutdown()
		g.Shutdown()
		g.Sample([]int32{10})
		if n, m := len(lib.InitCalls()), len(lib.ShutdownCalls()); n != 0 || m != 0 {
			t.Errorf("nvml init %d and shutdown %d times, want neither", n, m)
		}
	})
}

func TestSumWorker(t *testing.T) {
	per := map[int32]ProcGPU{
		1: {Devices: []DeviceUse{{Index: 0, VRAMBytes: 2 * gib, UtilPct: 60, TotalVRAMBytes: 80 * gib}}},
		2: {Devices: []DeviceUse{{Index: 0, VRAMBytes: 1 * gib, UtilPct: 70, TotalVRAMBytes: 80 * gib}}},
		3: {Devices: []DeviceUse{
			{Index: 0, VRAMBytes: 1 * gib, UtilPct: 10, TotalVRAMBytes: 80 * gib},
			{Index: 1, VRAMBytes: 3 * gib, UtilPct: 90, TotalVRAMBytes: 24 * gib},
		}},
		4: {Devices: []DeviceUse{{Index: 1, VRAMBytes: 512 << 20, UtilPct: 50, TotalVRAMBytes: 24 * gib}}},
	}
	cases := []struct {
		name string
		pids []int32
		want WorkerGPU
	}{
		{"one pid", []int32{1}, WorkerGPU{UtilPct: 60, VRAMMB: 2048, TotalVRAMMB: 81920}},
		{"two pids on one GPU share its total and its 100 %", []int32{1, 2}, WorkerGPU{UtilPct: 100, VRAMMB: 3072, TotalVRAMMB: 81920}},
		{"pids on two GPUs add both totals", []int32{2, 4}, WorkerGPU{UtilPct: 120, VRAMMB: 1536, TotalVRAMMB: 106496}},
		{"capped at 100 per GPU used", []int32{1, 2, 3, 4}, WorkerGPU{UtilPct: 200, VRAMMB: 7680, TotalVRAMMB: 106496}},
		{"a pid listed twice counts once", []int32{3, 3}, WorkerGPU{UtilPct: 100, VRAMMB: 4096, TotalVRAMMB: 106496}},
		{"pids without GPU use", []int32{7, 8}, WorkerGPU{}},
		{"no pids", nil, WorkerGPU{}},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			if got := SumWorker(per, tc.pids); got != tc.want {
				t.Errorf("SumWorker(%v) = %+v, want %+v", tc.pids, got, tc.want)
			}
		})
	}
}

func TestGPU_WorkersAreSummedFromOneSample(t *testing.T) {
	gpu0 := newMockGPU(80 * gib)
	gpu0.GetComputeRunningProcessesFunc = processes(
		nvml.ProcessInfo{Pid: 10, UsedGpuMemory: 4 * gib},
		nvml.ProcessInfo{Pid: 11, UsedGpuMemory: 1 * gib},
	)
	gpu0.GetProcessUtilizationFunc = freshUtil(map[uint32]uint32{10: 60, 11: 20})
	gpu1 := newMockGPU(24 * gib)
	gpu1.GetComputeRunningProcessesFunc = processes(
		nvml.ProcessInfo{Pid: 10, UsedGpuMemory: 2 * gib},
		nvml.ProcessInfo{Pid: 12, UsedGpuMemory: 3 * gib},
	)
	gpu1.GetProcessUtilizationFunc = freshUtil(map[uint32]uint32{10: 30, 12: 80})
	g := NewGPU(newMockNVML(gpu0, gpu1), nil)

	// The hive's collector takes it as its GPU hook.
	cfg := CollectorConfig{GPU: g.Workers}
	got := cfg.GPU([][]int32{{10, 11}, {12}, {99}})
	want := []WorkerGPU{
		{UtilPct: 80 + 30, VRAMMB: 7 * 1024, TotalVRAMMB: 104 * 1024},
		{UtilPct: 80, VRAMMB: 3 * 1024, TotalVRAMMB: 24 * 1024},
		{},
	}
	if !reflect.DeepEqual(got, want) {
		t.Errorf("workers = %+v, want %+v", got, want)
	}
	if n, m := len(gpu0.GetProcessUtilizationCalls()), len(gpu1.GetProcessUtilizationCalls()); n != 1 || m != 1 {
		t.Errorf("utilisation read %d and %d times, want once per GPU per tick", n, m)
	}
}

// Devices lists every GPU with name, VRAM and utilization; a call NVML
// refuses leaves that figure zero and the rest stands.
func TestGPU_Devices(t *testing.T) {
	gpu0, gpu1 := newMockGPU(80*gib), newMockGPU(24*gib)
	gpu0.GetNameFunc = func() (string, nvml.Return) { return "NVIDIA H200", nvml.SUCCESS }
	gpu0.GetMemoryInfoFunc = func() (nvml.Memory, nvml.Return) {
		return nvml.Memory{Total: 80 * gib, Used: 30 * gib, Free: 50 * gib}, nvml.SUCCESS
	}
	gpu0.GetUtilizationRatesFunc = func() (nvml.Utilization, nvml.Return) { return nvml.Utilization{Gpu: 57}, nvml.SUCCESS }
	gpu1.GetNameFunc = func() (string, nvml.Return) { return "", nvml.ERROR_NOT_SUPPORTED }
	gpu1.GetUtilizationRatesFunc = func() (nvml.Utilization, nvml.Return) { return nvml.Utilization{}, nvml.ERROR_NOT_SUPPORTED }
	g := NewGPU(newMockNVML(gpu0, gpu1), nil)
	got := g.Devices()
	want := []wsapi.GPUInfo{
		{Index: 0, Name: "NVIDIA H200", TotalVRAMMB: 80 * 1024, UsedVRAMMB: 30 * 1024, UtilPct: 57},
		{Index: 1, TotalVRAMMB: 24 * 1024},
	}
	if !reflect.DeepEqual(got, want) {
		t.Fatalf("Devices:\n got %+v\nwant %+v", got, want)
	}
	g.Shutdown()
	if d := g.Devices(); d != nil {
		t.Fatalf("after Shutdown: %+v", d)
	}
}
