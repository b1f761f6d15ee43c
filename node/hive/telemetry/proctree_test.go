package telemetry

import (
	"context"
	"errors"
	"os"
	"path/filepath"
	"slices"
	"strconv"
	"testing"
	"time"
)

// fakeChildren is a process table: children by parent. A pid in fail cannot
// have its children read.
func fakeChildren(table map[int32][]int32, fail ...int32) childLister {
	return func(pid int32) ([]int32, error) {
		if slices.Contains(fail, pid) {
			return nil, errors.New("permission denied")
		}
		return table[pid], nil
	}
}

func TestExpandTree(t *testing.T) {
	wide := make([]int32, maxTreePIDs+10)
	for i := range wide {
		wide[i] = int32(1000 + i)
	}
	for _, tc := range []struct {
		name    string
		roots   []int32
		table   map[int32][]int32
		fail    []int32
		skip    []int32
		want    []int32
		wantErr bool
	}{
		{name: "a lone process is its own tree", roots: []int32{10}, want: []int32{10}},
		{name: "children then grandchildren, root first",
			roots: []int32{10}, table: map[int32][]int32{10: {11, 12}, 12: {13}, 13: {14}},
			want: []int32{10, 11, 12, 13, 14}},
		{name: "other processes' children are not the worker's",
			roots: []int32{10}, table: map[int32][]int32{10: {11}, 20: {21}},
			want: []int32{10, 11}},
		{name: "a child that exited mid-walk has no children",
			roots: []int32{10}, table: map[int32][]int32{10: {11, 12}, 12: {13}},
			want: []int32{10, 11, 12, 13}},
		{name: "a pid listed twice (reused during the walk) counts once",
			roots: []int32{10}, table: map[int32][]int32{10: {11, 12}, 12: {11, 10}},
			want: []int32{10, 11, 12}},
		{name: "unreadable children: the rest of the tree and an error",
			roots: []int32{10}, table: map[int32][]int32{10: {11, 12}, 11: {15}, 12: {13}}, fail: []int32{11},
			want: []int32{10, 11, 12, 13}, wantErr: true},
		{name: "a child another worker reports is left out, with its subtree",
			roots: []int32{10}, table: map[int32][]int32{10: {11, 12}, 12: {13}}, skip: []int32{12},
			want: []int32{10, 11}},
		{name: "no pid, no tree", roots: []int32{0, -1}, want: nil},
		{name: "overlapping roots count once",
			roots: []int32{10, 11, 10}, table: map[int32][]int32{10: {11}, 11: {12}},
			want: []int32{10, 11, 12}},
		{name: "a tree past the bound is cut there",
			roots: []int32{10}, table: map[int32][]int32{10: wide},
			want: append([]int32{10}, wide[:maxTreePIDs-1]...)},
	} {
		t.Run(tc.name, func(t *testing.T) {
			skip := make(map[int32]bool)
			for _, p := range tc.skip {
				skip[p] = true
			}
			got, err := expandTree(tc.roots, fakeChildren(tc.table, tc.fail...), skip)
			if !slices.Equal(got, tc.want) {
				t.Errorf("tree = %v, want %v", got, tc.want)
			}
			if (err != nil) != tc.wantErr {
				t.Errorf("err = %v, want an error: %v", err, tc.wantErr)
			}
		})
	}
}

func TestStatPPid(t *testing.T) {
	for _, tc := range []struct {
		stat string
		want int32
		ok   bool
	}{
		{"42 (ollama) S 7 42 42 0 -1", 7, true},
		// A command may hold spaces and parentheses: the last ')' ends it.
		{"42 (a) b (c)) R 1 42 42", 1, true},
		{"42 (kthreadd) S 0 0 0", 0, true},
		{"42 (truncated", 0, false},
		{"42 (x) S", 0, false},
	} {
		got, ok := statPPid([]byte(tc.stat))
		if got != tc.want || ok != tc.ok {
			t.Errorf("statPPid(%q) = %d, %v; want %d, %v", tc.stat, got, ok, tc.want, tc.ok)
		}
	}
}

