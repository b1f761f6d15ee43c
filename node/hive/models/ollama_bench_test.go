package models

import (
	"io"
	"slices"
	"strconv"
	"testing"
	"time"

	"github.com/rbee/rbee/internal/engines"
	"github.com/rbee/rbee/wsapi"
)

// BenchmarkOllamaColdStart is a cold start of tiny.gguf under the built-in
// ollama engine through a hive's Manager (Start → ready → a chat answered
// by the engine) beside the same by hand: `ollama serve` with the same
// environment, polled every 5 ms until it answers, then the blob, create
// and preload requests, then the same chat. Each iteration does both, in
// turns first, on one store each (the blob is there after the first), and
// the figures are medians: rbee_ms, hand_ms and added_ms (rbee − hand of
// one iteration), what rbee adds beyond Ollama's own start and load.
//
// The queen's part of a cold start through the cluster (its wait-or-load
// decision, the model_start message, routing) is not in it.
func BenchmarkOllamaColdStart(b *testing.B) {
	bin, tiny := engines.Find(b)
	notify := make(chan struct{}, 1)
	m := newOllamaManager(b, Config{OllamaModels: b.TempDir()}, io.Discard, notify)
	defer m.Close()
	it := m.items[0]
	handStore := b.TempDir()
	digest := engines.Digest(b, tiny) // a script hashes once too (sha256sum)

	var rbee, hand, added []time.Duration
	b.ResetTimer()
	for i := 0; i < b.N; i++ {
		var r, h time.Duration
		if i%2 == 0 {
			r, h = rbeeColdStart(b, m, notify, i), handColdStart(b, bin, tiny, digest, it, handStore)
		} else {
			h, r = handColdStart(b, bin, tiny, digest, it, handStore), rbeeColdStart(b, m, notify, i)
		}
		rbee, hand, added = append(rbee, r), append(hand, h), append(added, r-h)
	}
	b.StopTimer()
	b.ReportMetric(ms(median(rbee)), "rbee_ms")
	b.ReportMetric(ms(median(hand)), "hand_ms")
	b.ReportMetric(ms(median(added)), "added_ms")
	b.ReportMetric(0, "ns/op") // one op is two cold starts; the medians say it
}

// rbeeColdStart starts the model through m, chats once with the ready
// engine, then stops it and waits until it is gone.
func rbeeColdStart(b *testing.B, m *Manager, notify <-chan struct{}, i int) time.Duration {
	b.Helper()
	start := time.Now()
	m.Start(&wsapi.ModelStart{StartID: "b" + strconv.Itoa(i), Model: "tiny"}, "q")
	w := waitReady(b, m, notify, 60*time.Second)
	if _, err := chatOnce("http://127.0.0.1:"+w.Instance, "tiny"); err != nil {
		b.Fatal(err)
	}
	took := time.Since(start)
	m.mu.Lock()
	m.stopLocked(m.workers[w.Instance], "benchmark")
	m.mu.Unlock()
	deadline := time.NewTimer(30 * time.Second)
	defer deadline.Stop()
	for len(managed(m)) > 0 {
		select {
		case <-notify:
		case <-deadline.C:
			b.Fatal("the engine did not stop within 30 s")
		}
	}
	return took
}

// handColdStart is the same cold start with no rbee: what one would script,
// with the environment the hive gives Ollama for it (its host and store are
// the script's own).
func handColdStart(b *testing.B, bin, tiny, digest string, it *item, store string) time.Duration {
	b.Helper()
	return engines.ColdStartByHand(b, bin, tiny, digest, store, ollamaNumCtx(it), ollamaEnv(it, "0", store, time.Minute)[2:])
}

func median(ds []time.Duration) time.Duration {
	s := slices.Clone(ds)
	slices.Sort(s)
	return s[len(s)/2]
}

func ms(d time.Duration) float64 { return float64(d) / float64(time.Millisecond) }
