package telemetry

import (
	"context"
	"errors"
	"net"
	"net/http"
	"net/http/httptest"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	"github.com/rbee/rbee/wsapi"
)

func TestCollector_CgroupWorkersInTheWireShape(t *testing.T) {
	c := NewCollector(CollectorConfig{
		CgroupRoot:  "testdata/cgroup/hive",
		FromCmdline: func([]string) ModelInfo { return ModelInfo{Model: "from-cmdline"} },
		GPU: func(ws [][]int32) []WorkerGPU {
			out := make([]WorkerGPU, len(ws))
			for i, pids := range ws {
				if slices.Contains(pids, 4321) {
					out[i] = WorkerGPU{UtilPct: 85, VRAMMB: 4096, TotalVRAMMB: 24576}
				}
			}
			return out
		},
	})
	got, err := c.Collect(context.Background())
	if err != nil {
		t.Fatalf("collect: %v", err)
	}
	byID := map[string]int{}
	for i, w := range got {
		byID[w.ID()] = i
	}
	i, ok := byID["llm/8080"]
	if !ok {
		t.Fatalf("llm/8080 missing from %+v", got)
	}
	w := got[i]
	if w.RSSMB != 2048 {
		t.Errorf("rss_mb = %d, want memory.current 2 GiB = 2048", w.RSSMB)
	}
	if w.GPUUtilPct != 85 || w.VRAMMB != 4096 || w.TotalVRAMMB != 24576 {
		t.Errorf("gpu figures = %v %v %v, want the GPU hook's for the worker holding pid 4321", w.GPUUtilPct, w.VRAMMB, w.TotalVRAMMB)
	}
	// The fixture's pids are not running here: no process, no command line,
	// so no model; the worker is still reported.
	if w.Model != nil {
		t.Errorf("model = %q from a process that does not exist", *w.Model)
	}
	if w.CPUPct != 0 {
		t.Errorf("cpu_pct on first sight = %v, want 0 (no previous sample)", w.CPUPct)
	}
}

func TestCollector_StaticWorkerFoundByPortWithProbedModel(t *testing.T) {
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer ln.Close()
	port := ln.Addr().(*net.TCPAddr).Port
	spec, err := ParseWorkerSpec("http://127.0.0.1:" + strconv.Itoa(port) + ",slots=4")
	if err != nil {
		t.Fatal(err)
	}
	probed := 0
	c := NewCollector(CollectorConfig{
		CgroupRoot:  "testdata/cgroup/no-slice",
		Workers:     []WorkerSpec{spec},
		FromCmdline: func(argv []string) ModelInfo { return ModelInfo{Model: "cmdline-guess"} },
		Probe: func(ctx context.Context, base string) (ModelInfo, error) {
			probed++
			if base != spec.URL {
				return ModelInfo{}, errors.New("wrong url " + base)
			}
			return ModelInfo{Model: "llama-3.2-1b"}, nil
		},
	})
	got, err := c.Collect(context.Background())
	if err != nil {
		t.Fatal(err)
	}
	if len(got) != 1 {
		t.Fatalf("%d workers, want the one --worker", len(got))
	}
	w := got[0]
	if w.PID != uint32(os.Getpid()) || w.Group != DefaultStaticGroup || w.Instance != strconv.Itoa(port) {
		t.Errorf("worker = %+v, want this process on port %d", w, port)
	}
	if w.Model == nil || *w.Model != "llama-3.2-1b" {
		t.Errorf("model = %v, want the API's answer over the command line's guess", w.Model)
	}
	if w.RSSMB == 0 || w.UptimeS > 3600 {
		t.Errorf("process figures = rss %d uptime %d", w.RSSMB, w.UptimeS)
	}
	if m := c.Models()[w.ID()]; m.Slots != 4 {
		t.Errorf("slots = %d, want the configured 4", m.Slots)
	}
	if _, err := c.Collect(context.Background()); err != nil {
		t.Fatal(err)
	}
	if probed != 1 {
		t.Errorf("probed %d times, want once: an answered worker is not asked again", probed)
	}
}

