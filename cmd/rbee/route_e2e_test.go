package main

import (
	"context"
	"fmt"
	"io"
	"net/http"
	"net/http/httptest"
	"slices"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/rbee/rbee/internal/testutil"
)

// slowWorker is an OpenAI-compatible stand-in that answers after delay,
// streaming or not. It runs in the test process; the nodes are real
// processes that reach it over loopback.
func slowWorker(tb testing.TB, delay time.Duration) *httptest.Server {
	srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if r.Method == http.MethodGet {
			// The hive's health and model probes: answered at once,
			// as a busy inference server does.
			if r.URL.Path == "/v1/models" {
				w.Header().Set("Content-Type", "application/json")
				fmt.Fprint(w, `{"object":"list","data":[]}`)
			}
			return
		}
		body, _ := io.ReadAll(r.Body)
		t := time.NewTimer(delay)
		defer t.Stop()
		select {
		case <-t.C:
		case <-r.Context().Done():
			return
		}
		if strings.Contains(string(body), `"stream":true`) {
			w.Header().Set("Content-Type", "text/event-stream")
			for i := range 4 {
				fmt.Fprintf(w, "data: {\"choices\":[{\"delta\":{\"content\":\"t%d\"}}]}\n\n", i)
				http.NewResponseController(w).Flush()
			}
			fmt.Fprint(w, "data: [DONE]\n\n")
			return
		}
		w.Header().Set("Content-Type", "application/json")
		fmt.Fprint(w, `{"object":"chat.completion","choices":[{"message":{"role":"assistant","content":"ok"}}]}`)
	}))
	tb.Cleanup(srv.Close)
	return srv
}

// loadResult is what clients saw during a failover.
type loadResult struct {
	total, failed int
	// maxLatency is the slowest request; baseline the median before the
	// kill, so maxLatency-baseline is the longest extra wait.
	maxLatency, baseline time.Duration
	errs                 []string
}

// modelServed is a condition for testutil.Eventually: p's /v1/models lists
// one model.
func modelServed(c *cluster, p *proc) func() error {
	return func() error {
		var v struct{ Data []struct{ ID string } }
		if err := c.getJSON(p.httpAddr, "/v1/models", &v); err != nil {
			return err
		}
		if len(v.Data) != 1 {
			return fmt.Errorf("/v1/models of %s: %+v", p.name, v)
		}
		return nil
	}
}

// failoverUnderLoad starts a queen-only node q1 (preferred queen), a
// queen-eligible hive q2 serving two workers, and an entry-only node e; it
// sends requests through e from `clients` goroutines, SIGKILLs q1 after a
// second of load and keeps the load on for two seconds after q2 took over.
func failoverUnderLoad(tb testing.TB, clients int) loadResult {
	w1, w2 := slowWorker(tb, 20*time.Millisecond), slowWorker(tb, 20*time.Millisecond)
	c := newCluster(tb)
	q1 := c.start(nodeSpec{name: "q1", extra: []string{"--roles", "queen", "--queen-priority", "1"}})[0]
	rest := c.start(
		nodeSpec{name: "q2", join: q1.gossipAddr, extra: []string{"--roles", "queen,hive",
			"--worker", w1.URL + ",model=m,slots=8,instance=w1", "--worker", w2.URL + ",model=m,slots=8,instance=w2"}},
		nodeSpec{name: "e", join: q1.gossipAddr, extra: []string{"--roles", "none"}},
	)
	q2, e := rest[0], rest[1]
	ps := []*proc{q1, q2, e}
	if q := c.waitAgree(ps, 20*time.Second); q != "q1" {
		tb.Fatalf("queen %s, want q1", q)
	}
	testutil.Eventually(tb, 20*time.Second, "model m served", modelServed(c, e))

	var (
		mu        sync.Mutex
		res       loadResult
		latencies []time.Duration
		killedAt  atomic.Int64
	)
	hc := &http.Client{Timeout: 30 * time.Second, Transport: &http.Transport{MaxIdleConnsPerHost: clients}}
	defer hc.CloseIdleConnections()
	ctx, stop := context.WithCancel(context.Background())
	var wg sync.WaitGroup
	for i := range clients {
		wg.Go(func() {
			for n := 0; ctx.Err() == nil; n++ {
				body := fmt.Sprintf(`{"model":"m","messages":[{"role":"user","content":"hi"}],"stream":%v}`, (i+n)%2 == 0)
				start := time.Now()
				err := func() error {
					resp, err := hc.Post("http://"+e.httpAddr+"/v1/chat/completions", "application/json", strings.NewReader(body))
					if err != nil {
						return err
					}
					defer resp.Body.Close()
					b, err := io.ReadAll(resp.Body)
					if err != nil {
						return err
					}
					if resp.StatusCode != 200 || !(strings.Contains(string(b), "[DONE]") || strings.Contains(string(b), `"ok"`)) {
						return fmt.Errorf("status %d: %s", resp.StatusCode, b)
					}
					return nil
				}()
				d := time.Since(start)
				mu.Lock()
				res.total++
				if err != nil {
					res.failed++
					res.errs = append(res.errs, err.Error())
				}
				res.maxLatency = max(res.maxLatency, d)
				if killedAt.Load() == 0 {
					latencies = append(latencies, d)
				}
				mu.Unlock()
			}
		})
	}
	wait := func(d time.Duration) {
		t := time.NewTimer(d)
		defer t.Stop()
		<-t.C
	}
	// Load runs for fixed spans around the kill: what is measured is how
	// clients fare across it, so these waits are the experiment, not
	// waits for a condition.
	wait(time.Second)
	killedAt.Store(time.Now().UnixNano())
	c.kill(q1)
	c.waitNewQueen([]*proc{q2, e}, "q1", 20*time.Second)
	wait(2 * time.Second)
	stop()
	wg.Wait()
	slices.Sort(latencies)
	if len(latencies) > 0 {
		res.baseline = latencies[len(latencies)/2]
	}
	return res
}

// TestE2E_FailoverUnderLoad: a steady stream of requests enters through a
// non-queen node while the queen is SIGKILLed; every request succeeds.
func TestE2E_FailoverUnderLoad(t *testing.T) {
	res := failoverUnderLoad(t, 8)
	t.Logf("%d requests, %d failed, median before the kill %v, slowest %v", res.total, res.failed, res.baseline, res.maxLatency)
	if res.failed > 0 {
		t.Fatalf("%d of %d requests failed across the failover; first errors: %q", res.failed, res.total, res.errs[:min(len(res.errs), 5)])
	}
	if res.total < 50 {
		t.Fatalf("only %d requests went through", res.total)
	}
}
