package ui_test

import (
	"context"
	"encoding/json"
	"fmt"
	"net/http"
	"net/http/httptest"
	"os"
	"path/filepath"
	"regexp"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/chromedp/chromedp"
	"github.com/coder/websocket"

	"github.com/rbee/rbee/internal/testutil"
	"github.com/rbee/rbee/node/api"
	"github.com/rbee/rbee/ui"
	"github.com/rbee/rbee/wsapi"
)

// lifecycleNode is a stand-in node whose one hive, gpu-a, is in the middle
// of the model lifecycle: a worker rbee started loading since a minute and
// a half before the test, a catalog entry that failed to start, one that
// cannot, on a real GPU and a simulated one; the queen's queues say which
// model loads where and how long a request waits.
type lifecycleNode struct {
	srv    *httptest.Server
	since  time.Time
	ctx    context.Context
	cancel context.CancelFunc
	wg     sync.WaitGroup
}

func newLifecycleNode(t *testing.T) *lifecycleNode {
	t.Helper()
	n := &lifecycleNode{since: time.Now().Add(-90 * time.Second)}
	n.ctx, n.cancel = context.WithCancel(context.Background())
	mux := http.NewServeMux()
	dash := ui.Handler()
	mux.Handle("GET /{$}", dash)
	mux.Handle("GET /ui/", dash)
	mux.HandleFunc("GET /v1/cluster", func(w http.ResponseWriter, r *http.Request) {
		v := api.ClusterView{Node: "gpu-a", Queen: "gpu-a", Queues: n.queen(time.Now()).Queues,
			Members: []api.MemberView{{Name: "gpu-a", HTTPAddr: r.Host, Roles: []string{"queen", "hive"}, Status: "alive", Queen: true}},
			Hives:   []api.HiveView{}}
		w.Header().Set("Content-Type", "application/json")
		_ = json.NewEncoder(w).Encode(v)
	})
	mux.HandleFunc("GET "+wsapi.FeedPath, n.serveFeed)
	n.srv = httptest.NewServer(mux)
	t.Cleanup(func() {
		n.cancel()
		n.srv.Close()
		n.wg.Wait()
	})
	return n
}

func (n *lifecycleNode) telemetry(now time.Time) *wsapi.HiveTelemetry {
	return &wsapi.HiveTelemetry{Type: wsapi.TypeHiveTelemetry, HiveID: "gpu-a", Timestamp: now.UTC(),
		Workers: []wsapi.ProcessStats{{Group: wsapi.ManagedGroup, Instance: "30001", Model: ptr("llama-8b"), Slots: 4, State: "idle",
			VRAMMB: 9318, TotalVRAMMB: 81559}},
		GPUs: []wsapi.GPUInfo{
			{Index: 0, Name: "NVIDIA H100 80GB HBM3", TotalVRAMMB: 81559, UsedVRAMMB: 20480, UtilPct: 37, ReservedMB: 33792},
			{Index: 1, Name: "sim", TotalVRAMMB: 24576, Simulated: true},
		},
		Managed: []wsapi.ManagedWorker{
			{Instance: "30001", Model: "llama-8b", Engine: "llama.cpp", State: wsapi.ManagedReady, Since: n.since.Add(-time.Hour),
				GPUs: []int{0}, VRAMMB: 9318, StartedBy: "gpu-a", Leases: 1},
			{Instance: "30002", Model: "qwen-32b", Engine: "vllm", State: wsapi.ManagedLoading, Since: n.since,
				GPUs: []int{0}, VRAMMB: 33792, StartedBy: "gpu-a"},
		},
		Catalog: []wsapi.CatalogEntry{
			{Name: "llama-8b", Engine: "llama.cpp", Bytes: 8 << 30, Slots: 4, VRAMMB: 9318, VRAMSource: "learned", LoadMS: 31_000},
			{Name: "mistral-7b", Engine: "vllm", Bytes: 14 << 30, Slots: 4, VRAMMB: 16384, VRAMSource: "safetensors",
				Facts:    &wsapi.ModelFacts{Format: "safetensors", Architecture: "mistral", Parameters: 7_241_732_096, Quantization: "BF16"},
				Failures: 2, FailedAt: now.Add(-time.Minute).UTC(), FailReason: "CUDA out of memory\nengine exited with status 1"},
			{Name: "phi-3", Engine: "llama.cpp", Bytes: 2 << 30, Slots: 2, VRAMMB: 3072, VRAMSource: "gguf",
				Unavailable: "file /models/phi-3.gguf not found"},
		},
	}
}

