package models

import (
	"context"
	"errors"
	"flag"
	"fmt"
	"net"
	"net/http"
	"os"
	"slices"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"go.uber.org/goleak"

	"github.com/rbee/rbee/internal/testutil"
	"github.com/rbee/rbee/wsapi"
)

// The engines these tests start are this test binary, run as a fake engine:
// it says something, loads for a while (GET /health 503), then serves (200),
// or exits with a status.
func TestMain(m *testing.M) {
	if len(os.Args) > 1 && os.Args[1] == "fake-engine" {
		os.Exit(fakeEngine(os.Args[2:]))
	}
	goleak.VerifyTestMain(m)
}

func fakeEngine(args []string) int {
	fs := flag.NewFlagSet("fake-engine", flag.ExitOnError)
	port := fs.String("port", "", "")
	loadMS := fs.Int("load-ms", 0, "")
	exit := fs.Int("exit", -1, "exit with this status at once")
	say := fs.String("say", "", "a line to print first")
	_ = fs.Parse(args)
	if *say != "" {
		fmt.Println("\x1b[31m" + *say + "\x1b[0m") // engines color their logs
	}
	if *exit >= 0 {
		return *exit
	}
	ready := time.Now().Add(time.Duration(*loadMS) * time.Millisecond)
	l, err := net.Listen("tcp", "127.0.0.1:"+*port)
	if err != nil {
		fmt.Println("listen:", err)
		return 1
	}
	_ = http.Serve(l, http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if time.Now().Before(ready) {
			w.WriteHeader(http.StatusServiceUnavailable)
			return
		}
		fmt.Fprint(w, `{"status":"ok"}`)
	}))
	return 0
}

type hooks struct {
	mu         sync.Mutex
	registered map[string]int // instance -> pid
	leases     map[string]int // worker -> leases
	drained    []string
}

func newManager(t *testing.T, cfg Config, entries ...Entry) (*Manager, *hooks) {
	t.Helper()
	exe, err := os.Executable()
	if err != nil {
		t.Fatal(err)
	}
	engines := BuiltinEngines()
	engines["fake"] = &Engine{Name: "fake", Words: []string{exe, "fake-engine", "--port", "{port}"}}
	ResolveEngines(engines, "")
	h := &hooks{registered: map[string]int{}, leases: map[string]int{}}
	cfg.Entries, cfg.Engines, cfg.LogDir = entries, engines, t.TempDir()
	cfg.StopGrace = 2 * time.Second
	cfg.Register = func(instance string, pid int, model string, slots int) error {
		h.mu.Lock()
		h.registered[instance] = pid
		h.mu.Unlock()
		return nil
	}
	cfg.Leases = func(worker string) (int, time.Time) {
		h.mu.Lock()
		defer h.mu.Unlock()
		return h.leases[worker], time.Time{}
	}
	cfg.Drain = func(worker string) {
		h.mu.Lock()
		h.drained = append(h.drained, worker)
		h.mu.Unlock()
	}
	m, err := New(cfg)
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- m.Run(ctx) }()
	t.Cleanup(func() {
		cancel()
		<-done
		m.Close() // Run leaves the engines to Close, as a node's stop does
	})
	return m, h
}

func fake(name string, args ...string) Entry {
	exe, _ := os.Executable() // any file: its size is the model's
	return Entry{Name: name, Path: exe, Engine: "fake", Slots: 2, Ctx: 1024, VRAMMB: 1000, Args: args}
}

func managed(m *Manager) []wsapi.ManagedWorker {
	_, _, _, ws := m.Report([]wsapi.ProcessStats{})
	return ws
}

func catalog(m *Manager, name string) wsapi.CatalogEntry {
	_, cat, _, _ := m.Report([]wsapi.ProcessStats{})
	for _, c := range cat {
		if c.Name == name {
			return c
		}
	}
	return wsapi.CatalogEntry{}
}

func alive(pid int) bool {
	return pid > 0 && !errors.Is(syscall.Kill(pid, 0), syscall.ESRCH)
}

func waitState(t *testing.T, m *Manager, state string) wsapi.ManagedWorker {
	t.Helper()
	var got wsapi.ManagedWorker
	eventually(t, 10*time.Second, func() bool {
		ws := managed(m)
		if len(ws) == 1 && ws[0].State == state {
			got = ws[0]
			return true
		}
		return false
	}, "a worker "+state)
	return got
}

