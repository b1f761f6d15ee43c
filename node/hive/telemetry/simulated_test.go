package telemetry

import (
	"bytes"
	"context"
	"fmt"
	"log/slog"
	"net/http"
	"net/http/httptest"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/rbee/rbee/internal/sim"
	"github.com/rbee/rbee/internal/testutil"
	"github.com/rbee/rbee/wsapi"
)

// syncBuffer is a log sink the collector's read goroutines may share.
type syncBuffer struct {
	mu sync.Mutex
	b  bytes.Buffer
}

func (s *syncBuffer) Write(p []byte) (int, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.b.Write(p)
}

func (s *syncBuffer) String() string {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.b.String()
}

func TestAPIProber_SimulatorIsALlamaServerMarkedSimulated(t *testing.T) {
	s, err := sim.New(sim.Config{Model: "qwen2.5-0.5b", Slots: 3})
	if err != nil {
		t.Fatal(err)
	}
	url := startWorker(t, s.Handler())
	info, err := APIProber{}.Probe(context.Background(), url)
	if err != nil {
		t.Fatal(err)
	}
	if info.Kind != KindLlamaServer || !info.Simulated || info.Slots != 3 || len(info.Models) != 1 || info.Models[0] != "qwen2.5-0.5b" {
		t.Errorf("probe = %+v, want llama.cpp, simulated, 3 slots, qwen2.5-0.5b", info)
	}
	plain := startWorker(t, &fakeWorker{answers: map[string]string{"/props": `{"total_slots":2,"model_path":"/m/a.gguf"}`}})
	if info, err := (APIProber{}).Probe(context.Background(), plain); err != nil || info.Simulated {
		t.Errorf("a llama-server without rbee_simulated: %+v, %v", info, err)
	}
}

func TestAPIProber_SimGPU(t *testing.T) {
	for _, tc := range []struct {
		name, body string
		want       WorkerGPU
		wantErr    bool
	}{
		{"figures", `{"gpu_util_pct":45.5,"vram_mb":5120,"total_vram_mb":24576}`, WorkerGPU{UtilPct: 45.5, VRAMMB: 5120, TotalVRAMMB: 24576}, false},
		{"missing field", `{"gpu_util_pct":45.5,"vram_mb":5120}`, WorkerGPU{}, true},
		{"utilization out of range", `{"gpu_util_pct":450,"vram_mb":1,"total_vram_mb":2}`, WorkerGPU{}, true},
		{"more used than there is", `{"gpu_util_pct":1,"vram_mb":3,"total_vram_mb":2}`, WorkerGPU{}, true},
		{"not JSON", `<html>`, WorkerGPU{}, true},
	} {
		t.Run(tc.name, func(t *testing.T) {
			url := startWorker(t, &fakeWorker{answers: map[string]string{"/rbee/sim/gpu": tc.body}})
			got, err := APIProber{}.SimGPU(context.Background(), url+"/v1")
			if (err != nil) != tc.wantErr || got != tc.want {
				t.Errorf("SimGPU = %+v, %v; want %+v, error %v", got, err, tc.want, tc.wantErr)
			}
		})
	}
}

// TestCollector_SimulatedWorkerReportsItsMadeUpGPU runs the whole path the
// demo takes: a --worker with a configured model, served by the simulator;
// the collector learns slots and the simulated mark from /props and reads
// /rbee/sim/gpu every tick.
func TestCollector_SimulatedWorkerReportsItsMadeUpGPU(t *testing.T) {
	s, err := sim.New(sim.Config{Model: "llama-3.2-1b", Slots: 3, TTFT: time.Hour})
	if err != nil {
		t.Fatal(err)
	}
	srv := httptest.NewServer(s.Handler())
	defer srv.Close()
	spec, err := ParseWorkerSpec(srv.URL + ",model=alias,group=sim")
	if err != nil {
		t.Fatal(err)
	}
	var logs syncBuffer
	c := NewCollector(CollectorConfig{
		CgroupRoot: "testdata/cgroup/no-slice",
		Workers:    []WorkerSpec{spec},
		Probe:      APIProber{}.ProbeModel,
		Logger:     slog.New(slog.NewTextHandler(&logs, nil)),
	})
	collect := func() wsapi.ProcessStats {
		t.Helper()
		got, err := c.Collect(context.Background())
		if err != nil {
			t.Fatal(err)
		}
		if len(got) != 1 {
			t.Fatalf("%d workers, want 1", len(got))
		}
		return got[0]
	}

	w := collect()
	if !w.Simulated || w.Slots != 3 || w.Model == nil || *w.Model != "alias" {
		t.Fatalf("worker %+v, want simulated, 3 slots from /props, the configured name", w)
	}
	if w.GPUUtilPct != 0 || w.VRAMMB != sim.DefaultModelVRAMMB || w.TotalVRAMMB != sim.DefaultTotalVRAMMB {
		t.Errorf("idle gpu = %v%% %d/%d MiB, want 0%% and the weights", w.GPUUtilPct, w.VRAMMB, w.TotalVRAMMB)
	}

	// Two requests generating: the next tick shows them.
	ctx, cancel := context.WithCancel(context.Background())
	var wg sync.WaitGroup
	for range 2 {
		wg.Go(func() {
			req, _ := http.NewRequestWithContext(ctx, http.MethodPost, srv.URL+"/v1/chat/completions", strings.NewReader(`{"messages":[{"role":"user","content":"hi"}]}`))
			if resp, err := srv.Client().Do(req); err == nil {
				resp.Body.Close()
			}
		})
	}
	testutil.Every(time.Millisecond).Eventually(t, 5*time.Second, "two requests generating", func() error {
		if st := s.Stats(); st.Active != 2 {
			return fmt.Errorf("simulator stats %+v", st)
		}
		return nil
	})
	w = collect()
	cancel()
	wg.Wait()
	if w.GPUUtilPct < 57 || w.GPUUtilPct > 63 || w.VRAMMB != sim.DefaultModelVRAMMB+2*sim.DefaultSlotVRAMMB {
		t.Errorf("busy gpu = %v%% %d MiB, want about 60%% and two KV caches", w.GPUUtilPct, w.VRAMMB)
	}

	// The simulator gone: zeros, still simulated, logged once.
	srv.Close()
	for range 2 {
		w = collect()
		if !w.Simulated || w.GPUUtilPct != 0 || w.VRAMMB != 0 || w.TotalVRAMMB != 0 {
			t.Errorf("unreachable simulator: %+v, want simulated with zeros", w)
		}
	}
	if n := strings.Count(logs.String(), "GPU figures unreadable"); n != 1 {
		t.Errorf("logged the failure %d times, want once:\n%s", n, logs.String())
	}
}
