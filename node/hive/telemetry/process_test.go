package telemetry

import (
	"bufio"
	"context"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"testing"
	"time"
)

// startBurn builds and starts testdata/burn, a process that keeps about one
// core busy and holds mib MiB of touched memory, and returns it once ready.
func startBurn(t *testing.T, mib string) *exec.Cmd {
	t.Helper()
	return startBurnArgs(t, "-mib", mib)
}

// startBurnArgs is startBurn with burn's arguments (-tree: an idle process
// whose children and grandchild do the work).
func startBurnArgs(t *testing.T, args ...string) *exec.Cmd {
	t.Helper()
	bin := filepath.Join(t.TempDir(), "burn")
	if out, err := exec.Command("go", "build", "-o", bin, "./testdata/burn").CombinedOutput(); err != nil {
		t.Fatalf("build burn: %v\n%s", err, out)
	}
	cmd := exec.Command(bin, args...)
	stdin, err := cmd.StdinPipe()
	if err != nil {
		t.Fatal(err)
	}
	stdout, err := cmd.StdoutPipe()
	if err != nil {
		t.Fatal(err)
	}
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		stdin.Close()
		_ = cmd.Process.Kill()
		_ = cmd.Wait()
	})
	line, err := bufio.NewReader(stdout).ReadString('\n')
	if err != nil || strings.TrimSpace(line) != "ready" {
		t.Fatalf("burn did not get ready: %q, %v", line, err)
	}
	return cmd
}

// measureOver samples pids twice, wait apart. The wait is the measurement
// window for a rate, not a wait for a condition. It also returns the CPU %
// the kernel accounted to the live pids over the same window, read straight
// from /proc/<pid>/stat: what the sampler must agree with however loaded
// the machine is.
func measureOver(t *testing.T, s *ProcSampler, pids []int32, wait time.Duration) (ProcStats, float64) {
	t.Helper()
	ctx := context.Background()
	t0 := time.Now()
	ticks0 := cpuTicks(pids)
	first := s.Sample(ctx, []ProcQuery{{PIDs: pids}}, t0)[0]
	if first.CPUPct != 0 {
		t.Errorf("first sample has a CPU rate %.1f; there is no previous sample", first.CPUPct)
	}
	timer := time.NewTimer(wait)
	<-timer.C
	got := s.Sample(ctx, []ProcQuery{{PIDs: pids}}, time.Now())[0]
	truth := (cpuTicks(pids) - ticks0) / clockTicks / time.Since(t0).Seconds() * 100
	return got, truth
}

// clockTicks is USER_HZ, the unit of /proc/<pid>/stat times (100 on Linux).
const clockTicks = 100

// cpuTicks sums utime+stime of the pids that exist.
func cpuTicks(pids []int32) float64 {
	var sum float64
	for _, p := range pids {
		b, err := os.ReadFile(fmt.Sprintf("/proc/%d/stat", p))
		if err != nil {
			continue
		}
		// Fields after the parenthesised command: state is field 3,
		// utime 14, stime 15.
		f := strings.Fields(string(b[strings.LastIndexByte(string(b), ')')+1:]))
		u, _ := strconv.ParseFloat(f[11], 64)
		st, _ := strconv.ParseFloat(f[12], 64)
		sum += u + st
	}
	return sum
}

// agrees reports whether the sampler's CPU % matches the kernel's over
// (nearly) the same window: within 30% and 15 points (its samples are a few
// milliseconds inside the window the truth spans).
func agrees(got, truth float64) bool {
	return got >= truth*0.7-15 && got <= truth*1.3+15
}

func TestProcSampler_RealProcess(t *testing.T) {
	cmd := startBurn(t, "96")
	pid := int32(cmd.Process.Pid)
	s := NewProcSampler()
	got, truth := measureOver(t, s, []int32{pid}, 700*time.Millisecond)

	if got.Alive != 1 || got.MainPID != pid {
		t.Fatalf("alive=%d main=%d, want 1 and %d", got.Alive, got.MainPID, pid)
	}
	// One busy goroutine: about 100% of a core on an idle machine, less
	// on a loaded one; the kernel's own count says how much.
	if got.CPUPct <= 0 || !agrees(got.CPUPct, truth) {
		t.Errorf("cpu_pct = %.1f, the kernel accounted %.1f%% over the window", got.CPUPct, truth)
	}
	rssMiB := got.RSSBytes >> 20
	if rssMiB < 90 || rssMiB > 200 {
		t.Errorf("rss = %d MiB, want about 96 + runtime", rssMiB)
	}
	if got.Uptime < 0 || got.Uptime > time.Minute {
		t.Errorf("uptime = %v", got.Uptime)
	}
	if len(got.Cmdline) != 3 || filepath.Base(got.Cmdline[0]) != "burn" || got.Cmdline[2] != "96" {
		t.Errorf("cmdline = %q", got.Cmdline)
	}
	if got.ReadBps < 0 || got.WriteBps < 0 {
		t.Errorf("negative IO rates %v %v", got.ReadBps, got.WriteBps)
	}
}