func TestCollector_ConfiguredModelWinsAndUnreachableWorkerStillListed(t *testing.T) {
	spec, err := ParseWorkerSpec("http://127.0.0.1:1,model=qwen2.5-7b")
	if err != nil {
		t.Fatal(err)
	}
	probed := 0
	c := NewCollector(CollectorConfig{
		CgroupRoot: "testdata/cgroup/no-slice",
		Workers:    []WorkerSpec{spec},
		Probe: func(context.Context, string) (ModelInfo, error) {
			probed++
			return ModelInfo{}, errors.New("connection refused")
		},
	})
	for range 2 {
		got, err := c.Collect(context.Background())
		if err != nil {
			t.Fatal(err)
		}
		if len(got) != 1 || got[0].PID != 0 || got[0].Model == nil || *got[0].Model != "qwen2.5-7b" || got[0].Slots != 1 || got[0].Simulated {
			t.Fatalf("got %+v, want the worker with pid 0, its configured model and 1 slot", got)
		}
	}
	if probed != 1 {
		t.Errorf("probed %d times in two ticks, want once (then again after %v)", probed, probeRetry)
	}
}

func TestCollector_ConfiguredModelStillProbedOnceForSlots(t *testing.T) {
	for _, tc := range []struct {
		name      string
		spec      string
		probe     ModelInfo
		wantModel string
		wantSlots int
	}{
		{"slots from the API, name from the user", "model=alias", ModelInfo{Model: "llama-3.2-1b-q4", Slots: 4, Simulated: true}, "alias", 4},
		{"configured slots win", "model=alias,slots=2", ModelInfo{Model: "x", Slots: 4}, "alias", 2},
		{"an API that names no model still tells slots", "model=alias", ModelInfo{Slots: 3}, "alias", 3},
		{"unconfigured: all from the API", "group=g", ModelInfo{Model: "served", Slots: 5, Simulated: true}, "served", 5},
	} {
		t.Run(tc.name, func(t *testing.T) {
			spec, err := ParseWorkerSpec("http://127.0.0.1:1," + tc.spec)
			if err != nil {
				t.Fatal(err)
			}
			probed := 0
			c := NewCollector(CollectorConfig{
				CgroupRoot: "testdata/cgroup/no-slice",
				Workers:    []WorkerSpec{spec},
				Probe: func(context.Context, string) (ModelInfo, error) {
					probed++
					return tc.probe, nil
				},
				SimGPU: func(context.Context, string) (WorkerGPU, error) {
					return WorkerGPU{UtilPct: 50, VRAMMB: 5000, TotalVRAMMB: 24576}, nil
				},
			})
			for range 3 {
				got, err := c.Collect(context.Background())
				if err != nil {
					t.Fatal(err)
				}
				w := got[0]
				if w.Model == nil || *w.Model != tc.wantModel || w.Slots != tc.wantSlots || w.Simulated != tc.probe.Simulated {
					t.Fatalf("worker %+v (model %v), want %q with %d slots, simulated %v", w, w.Model, tc.wantModel, tc.wantSlots, tc.probe.Simulated)
				}
				if tc.probe.Simulated && (w.GPUUtilPct != 50 || w.VRAMMB != 5000 || w.TotalVRAMMB != 24576) {
					t.Errorf("simulated worker's gpu = %v %v %v, want its /rbee/sim/gpu", w.GPUUtilPct, w.VRAMMB, w.TotalVRAMMB)
				}
			}
			if probed != 1 {
				t.Errorf("probed %d times, want once", probed)
			}
			if m := c.Models()[wsapi.WorkerID(spec.Group, spec.Instance)]; m.Model != tc.wantModel || m.Slots != tc.wantSlots || m.Simulated != tc.probe.Simulated {
				t.Errorf("Models() = %+v", m)
			}
		})
	}
}