func (n *lifecycleNode) queen(now time.Time) *wsapi.QueenEvent {
	return &wsapi.QueenEvent{Type: wsapi.TypeQueen, Timestamp: now.UTC(), QueenID: "gpu-a", HivesOnline: 1, HivesAvailable: 1,
		WorkersOnline: 1, WorkersAvailable: 1, HiveIDs: []string{"gpu-a"}, WorkerIDs: []string{"gpu-a/models/30001"},
		Queues: []wsapi.QueueStats{
			{Model: "llama-8b", Leases: 1, Slots: 4, State: "loaded"},
			{Model: "qwen-32b", Waiting: 3, State: "loading", LoadingHive: "gpu-a", LoadingMS: now.Sub(n.since).Milliseconds(), ETAMS: 4200},
			{Model: "mistral-7b", Waiting: 1, State: "unavailable", Reason: "every hive that has it failed to start it"},
		}}
}

// serveFeed sends the hive's report and the queen's summary every 200 ms.
func (n *lifecycleNode) serveFeed(w http.ResponseWriter, r *http.Request) {
	n.wg.Add(1)
	defer n.wg.Done()
	conn, err := websocket.Accept(w, r, nil)
	if err != nil {
		return
	}
	defer conn.CloseNow()
	ctx := conn.CloseRead(n.ctx)
	tick := time.NewTicker(200 * time.Millisecond)
	defer tick.Stop()
	for {
		now := time.Now()
		for _, m := range []any{n.telemetry(now), n.queen(now)} {
			b, err := json.Marshal(m)
			if err != nil {
				panic(err)
			}
			if conn.Write(ctx, websocket.MessageText, b) != nil {
				return
			}
		}
		select {
		case <-ctx.Done():
			return
		case <-tick.C:
		}
	}
}

// lifecycleView is what the page shows of the lifecycle, read from the DOM.
type lifecycleView struct {
	Meta    string   `json:"meta"`
	GPUs    []string `json:"gpus"`
	Managed []string `json:"managed"`
	Catalog []string `json:"catalog"`
	Queues  []string `json:"queues"`
	Events  []string `json:"events"`
}

const readLifecycleJS = `(() => {
  const text = (el) => (el ? el.textContent.replace(/\s+/g, ' ').trim() : '');
  const rows = (sel) => [...document.querySelectorAll(sel)].filter((r) => !r.closest('[hidden]')).map(text);
  const h = document.querySelector('#hives [data-hive="gpu-a"]');
  return {
    meta: h ? text(h.querySelector('[data-f=meta]')) : '',
    gpus: rows('#hives .g'), managed: rows('#hives .mw'), catalog: rows('#hives .ce'),
    queues: rows('#queues .q'), events: [...document.querySelectorAll('#events li')].map(text),
  };
})()`

