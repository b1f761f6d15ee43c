package main

import (
	"fmt"
	"net/http"
	"path/filepath"
	"strconv"
	"syscall"
	"testing"
	"time"

	"github.com/rbee/rbee/internal/engines"
	"github.com/rbee/rbee/internal/testutil"
)

// ollamaTrials is how many cold starts each way one benchmark run makes.
const ollamaTrials = 8

// BenchmarkOllamaColdStart compares a cold request through the cluster (one
// node, queen and hive, whose catalog serves tiny.gguf with the built-in
// ollama engine; each trial a model never loaded) with the same by hand:
// `ollama serve` with the same environment, polled every 5 ms until it
// answers, then the blob, create, preload and chat requests. Trials
// alternate between the two ways; the figures are medians:
//
//   - rbee_p50_ms, hand_p50_ms: from the request (or the process start) to
//     the chat answer;
//   - added_p50_ms: rbee − hand of one pair of trials, what rbee adds
//     beyond Ollama's own start and load (target: under 100 ms).
//
// handEnv is the environment the hive gives Ollama for the catalog entries
// below (slots=2, ctx=1024 per slot).
var handEnv = []string{"OLLAMA_NUM_PARALLEL=2", "OLLAMA_CONTEXT_LENGTH=1024", "OLLAMA_KEEP_ALIVE=-1",
	"OLLAMA_MAX_LOADED_MODELS=1", "OLLAMA_NOPRUNE=1"}

func BenchmarkOllamaColdStart(b *testing.B) {
	bin, tiny := engines.Find(b)
	var rbee, hand, added []time.Duration
	for b.Loop() {
		c := newCluster(b)
		extra := []string{"--data-dir", filepath.Join(c.dir, "h-data"), "--idle-unload", "10m", "--engine", "ollama=" + bin}
		for i := range ollamaTrials {
			extra = append(extra, "--model", fmt.Sprintf("tiny%d=%s,engine=ollama,slots=2,ctx=1024", i, tiny))
		}
		p := c.start(nodeSpec{name: "h", extra: extra})[0]
		lc := newLCClient(c)
		testutil.Eventually(b, 20*time.Second, "the catalog reported", func() error {
			ms, err := lcModels(c, p)
			if err != nil {
				return err
			}
			if len(ms) < ollamaTrials {
				return fmt.Errorf("%d models listed", len(ms))
			}
			return nil
		})
		store := b.TempDir()
		digest := engines.Digest(b, tiny)
		for i := range ollamaTrials {
			var r, h time.Duration
			through := func() {
				reply := lc.chat(p.httpAddr, "tiny"+strconv.Itoa(i), 8, 60*time.Second)
				if reply.err != nil || reply.status != http.StatusOK {
					b.Fatalf("cold request: %v", reply)
				}
				r = reply.took
			}
			if i%2 == 0 {
				through()
				h = engines.ColdStartByHand(b, bin, tiny, digest, store, 1024, handEnv)
			} else {
				h = engines.ColdStartByHand(b, bin, tiny, digest, store, 1024, handEnv)
				through()
			}
			rbee, hand, added = append(rbee, r), append(hand, h), append(added, r-h)
			var hive string
			for _, a := range logRecords(p.log(), "ollama loaded the model", "model", "tiny"+strconv.Itoa(i)) {
				hive = fmt.Sprintf("hive: create %s, preload %s, start to loaded %s", a["create"], a["preload"], a["since_start"])
			}
			b.Logf("trial %d: through rbee %s (%s), by hand %s", i, r.Round(time.Millisecond), hive, h.Round(time.Millisecond))
		}
		// Stopped, not killed: a hive killed outright leaves Ollama's
		// runners to the next hive's start (README, "Engines die with
		// their hive").
		p.signal(b, syscall.SIGTERM, 30*time.Second)
		c.close()
	}
	rm, _ := medianMax(rbee)
	hm, _ := medianMax(hand)
	am, ax := medianMax(added)
	b.ReportMetric(ms(rm), "rbee_p50_ms")
	b.ReportMetric(ms(hm), "hand_p50_ms")
	b.ReportMetric(ms(am), "added_p50_ms")
	b.ReportMetric(ms(ax), "added_max_ms")
	b.Logf("Ollama cold start over %d trials: through rbee p50 %.0f ms, by hand p50 %.0f ms; rbee adds p50 %.1f ms (max %.1f)",
		len(added), ms(rm), ms(hm), ms(am), ms(ax))
}