// A tick lists the cgroup workers first, then the registered ones outside any
// cgroup (by group/instance), then the --worker servers rbee did not start; a
// registration names its cgroup worker's model, and a --worker whose process
// is in a cgroup is reported once, by its cgroup.
func TestCollector_JoinsCgroupRegisteredAndStaticWorkers(t *testing.T) {
	root := t.TempDir()
	self, parent := int32(os.Getpid()), int32(os.Getppid())
	writeCgroupWorker(t, root, "llm", "8080", int(self))
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer ln.Close()
	inCgroup, err := ParseWorkerSpec(ln.Addr().String())
	if err != nil {
		t.Fatal(err)
	}
	closed, err := ParseWorkerSpec("http://127.0.0.1:1,model=ext-model")
	if err != nil {
		t.Fatal(err)
	}
	exited := exec.Command("true")
	if err := exited.Run(); err != nil {
		t.Fatal(err)
	}
	var gpuPIDs [][]int32
	c := NewCollector(CollectorConfig{
		CgroupRoot: root,
		Workers:    []WorkerSpec{inCgroup, closed},
		GPU: func(ws [][]int32) []WorkerGPU {
			gpuPIDs = ws
			return make([]WorkerGPU, len(ws))
		},
	})
	for _, r := range []struct {
		group, instance string
		pid             int32
		model           string
		slots           int
	}{
		{"run", "9001", parent, "run-b", 0},
		{"llm", "8080", self, "cg-model", 3},
		{"run", "9000", parent, "run-a", 2},
		{"run", "9002", int32(exited.Process.Pid), "gone", 1},
	} {
		if err := c.RegisterWorker(r.group, r.instance, r.pid, r.model, r.slots); err != nil {
			t.Fatal(err)
		}
	}
	got, err := c.Collect(context.Background())
	if err != nil {
		t.Fatal(err)
	}
	type row struct {
		id, model, endpoint string
		pid                 uint32
		slots               int
	}
	var rows []row
	for _, w := range got {
		model := ""
		if w.Model != nil {
			model = *w.Model
		}
		rows = append(rows, row{w.ID(), model, c.Endpoint(w.Group, w.Instance), w.PID, w.Slots})
	}
	want := []row{
		{"llm/8080", "cg-model", "http://127.0.0.1:8080", uint32(self), 3},
		{"run/9000", "run-a", "http://127.0.0.1:9000", uint32(parent), 2},
		{"run/9001", "run-b", "http://127.0.0.1:9001", uint32(parent), defaultSlots},
		{DefaultStaticGroup + "/1", "ext-model", "http://127.0.0.1:1", 0, defaultSlots},
	}
	if !slices.Equal(rows, want) {
		t.Errorf("workers =\n%+v\nwant\n%+v", rows, want)
	}
	// The registered workers are parent's process tree, less this process:
	// it is the cgroup worker's, and counts there only.
	okPIDs := len(gpuPIDs) == 4 && slices.Equal(gpuPIDs[0], []int32{self}) && gpuPIDs[3] == nil
	for _, tree := range gpuPIDs[1:min(3, len(gpuPIDs))] {
		okPIDs = okPIDs && len(tree) > 0 && tree[0] == parent && !slices.Contains(tree, self)
	}
	if !okPIDs {
		t.Errorf("GPU hook's pids = %v, want [[%d] [%d ...] [%d ...] []] without %d in the trees", gpuPIDs, self, parent, parent, self)
	}
	if got[0].RSSMB != 2048 {
		t.Errorf("cgroup worker's rss_mb = %d, want its memory.current's 2048", got[0].RSSMB)
	}
}

// BenchmarkCollector_16CgroupWorkers is a hive's tick with 16 workers in
// cgroups (the cgroup files a kernel would show, in a temp dir; each worker's
// pid is this live process).
func BenchmarkCollector_16CgroupWorkers(b *testing.B) {
	root := b.TempDir()
	for i := range 16 {
		writeCgroupWorker(b, root, "llm", strconv.Itoa(8080+i), os.Getpid())
	}
	c := NewCollector(CollectorConfig{CgroupRoot: root})
	ctx := context.Background()
	for b.Loop() {
		ws, err := c.Collect(ctx)
		if err != nil || len(ws) != 16 {
			b.Fatalf("%d workers, %v", len(ws), err)
		}
	}
}

// writeCgroupWorker writes the files a kernel would show for the worker cgroup
// rbee.slice/group/instance under root, holding pid.
func writeCgroupWorker(tb testing.TB, root, group, instance string, pid int) {
	tb.Helper()
	dir := filepath.Join(root, "rbee.slice", group, instance)
	if err := os.MkdirAll(dir, 0o755); err != nil {
		tb.Fatal(err)
	}
	for name, body := range map[string]string{
		"cgroup.procs":   strconv.Itoa(pid) + "\n",
		"cpu.stat":       "usage_usec 123456\nuser_usec 100000\nsystem_usec 23456\n",
		"memory.current": "2147483648\n",
		"io.stat":        "8:0 rbytes=1048576 wbytes=2048 rios=10 wios=2 dbytes=0 dios=0\n",
	} {
		if err := os.WriteFile(filepath.Join(dir, name), []byte(body), 0o644); err != nil {
			tb.Fatal(err)
		}
	}
}