func TestManager_StartReadyIdleUnload(t *testing.T) {
	m, h := newManager(t, Config{IdleUnload: 300 * time.Millisecond, SimGPUs: []wsapi.GPUInfo{{Index: 0, TotalVRAMMB: 8000, Simulated: true}}},
		fake("m", "--load-ms", "300"))
	m.Start(&wsapi.ModelStart{StartID: "s1", Model: "m", GPUs: []int{0}, VRAMMB: 3000}, "q")
	m.Start(&wsapi.ModelStart{StartID: "s1", Model: "m", GPUs: []int{0}, VRAMMB: 3000}, "q") // a repeat: ignored
	w := waitState(t, m, wsapi.ManagedLoading)
	if w.StartID != "s1" || w.StartedBy != "q" || w.PID == 0 || len(w.GPUs) != 1 {
		t.Fatalf("loading worker %+v", w)
	}
	// While it loads its cgroup worker is not offered to the queen.
	kept, _, gpus, _ := m.Report([]wsapi.ProcessStats{{Group: wsapi.ManagedGroup, Instance: w.Instance}, {Group: "llm", Instance: "1"}})
	if len(kept) != 1 || kept[0].Group != "llm" {
		t.Fatalf("report kept %+v, want only the worker rbee did not start", kept)
	}
	if gpus[0].UsedVRAMMB != 3000 {
		t.Fatalf("simulated GPU used %d MiB, want the 3000 placed on it", gpus[0].UsedVRAMMB)
	}
	w = waitState(t, m, wsapi.ManagedReady)
	h.mu.Lock()
	pid := h.registered[w.Instance]
	h.mu.Unlock()
	if pid != w.PID {
		t.Fatalf("registered pid %d, want %d", pid, w.PID)
	}
	if c := catalog(m, "m"); c.LoadMS < 250 || c.Failures != 0 {
		t.Fatalf("catalog after a start: %+v", c)
	}
	// It learns the VRAM the worker holds.
	m.Report([]wsapi.ProcessStats{{Group: wsapi.ManagedGroup, Instance: w.Instance, VRAMMB: 2500}})
	if c := catalog(m, "m"); c.VRAMMB != 2500 || c.VRAMSource != "learned" {
		t.Fatalf("catalog VRAM %d (%s), want 2500 learned", c.VRAMMB, c.VRAMSource)
	}
	// Idle: stopped, its process gone.
	eventually(t, 10*time.Second, func() bool { return len(managed(m)) == 0 && !alive(w.PID) }, "idle worker stopped")
}

func TestManager_EngineExitsAtOnce(t *testing.T) {
	m, _ := newManager(t, Config{}, fake("bad", "--say", "cannot load model: bad magic", "--exit", "3"))
	m.Start(&wsapi.ModelStart{StartID: "s1", Model: "bad"}, "q")
	var c wsapi.CatalogEntry
	eventually(t, 10*time.Second, func() bool { c = catalog(m, "bad"); return c.Failures == 1 }, "the failure recorded")
	if !strings.Contains(c.FailReason, "exited with status 3") || !strings.Contains(c.FailReason, "cannot load model: bad magic") ||
		strings.ContainsAny(c.FailReason, "\x1b\n") {
		t.Fatalf("fail reason %q, want the status and the engine's last line, printable", c.FailReason)
	}
	if len(managed(m)) != 0 {
		t.Fatal("a failed worker is still listed")
	}
	tel := wsapi.HiveTelemetry{HiveID: "h", Catalog: []wsapi.CatalogEntry{c}}
	if err := tel.Validate("h"); err != nil {
		t.Fatalf("the report would be refused: %v", err)
	}
	m.Start(&wsapi.ModelStart{StartID: "s2", Model: "bad"}, "q")
	eventually(t, 10*time.Second, func() bool { return catalog(m, "bad").Failures == 2 }, "failures counted in a row")
}

func TestManager_LoadTimeout(t *testing.T) {
	m, _ := newManager(t, Config{LoadTimeout: 300 * time.Millisecond}, fake("slow", "--load-ms", "60000"))
	m.Start(&wsapi.ModelStart{StartID: "s1", Model: "slow"}, "q")
	w := waitState(t, m, wsapi.ManagedLoading)
	var c wsapi.CatalogEntry
	eventually(t, 10*time.Second, func() bool { c = catalog(m, "slow"); return c.Failures == 1 }, "the timeout recorded")
	if !strings.Contains(c.FailReason, "not ready within 300ms") {
		t.Fatalf("fail reason %q", c.FailReason)
	}
	eventually(t, 5*time.Second, func() bool { return !alive(w.PID) }, "the engine killed")
}

// An evicted worker with a lease in flight drains: no new lease, stopped
// only once the lease ends; the start that evicted it waits for it.
func TestManager_EvictDrainsThenStarts(t *testing.T) {
	m, h := newManager(t, Config{}, fake("a"), fake("b"))
	m.Start(&wsapi.ModelStart{StartID: "s1", Model: "a"}, "q")
	a := waitState(t, m, wsapi.ManagedReady)
	id := wsapi.WorkerID(wsapi.ManagedGroup, a.Instance)
	h.mu.Lock()
	h.leases[id] = 1
	h.mu.Unlock()
	m.Start(&wsapi.ModelStart{StartID: "s2", Model: "b", Evict: []string{a.Instance}}, "q")
	eventually(t, 5*time.Second, func() bool {
		ws := managed(m)
		return len(ws) == 1 && ws[0].State == wsapi.ManagedDraining
	}, "a draining")
	h.mu.Lock()
	drained := append([]string(nil), h.drained...)
	h.mu.Unlock()
	if len(drained) != 1 || drained[0] != id {
		t.Fatalf("drained %v, want %s", drained, id)
	}
	consistently(t, 500*time.Millisecond, func() bool { return alive(a.PID) && len(managed(m)) == 1 }, "a kept while its lease runs, b not started")
	h.mu.Lock()
	h.leases[id] = 0
	h.mu.Unlock()
	b := waitState(t, m, wsapi.ManagedReady)
	if b.Model != "b" || alive(a.PID) {
		t.Fatalf("after the drain: %+v, a alive %v", b, alive(a.PID))
	}
}