// writeFakeProc lays out a procfs with the given parents (pid: ppid): each
// process's stat, and its children file under its one task.
func writeFakeProc(t *testing.T, parents map[int32]int32) string {
	t.Helper()
	proc := t.TempDir()
	kids := make(map[int32][]string)
	for pid, ppid := range parents {
		kids[ppid] = append(kids[ppid], strconv.Itoa(int(pid)))
	}
	for pid, ppid := range parents {
		p := strconv.Itoa(int(pid))
		task := filepath.Join(proc, p, "task", p)
		if err := os.MkdirAll(task, 0o755); err != nil {
			t.Fatal(err)
		}
		stat := p + " (a b) S " + strconv.Itoa(int(ppid)) + " 1 1 0"
		if err := os.WriteFile(filepath.Join(proc, p, "stat"), []byte(stat), 0o644); err != nil {
			t.Fatal(err)
		}
		slices.Sort(kids[pid])
		line := ""
		for _, k := range kids[pid] {
			line += k + " "
		}
		if err := os.WriteFile(filepath.Join(task, "children"), []byte(line), 0o644); err != nil {
			t.Fatal(err)
		}
	}
	return proc
}

// Both ways of listing children (the kernel's children files, a scan of
// parents) give the same tree.
func TestChildListers_AgreeOnAFakeProc(t *testing.T) {
	proc := writeFakeProc(t, map[int32]int32{1: 0, 10: 1, 11: 10, 12: 10, 13: 12, 20: 1})
	scan, err := ppidChildren(proc)
	if err != nil {
		t.Fatal(err)
	}
	for name, l := range map[string]childLister{"children files": procChildren(proc), "ppid scan": scan} {
		got, err := expandTree([]int32{10}, l, nil)
		if err != nil {
			t.Fatalf("%s: %v", name, err)
		}
		slices.Sort(got)
		if want := []int32{10, 11, 12, 13}; !slices.Equal(got, want) {
			t.Errorf("%s: tree = %v, want %v", name, got, want)
		}
		// A process that is gone: no children, no error.
		if kids, err := l(99); err != nil || len(kids) != 0 {
			t.Errorf("%s: children of a gone process = %v, %v", name, kids, err)
		}
	}
}

// burnTree starts burn -tree and returns the pids of its tree, root first,
// once the kernel lists all four.
func burnTree(t *testing.T) []int32 {
	t.Helper()
	if !hasChildrenFiles("/proc") {
		t.Skip("this kernel has no /proc/<pid>/task/<tid>/children (CONFIG_PROC_CHILDREN); the ppid scan is tested on a fake /proc")
	}
	root := int32(startBurnArgs(t, "-busy=false", "-mib", "8", "-tree").Process.Pid)
	// burn prints ready once its children are: the tree is complete now.
	tree, err := expandTree([]int32{root}, procChildren("/proc"), nil)
	if err != nil || len(tree) != 4 || tree[0] != root {
		t.Fatalf("tree of burn -tree = %v, %v; want root %d and three descendants", tree, err, root)
	}
	return tree
}

func TestProcChildren_RealTreeMatchesPPidScan(t *testing.T) {
	tree := burnTree(t)
	scan, err := ppidChildren("/proc")
	if err != nil {
		t.Fatal(err)
	}
	got, err := expandTree(tree[:1], scan, nil)
	if err != nil {
		t.Fatal(err)
	}
	// The same processes, root first; siblings may come in another
	// order (the kernel lists a process's children by when they were
	// made, the scan by pid, and pids wrap).
	sorted := func(ps []int32) []int32 {
		out := slices.Clone(ps)
		slices.Sort(out[1:])
		return out
	}
	if !slices.Equal(sorted(got), sorted(tree)) {
		t.Errorf("ppid scan tree = %v, children files tree = %v", got, tree)
	}
}