func TestCollector_ModelAdapters(t *testing.T) {
	got := CmdlineModel([]string{"llama-server", "-m", "./models/llama-3.2-1b-instruct-q4_k_m.gguf", "--port", "8080", "-np", "4"})
	if got.Model == "" || got.Slots != 4 {
		t.Errorf("CmdlineModel = %+v, want a model and 4 slots", got)
	}
	srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if r.URL.Path != "/v1/models" {
			http.NotFound(w, r)
			return
		}
		_, _ = w.Write([]byte(`{"object":"list","data":[{"id":"qwen2.5-7b","object":"model"}]}`))
	}))
	defer srv.Close()
	info, err := APIProber{Client: srv.Client()}.ProbeModel(context.Background(), srv.URL)
	if err != nil || info.Model != "qwen2.5-7b" {
		t.Errorf("ProbeModel = %+v, %v", info, err)
	}
	if _, err := (APIProber{Client: srv.Client()}).ProbeModel(context.Background(), "http://127.0.0.1:1"); err == nil {
		t.Error("ProbeModel of a closed port succeeded")
	}
}

func TestCollector_NoCgroupsLooksAtNone(t *testing.T) {
	c := NewCollector(CollectorConfig{CgroupRoot: NoCgroups})
	if c.cg != nil {
		t.Fatal("cgroup discovery on with CgroupRoot none")
	}
}

// A --worker Ollama serves every model it has installed, loaded or not: the
// hive reports them all on its one worker, with the user's slots, and asks
// again every probeRetry, since Ollama pulls and removes models as it runs.
func TestCollector_OllamaServesEveryInstalledModel(t *testing.T) {
	var tags atomic.Value
	tags.Store(`{"models":[{"name":"tiny:latest","model":"tiny:latest"},{"name":"mini:latest","model":"mini:latest"}]}`)
	srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		switch r.URL.Path {
		case "/api/tags":
			_, _ = w.Write([]byte(tags.Load().(string)))
		case "/api/ps":
			_, _ = w.Write([]byte(`{"models":[]}`)) // nothing loaded
		case "/api/version":
			_, _ = w.Write([]byte(`{"version":"0.17.4"}`))
		default:
			http.NotFound(w, r)
		}
	}))
	defer srv.Close()
	for _, tc := range []struct {
		name       string
		opts       string
		wantModel  string
		wantModels []string
	}{
		{"every installed model", ",slots=2", "tiny:latest", []string{"tiny:latest", "mini:latest"}},
		{"a configured model is all it serves", ",slots=2,model=alias", "alias", nil},
	} {
		t.Run(tc.name, func(t *testing.T) {
			tags.Store(`{"models":[{"name":"tiny:latest","model":"tiny:latest"},{"name":"mini:latest","model":"mini:latest"}]}`)
			spec, err := ParseWorkerSpec(srv.URL + tc.opts)
			if err != nil {
				t.Fatal(err)
			}
			c := NewCollector(CollectorConfig{CgroupRoot: "testdata/cgroup/no-slice", Workers: []WorkerSpec{spec},
				Probe: APIProber{Client: srv.Client()}.ProbeModel})
			got, err := c.Collect(context.Background())
			if err != nil {
				t.Fatal(err)
			}
			if len(got) != 1 || got[0].Model == nil || *got[0].Model != tc.wantModel || !slices.Equal(got[0].Models, tc.wantModels) ||
				got[0].Slots != 2 || got[0].Engine != "ollama 0.17.4" {
				t.Fatalf("workers %+v, want %s serving %v with 2 slots, on ollama 0.17.4", got, tc.wantModel, tc.wantModels)
			}
			if tc.wantModels == nil {
				return
			}
			// A model pulled later shows at the next probe, probeRetry on.
			tags.Store(`{"models":[{"name":"tiny:latest","model":"tiny:latest"},{"name":"llama3.2:1b","model":"llama3.2:1b"}]}`)
			if got, err = c.Collect(context.Background()); err != nil || !slices.Equal(got[0].Models, tc.wantModels) {
				t.Fatalf("workers %+v, %v: want no probe before probeRetry", got, err)
			}
			c.models[got[0].ID()].probedAt = time.Now().Add(-probeRetry)
			if got, err = c.Collect(context.Background()); err != nil || !slices.Equal(got[0].Models, []string{"tiny:latest", "llama3.2:1b"}) {
				t.Fatalf("workers %+v, %v: want the new list after probeRetry", got, err)
			}
		})
	}
}

