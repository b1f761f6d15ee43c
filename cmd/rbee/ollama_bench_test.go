package main

import (
	"crypto/sha256"
	"encoding/hex"
	"fmt"
	"io"
	"net"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"

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
func BenchmarkOllamaColdStart(b *testing.B) {
	bin, tiny := realOllamaTB(b)
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
		digest := fileSHA256(b, tiny)
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
				h = ollamaByHand(b, bin, digest, tiny, store)
			} else {
				h = ollamaByHand(b, bin, digest, tiny, store)
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

func realOllamaTB(b *testing.B) (bin, tiny string) {
	b.Helper()
	dir, err := filepath.Abs(filepath.Join("..", "..", "..", "shared", "engines"))
	if err != nil {
		b.Fatal(err)
	}
	bin, tiny = filepath.Join(dir, "ollama"), filepath.Join(dir, "tiny.gguf")
	for _, f := range []string{bin, tiny} {
		if _, err := os.Stat(f); err != nil {
			if os.Getenv("RBEE_REQUIRE_ENGINES") == "1" {
				b.Fatalf("RBEE_REQUIRE_ENGINES=1 but no real engine: %v", err)
			}
			b.Skipf("no real engine here (%v); CI has them at ../shared/engines", err)
		}
	}
	return bin, tiny
}

func fileSHA256(b *testing.B, path string) string {
	b.Helper()
	f, err := os.Open(path)
	if err != nil {
		b.Fatal(err)
	}
	defer f.Close()
	h := sha256.New()
	if _, err := io.Copy(h, f); err != nil {
		b.Fatal(err)
	}
	return "sha256:" + hex.EncodeToString(h.Sum(nil))
}

// ollamaByHand is one cold start with no rbee, as a script would do it with
// the environment the hive gives Ollama; it stops Ollama before returning.
func ollamaByHand(b *testing.B, bin, digest, tiny, store string) time.Duration {
	b.Helper()
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		b.Fatal(err)
	}
	port := strconv.Itoa(l.Addr().(*net.TCPAddr).Port)
	l.Close()
	base := "http://127.0.0.1:" + port
	hc := &http.Client{Transport: &http.Transport{DisableKeepAlives: true}, Timeout: 60 * time.Second}

	start := time.Now()
	cmd := exec.Command(bin, "serve")
	cmd.Env = append(os.Environ(), "OLLAMA_HOST=127.0.0.1:"+port, "OLLAMA_MODELS="+store, "OLLAMA_NUM_PARALLEL=2",
		"OLLAMA_CONTEXT_LENGTH=512", "OLLAMA_KEEP_ALIVE=-1", "OLLAMA_MAX_LOADED_MODELS=1", "OLLAMA_NOPRUNE=1")
	cmd.SysProcAttr = &syscall.SysProcAttr{Setpgid: true, Pdeathsig: syscall.SIGKILL}
	if err := cmd.Start(); err != nil {
		b.Fatal(err)
	}
	defer func() {
		_ = syscall.Kill(-cmd.Process.Pid, syscall.SIGTERM) // and its runner
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
	do := func(method, path string, body io.Reader) int {
		b.Helper()
		req, err := http.NewRequest(method, base+path, body)
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
	if do(http.MethodHead, "/api/blobs/"+digest, nil) != http.StatusOK {
		f, err := os.Open(tiny)
		if err != nil {
			b.Fatal(err)
		}
		do(http.MethodPost, "/api/blobs/"+digest, f)
		f.Close()
	}
	do(http.MethodPost, "/api/create", strings.NewReader(fmt.Sprintf(`{"model":"tiny","files":{"tiny.gguf":%q},"parameters":{"num_ctx":512},"stream":false}`, digest)))
	do(http.MethodPost, "/api/generate", strings.NewReader(`{"model":"tiny","keep_alive":-1}`))
	do(http.MethodPost, "/v1/chat/completions", strings.NewReader(`{"model":"tiny","messages":[{"role":"user","content":"hi"}],"max_tokens":8}`))
	return time.Since(start)
}