// TestDashboard_ModelLifecycle: a hive's GPUs (the simulated one marked),
// the workers rbee started (a loading one with its time so far, counting
// up), its catalog (a failure with its reason, an entry that cannot
// start), and each model's state, waiting requests and expected wait.
func TestDashboard_ModelLifecycle(t *testing.T) {
	browser := startBrowser(t)
	n := newLifecycleNode(t)
	tb := openTab(t, browser, n.srv.URL+"/")
	var last lifecycleView
	loading := regexp.MustCompile(`^loading 1m (\d\d)s ?models/30002 ?qwen-32b ?GPU 0 · 33\.0 GiB · 0 leases · by gpu-a$`)
	check := func(v lifecycleView) error {
		for _, w := range []struct {
			what  string
			got   []string
			parts []string // in order, in one row
		}{
			{"gpus", v.GPUs, []string{"GPU 0 · NVIDIA H100 80GB HBM3", "20.0 / 79.6 GiB", "37% util", "33.0 GiB reserved"}},
			{"gpus", v.GPUs, []string{"GPU 1 · sim", "0.0 / 24.0 GiB", "0% util", "simulated"}},
			{"managed", v.Managed, []string{"ready", "models/30001", "llama-8b", "GPU 0 · 9.1 GiB · 1 leases · by gpu-a"}},
			{"catalog", v.Catalog, []string{"llama-8b", "llama.cpp · 8.0 GiB · 4 slots · 9.1 GiB learned · loads in 31.0 s", "available"}},
			{"catalog", v.Catalog, []string{"mistral-7b", "vllm · mistral 7.2B BF16 · 14.0 GiB · 4 slots · 16.0 GiB safetensors", "failed 2×, ", " ago: CUDA out of memory | engine exited with status 1"}},
			{"catalog", v.Catalog, []string{"phi-3", "cannot start: file /models/phi-3.gguf not found"}},
			{"queues", v.Queues, []string{"qwen-32b", "loading", "3 waiting", "0 / 0", "~4.2 s wait · loading on gpu-a for 1m"}},
			{"queues", v.Queues, []string{"mistral-7b", "unavailable", "1 waiting", "every hive that has it failed to start it"}},
			{"queues", v.Queues, []string{"llama-8b", "loaded", "0 waiting", "1 / 4"}},
		} {
			if !testutil.HasLineWith(w.got, w.parts) {
				return fmt.Errorf("%s: no row with all of %q: %q", w.what, w.parts, w.got)
			}
		}
		if len(v.Managed) != 2 || !loading.MatchString(v.Managed[1]) {
			return fmt.Errorf("managed rows %q: want the loading worker second, with its time so far", v.Managed)
		}
		if !strings.Contains(v.Meta, "1 loading") || !strings.Contains(v.Meta, "1 failed to start") {
			return fmt.Errorf("hive header %q does not count the loading worker and the failed model", v.Meta)
		}
		return nil
	}
	read := func() (lifecycleView, error) {
		return chromedp.Run(tb.ctx, chromedp.Evaluate[lifecycleView](readLifecycleJS))
	}
	deadline := time.Now().Add(20 * time.Second)
	for {
		v, err := read()
		if err == nil {
			last = v
			if err = check(v); err == nil {
				break
			}
		}
		if time.Now().After(deadline) {
			t.Fatalf("the dashboard does not show the model lifecycle: %v\npage: %+v", err, last)
		}
		time.Sleep(100 * time.Millisecond)
	}
	// The loading time counts up on the page's clock, between reports too.
	first := loading.FindStringSubmatch(last.Managed[1])[1]
	time.Sleep(1200 * time.Millisecond)
	v, err := read()
	if err != nil {
		t.Fatal(err)
	}
	if m := loading.FindStringSubmatch(safeIndex(v.Managed, 1)); m == nil || m[1] == first {
		t.Errorf("the loading time did not move: %q then %q", last.Managed, v.Managed)
	}
	screenshot(t, tb, "dashboard-lifecycle-1280.png", 1280, 800, false)
}

func safeIndex(xs []string, i int) string {
	if i < len(xs) {
		return xs[i]
	}
	return ""
}

// TestPage_LifecycleTemplatesExist checks without a browser that every
// template view.js clones is in index.html.
func TestPage_LifecycleTemplatesExist(t *testing.T) {
	view, err := os.ReadFile(filepath.Join("static", "view.js"))
	if err != nil {
		t.Fatal(err)
	}
	index, err := os.ReadFile(filepath.Join("static", "index.html"))
	if err != nil {
		t.Fatal(err)
	}
	ids := regexp.MustCompile(`byId\('(tpl-[a-z]+)'\)`).FindAllStringSubmatch(string(view), -1)
	if len(ids) < 7 {
		t.Fatalf("view.js clones %d templates, want the hive, worker, member, queue, gpu, managed and catalog ones", len(ids))
	}
	for _, m := range ids {
		if !strings.Contains(string(index), `<template id="`+m[1]+`">`) {
			t.Errorf("view.js clones #%s, which index.html lacks", m[1])
		}
	}
}