func TestEngineName(t *testing.T) {
	for _, tc := range []struct {
		info APIInfo
		want string
	}{
		{APIInfo{Kind: KindOllama, Version: "0.17.4"}, "ollama 0.17.4"},
		{APIInfo{Kind: KindOllama}, "ollama"},
		{APIInfo{Kind: KindLlamaServer, Version: "b5000"}, "llama.cpp b5000"},
		{APIInfo{Kind: KindLlamaServer, Version: "b5000", Simulated: true}, ""},
		{APIInfo{Kind: KindOpenAI, Version: "1.0"}, ""},
		// What the worker says is cut and cleaned for the wire.
		{APIInfo{Kind: KindOllama, Version: " 0.17\x1b[2J.4 \u00e9\n"}, "ollama 0.17[2J.4"},
		{APIInfo{Kind: KindOllama, Version: strings.Repeat("9", 100)}, "ollama " + strings.Repeat("9", maxVersionLen)},
	} {
		if got := engineName(tc.info); got != tc.want {
			t.Errorf("engineName(%+v) = %q, want %q", tc.info, got, tc.want)
		}
	}
}

// A worker the user named otherwise reports its own name as an alias: what
// its API calls the model, else its command line. One that serves several
// models (an Ollama) or is not renamed has none.
func TestCollector_WorkersOwnNameIsAnAlias(t *testing.T) {
	for _, tc := range []struct {
		name  string
		spec  string
		probe ModelInfo
		want  []string
	}{
		{"llama-server's file name", "model=llama-3.2-1b", ModelInfo{Model: "Llama-3.2-1B-Instruct-Q4_K_M.gguf"}, []string{"Llama-3.2-1B-Instruct-Q4_K_M.gguf"}},
		{"the same name in another case is no alias", "model=Tiny", ModelInfo{Model: "tiny"}, nil},
		{"not renamed", "group=g", ModelInfo{Model: "served"}, nil},
		{"an Ollama named by the user serves each model under its own name", "model=x", ModelInfo{Model: "a:latest", Models: []string{"a:latest", "b:latest"}}, nil},
		{"an API that names nothing", "model=x", ModelInfo{Slots: 2}, nil},
	} {
		t.Run(tc.name, func(t *testing.T) {
			spec, err := ParseWorkerSpec("http://127.0.0.1:1," + tc.spec)
			if err != nil {
				t.Fatal(err)
			}
			c := NewCollector(CollectorConfig{
				CgroupRoot: "testdata/cgroup/no-slice",
				Workers:    []WorkerSpec{spec},
				Probe:      func(context.Context, string) (ModelInfo, error) { return tc.probe, nil },
			})
			got, err := c.Collect(context.Background())
			if err != nil {
				t.Fatal(err)
			}
			if !slices.Equal(got[0].Aliases, tc.want) {
				t.Fatalf("aliases %q, want %q", got[0].Aliases, tc.want)
			}
			if err := (&wsapi.HiveTelemetry{Type: wsapi.TypeHiveTelemetry, HiveID: "h", Workers: got}).Validate("h"); err != nil {
				t.Fatalf("telemetry with aliases does not validate: %v", err)
			}
		})
	}
}

func TestOwnNames(t *testing.T) {
	for _, tc := range []struct {
		configured   string
		api, cmdline ModelInfo
		want         []string
	}{
		{"m", ModelInfo{Model: "api-id"}, ModelInfo{Model: "file"}, []string{"api-id", "file"}},
		{"m", ModelInfo{}, ModelInfo{Model: "file"}, []string{"file"}},
		{"m", ModelInfo{Model: "File"}, ModelInfo{Model: "file"}, []string{"File"}},
		{"m", ModelInfo{Model: " M "}, ModelInfo{}, nil},
		{"m", ModelInfo{Model: "a", Models: []string{"a", "b"}}, ModelInfo{Model: "file"}, nil},
	} {
		if got := ownNames(tc.configured, tc.api, tc.cmdline); !slices.Equal(got, tc.want) {
			t.Errorf("ownNames(%q, %+v, %+v) = %q, want %q", tc.configured, tc.api, tc.cmdline, got, tc.want)
		}
	}
}
