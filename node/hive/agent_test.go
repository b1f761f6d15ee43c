package hive

import (
	"bytes"
	"context"
	"errors"
	"flag"
	"fmt"
	"log/slog"
	"net"
	"net/http"
	"os"
	"strings"
	"sync"
	"testing"
	"time"

	"go.uber.org/goleak"

	"github.com/rbee/rbee/internal/testutil"
	"github.com/rbee/rbee/node/hive/models"
	"github.com/rbee/rbee/wsapi"
)

// The engines the lifecycle test starts are this test binary, run as a fake
// engine that serves GET /health on its port.
func TestMain(m *testing.M) {
	if len(os.Args) > 1 && os.Args[1] == "fake-engine" {
		os.Exit(fakeEngine(os.Args[2:]))
	}
	goleak.VerifyTestMain(m)
}

func fakeEngine(args []string) int {
	fs := flag.NewFlagSet("fake-engine", flag.ExitOnError)
	port := fs.String("port", "", "")
	_ = fs.Parse(args)
	l, err := net.Listen("tcp", "127.0.0.1:"+*port)
	if err != nil {
		fmt.Println("listen:", err)
		return 1
	}
	_ = http.Serve(l, http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) { fmt.Fprint(w, `{"status":"ok"}`) }))
	return 0
}

// fakeCollector answers Collect from a script and records registrations.
type fakeCollector struct {
	mu         sync.Mutex
	workers    []wsapi.ProcessStats
	err        error
	calls      int
	endpoints  map[string]string
	registered []string
}

func (c *fakeCollector) Collect(context.Context) ([]wsapi.ProcessStats, error) {
	c.mu.Lock()
	defer c.mu.Unlock()
	c.calls++
	return append([]wsapi.ProcessStats(nil), c.workers...), c.err
}

func (c *fakeCollector) Endpoint(group, instance string) string {
	return c.endpoints[wsapi.WorkerID(group, instance)]
}

func (c *fakeCollector) RegisterWorker(group, instance string, pid int32, model string, slots int) error {
	c.mu.Lock()
	defer c.mu.Unlock()
	c.registered = append(c.registered, fmt.Sprintf("%s/%s pid=%d model=%s slots=%d", group, instance, pid, model, slots))
	return nil
}

func (c *fakeCollector) set(ws []wsapi.ProcessStats, err error) {
	c.mu.Lock()
	c.workers, c.err = ws, err
	c.mu.Unlock()
}

// bareCollector takes no registrations and knows no endpoints.
type bareCollector struct{}

func (bareCollector) Collect(context.Context) ([]wsapi.ProcessStats, error) { return nil, nil }

// fakeLeases is a lease table serving one request on every worker it is
// shown, marking each worker's health as it reports.
type fakeLeases struct {
	mu      sync.Mutex
	reports int
	drained []string
}

func (l *fakeLeases) ReportLeases(workers []wsapi.ProcessStats, now time.Time) []wsapi.LeaseInfo {
	l.mu.Lock()
	l.reports++
	l.mu.Unlock()
	var out []wsapi.LeaseInfo
	for i := range workers {
		workers[i].Health = wsapi.HealthFailing // the table marks workers in place
		out = append(out, wsapi.LeaseInfo{LeaseID: "l-" + workers[i].Instance, Worker: workers[i].ID(), Model: *workers[i].Model, Entry: "entry", RequestID: "r-" + workers[i].Instance, Since: now})
	}
	return out
}

func (l *fakeLeases) WorkerLeases(string) (int, time.Time) { return 0, time.Time{} }

func (l *fakeLeases) Drain(worker string) {
	l.mu.Lock()
	l.drained = append(l.drained, worker)
	l.mu.Unlock()
}

func worker(instance, model string) wsapi.ProcessStats {
	return wsapi.ProcessStats{Group: "llm", Instance: instance, Model: &model}
}

func newAgent(t *testing.T, cfg Config) *Agent {
	t.Helper()
	if cfg.Name == "" {
		cfg.Name = "hive-a"
	}
	if cfg.CollectTimeout == 0 {
		cfg.CollectTimeout = time.Second
	}
	a, err := New(cfg)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(a.Close)
	return a
}

