package telemetry

import (
	"bufio"
	"context"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
	"time"
)

// startBurn builds and starts testdata/burn, a process that keeps about one
// core busy and holds mib MiB of touched memory, and returns it once ready.
func startBurn(t *testing.T, mib string) *exec.Cmd {
	t.Helper()
	bin := filepath.Join(t.TempDir(), "burn")
	if out, err := exec.Command("go", "build", "-o", bin, "./testdata/burn").CombinedOutput(); err != nil {
		t.Fatalf("build burn: %v\n%s", err, out)
	}
	cmd := exec.Command(bin, "-mib", mib)
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
// window for a rate, not a wait for a condition.
func measureOver(t *testing.T, s *ProcSampler, pids []int32, wait time.Duration) ProcStats {
	t.Helper()
	ctx := context.Background()
	t0 := time.Now()
	first := s.Sample(ctx, []ProcQuery{{PIDs: pids}}, t0)[0]
	if first.CPUPct != 0 {
		t.Errorf("first sample has a CPU rate %.1f; there is no previous sample", first.CPUPct)
	}
	timer := time.NewTimer(wait)
	<-timer.C
	return s.Sample(ctx, []ProcQuery{{PIDs: pids}}, time.Now())[0]
}

func TestProcSampler_RealProcess(t *testing.T) {
	cmd := startBurn(t, "96")
	pid := int32(cmd.Process.Pid)
	s := NewProcSampler()
	got := measureOver(t, s, []int32{pid}, 700*time.Millisecond)

	if got.Alive != 1 || got.MainPID != pid {
		t.Fatalf("alive=%d main=%d, want 1 and %d", got.Alive, got.MainPID, pid)
	}
	// One busy goroutine: about 100% of a core. The bounds leave room for a
	// loaded 2-core CI machine and for the Go runtime's own threads.
	if got.CPUPct < 25 || got.CPUPct > 220 {
		t.Errorf("cpu_pct = %.1f, want about 100", got.CPUPct)
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
	got := measureOver(t, s, pids, 500*time.Millisecond)
	if got.Alive != 2 {
		t.Fatalf("alive = %d, want 2", got.Alive)
	}
	if rss := got.RSSBytes >> 20; rss < 60 {
		t.Errorf("rss = %d MiB, want the sum of two ~32 MiB processes", rss)
	}
	if got.CPUPct < 40 {
		t.Errorf("cpu_pct = %.1f, want about 200 (two busy processes) on an idle machine, at least 40 on a busy one", got.CPUPct)
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