// A worker outside a cgroup (here registered as `rbee worker run` would)
// whose children do the work reports their CPU, memory and GPU, under its
// own pid.
func TestCollector_ForeignWorkerIsItsProcessTree(t *testing.T) {
	tree := burnTree(t)
	root, grandchild := tree[0], tree[3]
	var gpuPIDs [][]int32
	c := NewCollector(CollectorConfig{CgroupRoot: NoCgroups,
		// The GPU memory is the grandchild's, as vLLM's EngineCore holds it.
		GPU: func(workers [][]int32) []WorkerGPU {
			gpuPIDs = workers
			per := map[int32]ProcGPU{grandchild: {Devices: []DeviceUse{{Index: 0, VRAMBytes: 3 << 30, UtilPct: 80, TotalVRAMBytes: 24 << 30}}}}
			out := make([]WorkerGPU, len(workers))
			for i, w := range workers {
				out[i] = SumWorker(per, w)
			}
			return out
		}})
	if err := c.RegisterWorker("llm", "8080", root, "m", 1); err != nil {
		t.Fatal(err)
	}
	ctx := context.Background()
	t0 := time.Now()
	ticks0 := cpuTicks(tree)
	rootTicks0 := cpuTicks(tree[:1])
	if _, err := c.Collect(ctx); err != nil {
		t.Fatal(err)
	}
	// The measurement window for a rate, not a wait for a condition.
	<-time.NewTimer(time.Second).C
	ws, err := c.Collect(ctx)
	if err != nil {
		t.Fatal(err)
	}
	wall := time.Since(t0).Seconds()
	truth := (cpuTicks(tree) - ticks0) / clockTicks / wall * 100
	rootOnly := (cpuTicks(tree[:1]) - rootTicks0) / clockTicks / wall * 100
	if len(ws) != 1 {
		t.Fatalf("workers = %+v", ws)
	}
	w := ws[0]
	t.Logf("worker cpu_pct=%.1f rss_mb=%d vram_mb=%d; kernel: tree %.1f%%, root alone %.1f%%", w.CPUPct, w.RSSMB, w.VRAMMB, truth, rootOnly)
	if w.PID != uint32(root) {
		t.Errorf("pid = %d, want the worker's own %d", w.PID, root)
	}
	// Two busy descendants, an idle root: the sum over the tree, whatever
	// the load (the root alone would read near 0).
	if !agrees(w.CPUPct, truth) || w.CPUPct < rootOnly+20 {
		t.Errorf("cpu_pct = %.1f, the kernel accounted %.1f%% to the tree, %.1f%% to the root", w.CPUPct, truth, rootOnly)
	}
	// 8 + 128 + 8 + 8 MiB held, plus four Go runtimes.
	if w.RSSMB < 150 {
		t.Errorf("rss_mb = %d, want the tree's, over 150", w.RSSMB)
	}
	if len(gpuPIDs) != 1 || !slices.Equal(gpuPIDs[0], tree) {
		t.Errorf("GPU asked for pids %v, want the tree %v", gpuPIDs, tree)
	}
	if w.VRAMMB != 3<<10 || w.GPUUtilPct != 80 || w.TotalVRAMMB != 24<<10 {
		t.Errorf("gpu = %.0f%% %d/%d MiB, want the grandchild's 80%% 3072/24576", w.GPUUtilPct, w.VRAMMB, w.TotalVRAMMB)
	}
}

// A child first seen mid-way (forked since the last tick) adds nothing on its
// first sample, though it may have run a while: its rate starts with its
// second sample, so a new child never spikes the worker's CPU %.
func TestProcSampler_ChildFirstSeenMidwayDoesNotSpike(t *testing.T) {
	tree := burnTree(t)
	s := NewProcSampler()
	ctx := context.Background()
	t0 := time.Now()
	s.Sample(ctx, []ProcQuery{{PIDs: tree[:1]}}, t0)
	// Measurement windows, not waits for a condition: the busy
	// descendants run up CPU time the root's worker must not claim.
	<-time.NewTimer(500 * time.Millisecond).C
	t1 := time.Now()
	first := s.Sample(ctx, []ProcQuery{{PIDs: tree}}, t1)[0]
	if first.Alive != 4 {
		t.Fatalf("alive = %d, want 4", first.Alive)
	}
	// The idle root alone: well under one busy child's share.
	if first.CPUPct > 20 {
		t.Errorf("cpu_pct with children first seen = %.1f, want the idle root's only", first.CPUPct)
	}
	ticks := cpuTicks(tree)
	<-time.NewTimer(500 * time.Millisecond).C
	second := s.Sample(ctx, []ProcQuery{{PIDs: tree}}, time.Now())[0]
	truth := (cpuTicks(tree) - ticks) / clockTicks / time.Since(t1).Seconds() * 100
	if !agrees(second.CPUPct, truth) || second.CPUPct <= first.CPUPct {
		t.Errorf("cpu_pct once the children have a previous sample = %.1f, the kernel accounted %.1f%%", second.CPUPct, truth)
	}
}

// BenchmarkTreeWalker is the tree walk one --worker costs a tick: the go
// command that runs this test stands in for `ollama serve` (a Go server with
// a dozen threads, each with a children file to read, and a child).
func BenchmarkTreeWalker(b *testing.B) {
	w := newTreeWalker("/proc", func(string, ...any) {})
	root := int32(os.Getppid())
	for b.Loop() {
		w.tick()
		if len(w.tree(root, nil)) == 0 {
			b.Fatal("no tree")
		}
	}
}