func TestAgent_ReportCarriesWorkersAndTheLeasesServed(t *testing.T) {
	coll := &fakeCollector{}
	coll.set([]wsapi.ProcessStats{worker("8080", "llama"), worker("8081", "qwen")}, nil)
	leases := &fakeLeases{}
	a := newAgent(t, Config{Collector: coll, Leases: leases})

	before := time.Now()
	r := a.Report(context.Background(), true)
	if r.Type != wsapi.TypeHiveTelemetry || r.HiveID != "hive-a" || r.Timestamp.Before(before.UTC().Truncate(time.Second)) {
		t.Fatalf("report head: type %q hive %q at %v", r.Type, r.HiveID, r.Timestamp)
	}
	if len(r.Workers) != 2 || r.Workers[0].Health != wsapi.HealthFailing || r.Workers[1].Health != wsapi.HealthFailing {
		t.Fatalf("workers %+v: want both, marked by the lease table", r.Workers)
	}
	if len(r.Leases) != 2 || r.Leases[0].Worker != "llm/8080" || r.Leases[1].Worker != "llm/8081" {
		t.Fatalf("leases %+v, want one per worker", r.Leases)
	}
	if r.Catalog != nil || r.GPUs != nil || r.Managed != nil {
		t.Errorf("a hive without a catalog reports catalog %v, gpus %v, managed %v", r.Catalog, r.GPUs, r.Managed)
	}
	if err := r.Validate("hive-a"); err != nil {
		t.Errorf("the report does not pass the queen's validation: %v", err)
	}
}

func TestAgent_ReportBetweenTicksReusesTheLastCollection(t *testing.T) {
	coll := &fakeCollector{}
	coll.set([]wsapi.ProcessStats{worker("8080", "llama")}, nil)
	a := newAgent(t, Config{Collector: coll, Leases: &fakeLeases{}})

	// Nothing collected yet: even a report between ticks collects.
	if r := a.Report(context.Background(), false); len(r.Workers) != 1 || coll.calls != 1 {
		t.Fatalf("first report: %d workers after %d collections", len(r.Workers), coll.calls)
	}
	coll.set([]wsapi.ProcessStats{worker("8080", "llama"), worker("8081", "qwen")}, nil)
	r := a.Report(context.Background(), false)
	if coll.calls != 1 || len(r.Workers) != 1 {
		t.Fatalf("a report between ticks collected (%d collections, %d workers); want the last collection again", coll.calls, len(r.Workers))
	}
	// The lease table marks the copy it is given, never the kept one.
	r.Workers[0].Instance = "changed by a reader"
	if r := a.Report(context.Background(), false); r.Workers[0].Instance != "8080" {
		t.Fatalf("the kept collection changed with a report: instance %q", r.Workers[0].Instance)
	}
	if r := a.Report(context.Background(), true); coll.calls != 2 || len(r.Workers) != 2 {
		t.Fatalf("a tick's report: %d collections, %d workers; want a new collection", coll.calls, len(r.Workers))
	}
}

func TestAgent_CollectorErrorsAreLoggedWhenTheyChange(t *testing.T) {
	var logs bytes.Buffer
	coll := &fakeCollector{}
	a := newAgent(t, Config{Collector: coll, Logger: slog.New(slog.NewTextHandler(&logs, nil))})

	boom := errors.New("nvml: driver gone")
	coll.set([]wsapi.ProcessStats{worker("8080", "llama")}, boom)
	for range 3 {
		if r := a.Report(context.Background(), true); len(r.Workers) != 1 {
			t.Fatalf("a partial collection reports %d workers, want the 1 it found", len(r.Workers))
		}
	}
	coll.set(nil, nil)
	for range 2 {
		if r := a.Report(context.Background(), true); r.Workers == nil || len(r.Workers) != 0 {
			t.Fatalf("no workers: reported %#v, want an empty list (the feed's readers expect one)", r.Workers)
		}
	}
	got := logs.String()
	if n := strings.Count(got, "driver gone"); n != 1 {
		t.Errorf("the same error logged %d times, want once:\n%s", n, got)
	}
	if n := strings.Count(got, "collect telemetry recovered"); n != 1 {
		t.Errorf("recovery logged %d times, want once:\n%s", n, got)
	}
}

func TestAgent_EndpointsAndRegistrations(t *testing.T) {
	coll := &fakeCollector{endpoints: map[string]string{"llm/8080": "http://127.0.0.1:8080"}}
	a := newAgent(t, Config{Collector: coll})
	for _, tc := range []struct{ group, instance, want string }{
		{"llm", "8080", "http://127.0.0.1:8080"},
		{"llm", "9999", ""},
		// No catalog: a managed worker is the collector's to know too.
		{wsapi.ManagedGroup, "8080", ""},
	} {
		if got := a.Endpoint(tc.group, tc.instance); got != tc.want {
			t.Errorf("Endpoint(%s, %s) = %q, want %q", tc.group, tc.instance, got, tc.want)
		}
	}
	if !a.TakesRegistrations() {
		t.Fatal("a collector that registers workers is not taken for one")
	}
	if err := a.RegisterWorker("llm", "8082", 42, "llama", 4); err != nil {
		t.Fatal(err)
	}
	if len(coll.registered) != 1 || coll.registered[0] != "llm/8082 pid=42 model=llama slots=4" {
		t.Fatalf("registered %q", coll.registered)
	}

	bare := newAgent(t, Config{Collector: bareCollector{}})
	if bare.TakesRegistrations() || !errors.Is(bare.RegisterWorker("llm", "1", 1, "", 0), ErrCannotRegister) {
		t.Error("a collector without registrations takes them")
	}
	if ep := bare.Endpoint("llm", "8080"); ep != "" {
		t.Errorf("a collector that knows no endpoints gave %q", ep)
	}
}