func TestProcSampler_SumsAWorkersProcessesAndSkipsDeadOnes(t *testing.T) {
	a, b := startBurn(t, "32"), startBurn(t, "32")
	pids := []int32{int32(a.Process.Pid), int32(b.Process.Pid), 1 << 30 /* no such pid */}
	s := NewProcSampler()
	got, truth := measureOver(t, s, pids, 500*time.Millisecond)
	if got.Alive != 2 {
		t.Fatalf("alive = %d, want 2", got.Alive)
	}
	if rss := got.RSSBytes >> 20; rss < 60 {
		t.Errorf("rss = %d MiB, want the sum of two ~32 MiB processes", rss)
	}
	// Two busy processes: about 200% on an idle machine; the sum of both
	// whatever the load.
	if got.CPUPct <= 0 || !agrees(got.CPUPct, truth) {
		t.Errorf("cpu_pct = %.1f, the kernel accounted %.1f%% to both over the window", got.CPUPct, truth)
	}

	// One exits between two samples: the worker reports the other, no error.
	_ = b.Process.Kill()
	_ = b.Wait()
	after := s.Sample(context.Background(), []ProcQuery{{PIDs: pids}}, time.Now())[0]
	if after.Alive != 1 || after.MainPID != int32(a.Process.Pid) {
		t.Fatalf("after one exit: alive=%d main=%d", after.Alive, after.MainPID)
	}
}

func TestProcSampler_ForgetsUnlistedProcesses(t *testing.T) {
	s := NewProcSampler()
	self := int32(os.Getpid())
	now := time.Now()
	s.Sample(context.Background(), []ProcQuery{{PIDs: []int32{self}}}, now)
	if len(s.procs) != 1 {
		t.Fatalf("tracking %d processes, want 1", len(s.procs))
	}
	s.Sample(context.Background(), nil, now.Add(time.Second))
	if len(s.procs) != 0 {
		t.Fatalf("still tracking %d processes no worker lists", len(s.procs))
	}
}

func TestProcSampler_LateOrRepeatedTickGivesNoBogusRate(t *testing.T) {
	s := NewProcSampler()
	self := int32(os.Getpid())
	now := time.Now()
	s.Sample(context.Background(), []ProcQuery{{PIDs: []int32{self}}}, now)
	// The same instant again (a clock that did not move): no division by
	// zero, no rate.
	if got := s.Sample(context.Background(), []ProcQuery{{PIDs: []int32{self}}}, now)[0]; got.CPUPct != 0 {
		t.Errorf("cpu_pct over zero wall time = %v, want 0", got.CPUPct)
	}
}

// BenchmarkProcSampler_16Workers is the process half of a hive's tick with 16
// single-process workers (this test process stands in for each).
func BenchmarkProcSampler_16Workers(b *testing.B) {
	self := int32(os.Getpid())
	workers := make([]ProcQuery, 16)
	for i := range workers {
		workers[i] = ProcQuery{PIDs: []int32{self}}
	}
	s := NewProcSampler()
	ctx := context.Background()
	now := time.Now()
	for b.Loop() {
		now = now.Add(time.Second)
		s.Sample(ctx, workers, now)
	}
}

func TestProcSampler_IdentityOnlyReadsNoCounters(t *testing.T) {
	cmd := startBurn(t, "16")
	pid := int32(cmd.Process.Pid)
	s := NewProcSampler()
	now := time.Now()
	got := s.Sample(context.Background(), []ProcQuery{{PIDs: []int32{pid, 1 << 30}, IdentityOnly: true}}, now)[0]
	if got.Alive != 1 || got.MainPID != pid || len(got.Cmdline) == 0 {
		t.Fatalf("identity = %+v", got)
	}
	if got.CPUPct != 0 || got.RSSBytes != 0 {
		t.Errorf("identity read counters: %+v", got)
	}
	_ = cmd.Process.Kill()
	_ = cmd.Wait()
	if got := s.Sample(context.Background(), []ProcQuery{{PIDs: []int32{pid}, IdentityOnly: true}}, now.Add(time.Second))[0]; got.Alive != 0 {
		t.Errorf("a killed worker still counts as alive: %+v", got)
	}
}
