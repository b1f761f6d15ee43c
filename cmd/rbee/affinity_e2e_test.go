package main

import (
	"bufio"
	"encoding/json"
	"fmt"
	"net/http"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/rbee/rbee/internal/testutil"
)

// The multi-turn workload: sessions chat in parallel, each turn sending the
// whole conversation so far, against simulated workers with a prefix cache
// (time to first token grows with the prompt tokens the worker has not seen).
const (
	mtSessions = 8
	mtTurns    = 6
	mtWorkers  = 4
)

type multiTurnResult struct {
	sameWorker float64         // turns on their session's most used worker
	ttft       []time.Duration // every turn's time to first token
	failed     int
}

// multiTurn runs the workload through one node whose --affinity-wait is
// wait ("-1s": no affinity, the least-loaded worker serves every turn).
func multiTurn(tb testing.TB, wait string) multiTurnResult {
	tb.Helper()
	c := newCluster(tb)
	defer c.close()
	dir := tb.TempDir()
	extra := []string{"--affinity-wait", wait}
	for i := range mtWorkers {
		ports, err := freePorts(1)
		if err != nil {
			tb.Fatal(err)
		}
		addr := "127.0.0.1:" + strconv.Itoa(ports[0])
		startProcess(tb, dir, fmt.Sprintf("sim%d", i), rbeeBin, "worker", "simulate", "--model", "m",
			"--port", strconv.Itoa(ports[0]), "--slots", "1", "--tokens-per-second", "400", "--max-tokens", "20",
			"--prefix-cache", "--prefill-ms-per-token", "0.5")
		waitHTTP(tb, "http://"+addr+"/health")
		extra = append(extra, "--worker", "http://"+addr+",model=m,slots=1")
	}
	p := c.start(nodeSpec{name: "h", extra: extra})[0]
	c.waitSlots(tb, p, mtWorkers)

	var mu sync.Mutex
	var res multiTurnResult
	var wg sync.WaitGroup
	for s := range mtSessions {
		wg.Go(func() {
			// A long system prompt: recomputing it costs ~250 ms.
			msgs := []map[string]string{{"role": "system", "content": fmt.Sprintf("session %d. %s", s, strings.Repeat("Answer briefly and well. ", 80))}}
			used := map[string]int{}
			for turn := range mtTurns {
				msgs = append(msgs, map[string]string{"role": "user", "content": fmt.Sprintf("question %d of session %d", turn, s)})
				worker, answer, ttft, err := c.streamChat(p.httpAddr, msgs)
				mu.Lock()
				if err != nil {
					res.failed++
					mu.Unlock()
					tb.Errorf("session %d turn %d: %v", s, turn, err)
					return
				}
				res.ttft = append(res.ttft, ttft)
				mu.Unlock()
				used[worker]++
				msgs = append(msgs, map[string]string{"role": "assistant", "content": answer})
			}
			most := 0
			for _, n := range used {
				most = max(most, n)
			}
			mu.Lock()
			res.sameWorker += float64(most) / float64(mtTurns*mtSessions)
			mu.Unlock()
		})
	}
	wg.Wait()
	return res
}

// waitSlots waits until the queen counts n slots for model m.
func (c *cluster) waitSlots(tb testing.TB, p *proc, n int) {
	tb.Helper()
	testutil.Eventually(tb, 20*time.Second, "the workers reported", func() error {
		var ms struct {
			Data []struct {
				ID    string
				Slots int
			}
		}
		if err := c.getJSON(p.httpAddr, "/v1/models", &ms); err != nil {
			return err
		}
		for _, m := range ms.Data {
			if m.ID == "m" && m.Slots >= n {
				return nil
			}
		}
		return fmt.Errorf("models %+v", ms.Data)
	})
}

// streamChat sends one streaming chat turn and returns the simulator that
// answered (its id prefix), the answer's text and the time to first token.
func (c *cluster) streamChat(addr string, msgs []map[string]string) (worker, answer string, ttft time.Duration, err error) {
	body, _ := json.Marshal(map[string]any{"model": "m", "messages": msgs, "stream": true})
	req, err := http.NewRequest(http.MethodPost, "http://"+addr+"/v1/chat/completions", strings.NewReader(string(body)))
	if err != nil {
		return "", "", 0, err
	}
	req.Header.Set("Authorization", "Bearer "+c.key.HTTPToken())
	start := time.Now()
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		return "", "", 0, err
	}
	defer resp.Body.Close()
	if resp.StatusCode != http.StatusOK {
		return "", "", 0, fmt.Errorf("status %d", resp.StatusCode)
	}
	var text strings.Builder
	sc := bufio.NewScanner(resp.Body)
	for sc.Scan() {
		line, ok := strings.CutPrefix(sc.Text(), "data: ")
		if !ok || line == "[DONE]" {
			continue
		}
		var ch struct {
			ID      string `json:"id"`
			Choices []struct {
				Delta struct{ Content string } `json:"delta"`
			} `json:"choices"`
		}
		if json.Unmarshal([]byte(line), &ch) != nil {
			continue
		}
		for _, c := range ch.Choices {
			if c.Delta.Content != "" && ttft == 0 {
				ttft = time.Since(start)
			}
			text.WriteString(c.Delta.Content)
		}
		// chatcmpl-<the simulator's own prefix>-<n>
		if i := strings.LastIndexByte(ch.ID, '-'); i > 0 && worker == "" {
			worker = ch.ID[:i]
		}
	}
	return worker, text.String(), ttft, sc.Err()
}

// TestAffinity_MultiTurn: each session's turns land on one worker at least
// 90% of the time (the queue bound, one round of slots per worker and at
// most --affinity-wait extra, is the scheduler's, tested there).
func TestAffinity_MultiTurn(t *testing.T) {
	r := multiTurn(t, "1s")
	if r.failed > 0 {
		t.Fatalf("%d turns failed", r.failed)
	}
	t.Logf("turns on their session's worker: %.0f%%; ttft p50 %v", 100*r.sameWorker, median(r.ttft))
	if r.sameWorker < 0.9 {
		t.Fatalf("only %.0f%% of turns on their session's worker, want at least 90%%", 100*r.sameWorker)
	}
}

// BenchmarkAffinity: p50 time to first token on the multi-turn workload with
// affinity, and with the least-loaded choice rbee made before it, in one run.
func BenchmarkAffinity(b *testing.B) {
	for b.Loop() {
		with := multiTurn(b, "1s")
		without := multiTurn(b, "-1s")
		b.ReportMetric(ms(median(with.ttft)), "affinity_ttft_p50_ms")
		b.ReportMetric(ms(median(without.ttft)), "least_loaded_ttft_p50_ms")
		b.ReportMetric(100*with.sameWorker, "affinity_same_worker_pct")
		b.ReportMetric(100*without.sameWorker, "least_loaded_same_worker_pct")
		b.Logf("multi-turn (%d sessions x %d turns, %d workers, prefix cache): ttft p50 %.0f ms with affinity (%.0f%% same worker) vs %.0f ms least-loaded (%.0f%%)",
			mtSessions, mtTurns, mtWorkers, ms(median(with.ttft)), 100*with.sameWorker, ms(median(without.ttft)), 100*without.sameWorker)
	}
}

func median(ds []time.Duration) time.Duration {
	m, _ := medianMax(ds)
	return m
}