func TestManager_CloseStopsEngines(t *testing.T) {
	m, _ := newManager(t, Config{}, fake("a"))
	m.Start(&wsapi.ModelStart{StartID: "s1", Model: "a"}, "q")
	w := waitState(t, m, wsapi.ManagedReady)
	m.Close()
	if alive(w.PID) {
		t.Fatal("engine outlived Close")
	}
	m.Start(&wsapi.ModelStart{StartID: "s2", Model: "a"}, "q")
	if len(managed(m)) != 0 {
		t.Fatal("started after Close")
	}
}

func TestManager_CatalogReasons(t *testing.T) {
	m, _ := newManager(t, Config{},
		Entry{Name: "gone", Path: "/nonexistent/x.gguf", Engine: EngineLlamaServer, Slots: 1, Ctx: 1024},
		Entry{Name: "odd", Path: os.Args[0], Engine: "nosuch", Slots: 1, Ctx: 1024},
		Entry{Name: "sim", Engine: EngineSim, Slots: 1, Ctx: 1024})
	for name, want := range map[string]string{"gone": "/nonexistent/x.gguf", "odd": "unknown engine", "sim": "rbee"} {
		if c := catalog(m, name); !strings.Contains(c.Unavailable, want) {
			t.Errorf("%s: unavailable %q, want it to name %q", name, c.Unavailable, want)
		}
	}
	m.Start(&wsapi.ModelStart{StartID: "s1", Model: "gone"}, "q")
	if len(managed(m)) != 0 {
		t.Fatal("started a model whose file is missing")
	}
	if _, err := New(Config{Entries: []Entry{fake("x"), fake("x")}, Engines: BuiltinEngines()}); err == nil {
		t.Fatal("two entries with one name accepted")
	}
}

func eventually(t *testing.T, d time.Duration, cond func() bool, what string) {
	t.Helper()
	testutil.Eventually(t, d, what, boolCond(cond))
}

func consistently(t *testing.T, d time.Duration, cond func() bool, what string) {
	t.Helper()
	testutil.Consistently(t, d, what, boolCond(cond))
}

func boolCond(cond func() bool) func() error {
	return func() error {
		if !cond() {
			return errors.New("not yet")
		}
		return nil
	}
}

// What a hive learned of a model (its VRAM, its load time) outlives the
// hive when it has a state file.
func TestManager_LearnedFiguresKept(t *testing.T) {
	state := t.TempDir() + "/models.json"
	m, _ := newManager(t, Config{StateFile: state}, fake("m", "--load-ms", "100"))
	m.Start(&wsapi.ModelStart{StartID: "s1", Model: "m"}, "q")
	w := waitState(t, m, wsapi.ManagedReady)
	m.Report([]wsapi.ProcessStats{{Group: wsapi.ManagedGroup, Instance: w.Instance, VRAMMB: 2345}})
	before := catalog(m, "m")
	m.Close()

	m2, _ := newManager(t, Config{StateFile: state}, fake("m"))
	after := catalog(m2, "m")
	if after.VRAMMB != 2345 || after.VRAMSource != "learned" || after.LoadMS != before.LoadMS || after.LoadMS == 0 {
		t.Fatalf("after a restart: %+v, want VRAM 2345 learned and load %d ms", after, before.LoadMS)
	}
}

// A start split over two simulated GPUs counts half its VRAM on each.
func TestManager_SplitStartCountsShares(t *testing.T) {
	m, _ := newManager(t, Config{SimGPUs: []wsapi.GPUInfo{{Index: 0, TotalVRAMMB: 8000, Simulated: true},
		{Index: 1, TotalVRAMMB: 8000, Simulated: true}, {Index: 2, TotalVRAMMB: 8000, Simulated: true}}},
		fake("m", "--load-ms", "100"))
	m.Start(&wsapi.ModelStart{StartID: "s1", Model: "m", GPUs: []int{0, 2}, VRAMMB: 9001}, "q")
	w := waitState(t, m, wsapi.ManagedReady)
	if !slices.Equal(w.GPUs, []int{0, 2}) {
		t.Fatalf("worker on GPUs %v, want [0 2]", w.GPUs)
	}
	_, _, gpus, _ := m.Report([]wsapi.ProcessStats{})
	if got := []uint64{gpus[0].UsedVRAMMB, gpus[1].UsedVRAMMB, gpus[2].UsedVRAMMB}; !slices.Equal(got, []uint64{4501, 0, 4501}) {
		t.Fatalf("simulated GPUs used %v MiB, want half of 9001 (rounded up) on GPUs 0 and 2", got)
	}
}
