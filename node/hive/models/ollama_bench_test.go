package models

import (
	"fmt"
	"io"
	"net"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"

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
	bin, tiny := realEngines(b)
	notify := make(chan struct{}, 1)
	m := newOllamaManager(b, Config{OllamaModels: b.TempDir()}, io.Discard, notify)
	defer m.Close()
	it := m.items[0]
	handStore := b.TempDir()
	var hashed ollamaStore // a script hashes once too (sha256sum)
	digest, err := hashed.digest(b.Context(), tiny)
	if err != nil {
		b.Fatal(err)
	}

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

// handColdStart is the same cold start with no rbee: what one would script.
func handColdStart(b *testing.B, bin, tiny, digest string, it *item, store string) time.Duration {
	b.Helper()
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		b.Fatal(err)
	}
	port := strconv.Itoa(l.Addr().(*net.TCPAddr).Port)
	l.Close()
	base := "http://127.0.0.1:" + port
	hc := &http.Client{Transport: &http.Transport{DisableKeepAlives: true}}

	start := time.Now()
	cmd := exec.Command(bin, "serve")
	cmd.Env = append(os.Environ(), ollamaEnv(it, port, store, time.Minute)...)
	logf, err := os.Create(filepath.Join(b.TempDir(), "ollama.log"))
	if err != nil {
		b.Fatal(err)
	}
	defer logf.Close()
	cmd.Stdout, cmd.Stderr = logf, logf
	if err := cmd.Start(); err != nil {
		b.Fatal(err)
	}
	defer func() {
		_ = cmd.Process.Signal(syscall.SIGTERM)
		_ = cmd.Wait()
	}()
	poll := time.NewTicker(5 * time.Millisecond)
	defer poll.Stop()
	for up := false; !up; {
		if time.Since(start) > 30*time.Second {
			b.Fatal("ollama serve did not answer within 30 s")
		}
		<-poll.C
		if resp, err := hc.Get(base + "/api/version"); err == nil {
			up = resp.StatusCode == http.StatusOK
			resp.Body.Close()
		}
	}
	do := func(method, path, body string, in io.Reader) int {
		b.Helper()
		if in == nil {
			in = strings.NewReader(body)
		}
		req, err := http.NewRequest(method, base+path, in)
		if err != nil {
			b.Fatal(err)
		}
		resp, err := hc.Do(req)
		if err != nil {
			b.Fatal(err)
		}
		defer resp.Body.Close()
		out, _ := io.ReadAll(resp.Body)
		if resp.StatusCode/100 != 2 && method != http.MethodHead {
			b.Fatalf("%s %s: %s: %s", method, path, resp.Status, out)
		}
		return resp.StatusCode
	}
	if do(http.MethodHead, "/api/blobs/"+digest, "", nil) != http.StatusOK {
		f, err := os.Open(tiny)
		if err != nil {
			b.Fatal(err)
		}
		do(http.MethodPost, "/api/blobs/"+digest, "", f)
		f.Close()
	}
	do(http.MethodPost, "/api/create", fmt.Sprintf(`{"model":"tiny","files":{"tiny.gguf":%q},"parameters":{"num_ctx":%d},"stream":false}`,
		digest, ollamaNumCtx(it)), nil)
	do(http.MethodPost, "/api/generate", `{"model":"tiny","keep_alive":-1}`, nil)
	if _, err := chatOnce(base, "tiny"); err != nil {
		b.Fatal(err)
	}
	return time.Since(start)
}

func median(ds []time.Duration) time.Duration {
	s := slices.Clone(ds)
	slices.Sort(s)
	return s[len(s)/2]
}

func ms(d time.Duration) float64 { return float64(d) / float64(time.Millisecond) }