func TestAgent_StartModelRefusals(t *testing.T) {
	a := newAgent(t, Config{Collector: bareCollector{}})
	if err := a.StartModel(&wsapi.ModelStart{Type: wsapi.TypeModelStart, StartID: "s1", Model: "llama"}, "q"); err == nil ||
		!strings.Contains(err.Error(), "no catalog") {
		t.Fatalf("a hive without a catalog started a model: %v", err)
	}
	exe, err := os.Executable()
	if err != nil {
		t.Fatal(err)
	}
	withCatalog := newAgent(t, Config{Collector: bareCollector{}, Models: &models.Config{
		Entries: []models.Entry{{Name: "llama", Path: exe, Engine: "sim"}},
		Engines: models.BuiltinEngines(), LogDir: t.TempDir(),
	}})
	if err := withCatalog.StartModel(&wsapi.ModelStart{Type: wsapi.TypeModelStart, Model: "llama"}, "q"); err == nil ||
		!strings.Contains(err.Error(), "bad model_start") {
		t.Fatalf("a model_start without a start id was carried out: %v", err)
	}
	fenced := newAgent(t, Config{Collector: bareCollector{}, Fence: func() uint64 { return 7 }, Models: &models.Config{
		Entries: []models.Entry{{Name: "llama", Path: exe, Engine: "sim"}},
		Engines: models.BuiltinEngines(), LogDir: t.TempDir(),
	}})
	if err := fenced.StartModel(&wsapi.ModelStart{Type: wsapi.TypeModelStart, StartID: "s1", Model: "llama", Term: 6}, "old"); err == nil ||
		!strings.Contains(err.Error(), "term 7 replaced it") {
		t.Fatalf("a model_start from a replaced queen was carried out: %v", err)
	}
}

// TestAgent_ModelLifecycleReportsAtOnce: a model the queen asks for starts
// in the hive's catalog; when it is ready the agent asks for a report at
// once, the report lists it ready, and the hive end of a request finds it
// on its port before any collection lists it.
func TestAgent_ModelLifecycleReportsAtOnce(t *testing.T) {
	exe, err := os.Executable()
	if err != nil {
		t.Fatal(err)
	}
	engines := models.BuiltinEngines()
	engines["fake"] = &models.Engine{Name: "fake", Words: []string{exe, "fake-engine", "--port", "{port}"}}
	models.ResolveEngines(engines, "")
	coll := &fakeCollector{}
	a := newAgent(t, Config{Collector: coll, Leases: &fakeLeases{}, Models: &models.Config{
		Entries:   []models.Entry{{Name: "llama", Path: exe, Engine: "fake", Slots: 2, Ctx: 1024, VRAMMB: 1000}},
		Engines:   engines,
		LogDir:    t.TempDir(),
		StopGrace: 2 * time.Second,
	}})
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- a.Run(ctx) }()
	defer func() {
		cancel()
		<-done
	}()

	r := a.Report(context.Background(), true)
	if len(r.Catalog) != 1 || r.Catalog[0].Name != "llama" {
		t.Fatalf("catalog %+v, want llama", r.Catalog)
	}
	if err := a.StartModel(&wsapi.ModelStart{Type: wsapi.TypeModelStart, StartID: "s1", Model: "llama"}, "q"); err != nil {
		t.Fatal(err)
	}
	var ready wsapi.ManagedWorker
	testutil.Eventually(t, 20*time.Second, "the started worker reported ready", func() error {
		select {
		case <-a.ReportNow():
		case <-time.After(100 * time.Millisecond):
		}
		for _, m := range a.Report(context.Background(), false).Managed {
			if m.State == wsapi.ManagedReady {
				ready = m
				return nil
			}
		}
		return errors.New("not ready yet")
	})
	if ep := a.Endpoint(wsapi.ManagedGroup, ready.Instance); ep != "http://127.0.0.1:"+ready.Instance {
		t.Errorf("endpoint of the ready worker: %q", ep)
	}
	coll.mu.Lock()
	reg := coll.registered
	coll.mu.Unlock()
	if len(reg) != 1 || !strings.HasPrefix(reg[0], wsapi.ManagedGroup+"/"+ready.Instance+" ") {
		t.Errorf("the ready worker was registered with the collector as %q", reg)
	}
}
