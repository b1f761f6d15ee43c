// Package engines gives tests the real inference engine that sits beside
// the repository (../shared/engines: Ollama built for the CPU and a tiny
// GGUF model), and a cold start of it done by hand, the baseline rbee's
// own cold start is measured against.
//
// Tests that need it skip, saying why, where the folder is missing, and
// fail under RBEE_REQUIRE_ENGINES=1 (CI, which has it). It is imported by
// tests only.
package engines

import (
	"crypto/sha256"
	"encoding/hex"
	"errors"
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
)

// Find returns the real Ollama binary and tiny.gguf.
func Find(tb testing.TB) (ollama, tiny string) {
	tb.Helper()
	dir, err := folder()
	if err == nil {
		ollama, tiny = filepath.Join(dir, "ollama"), filepath.Join(dir, "tiny.gguf")
		for _, f := range []string{ollama, tiny} {
			if _, serr := os.Stat(f); serr != nil && err == nil {
				err = serr
			}
		}
	}
	if err != nil {
		if os.Getenv("RBEE_REQUIRE_ENGINES") == "1" {
			tb.Fatalf("RBEE_REQUIRE_ENGINES=1 but no real engine: %v", err)
		}
		tb.Skipf("no real engine here (%v); CI has them at ../shared/engines", err)
	}
	return ollama, tiny
}

// folder is ../shared/engines beside the module's root, found from the
// test's working directory (its package's folder).
func folder() (string, error) {
	dir, err := os.Getwd()
	if err != nil {
		return "", err
	}
	for {
		if _, err := os.Stat(filepath.Join(dir, "go.mod")); err == nil {
			return filepath.Join(filepath.Dir(dir), "shared", "engines"), nil
		}
		parent := filepath.Dir(dir)
		if parent == dir {
			return "", errors.New("no go.mod above the test's folder")
		}
		dir = parent
	}
}

// Digest is a file's sha256 as Ollama names blobs ("sha256:<hex>").
func Digest(tb testing.TB, path string) string {
	tb.Helper()
	f, err := os.Open(path)
	if err != nil {
		tb.Fatal(err)
	}
	defer f.Close()
	h := sha256.New()
	if _, err := io.Copy(h, f); err != nil {
		tb.Fatal(err)
	}
	return "sha256:" + hex.EncodeToString(h.Sum(nil))
}

// ColdStartByHand is one cold start of tiny with no rbee, as a script would
// do it: `ollama serve` on a free port with env (OLLAMA_HOST and
// OLLAMA_MODELS=store are added), polled every 5 ms until it answers, the
// blob (uploaded unless store has it), create with num_ctx, preload, and one
// chat answered. It stops Ollama and its runner before returning how long
// that took.
func ColdStartByHand(tb testing.TB, ollama, tiny, digest, store string, numCtx int, env []string) time.Duration {
	tb.Helper()
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		tb.Fatal(err)
	}
	port := strconv.Itoa(l.Addr().(*net.TCPAddr).Port)
	l.Close()
	base := "http://127.0.0.1:" + port
	hc := &http.Client{Transport: &http.Transport{DisableKeepAlives: true}, Timeout: time.Minute}

	start := time.Now()
	cmd := exec.Command(ollama, "serve")
	cmd.Env = append(append(os.Environ(), env...), "OLLAMA_HOST=127.0.0.1:"+port, "OLLAMA_MODELS="+store)
	cmd.SysProcAttr = &syscall.SysProcAttr{Setpgid: true, Pdeathsig: syscall.SIGKILL}
	if err := cmd.Start(); err != nil {
		tb.Fatal(err)
	}
	defer func() {
		_ = syscall.Kill(-cmd.Process.Pid, syscall.SIGTERM) // and its runner
		_ = cmd.Wait()
	}()
	poll := time.NewTicker(5 * time.Millisecond)
	defer poll.Stop()
	for up := false; !up; {
		if time.Since(start) > 30*time.Second {
			tb.Fatal("ollama serve did not answer within 30 s")
		}
		<-poll.C
		if resp, err := hc.Get(base + "/api/version"); err == nil {
			up = resp.StatusCode == http.StatusOK
			resp.Body.Close()
		}
	}
	do := func(method, path string, body io.Reader) int {
		tb.Helper()
		req, err := http.NewRequest(method, base+path, body)
		if err != nil {
			tb.Fatal(err)
		}
		resp, err := hc.Do(req)
		if err != nil {
			tb.Fatal(err)
		}
		defer resp.Body.Close()
		out, _ := io.ReadAll(resp.Body)
		if resp.StatusCode/100 != 2 && method != http.MethodHead {
			tb.Fatalf("%s %s: %s: %s", method, path, resp.Status, out)
		}
		return resp.StatusCode
	}
	if do(http.MethodHead, "/api/blobs/"+digest, nil) != http.StatusOK {
		f, err := os.Open(tiny)
		if err != nil {
			tb.Fatal(err)
		}
		do(http.MethodPost, "/api/blobs/"+digest, f)
		f.Close()
	}
	do(http.MethodPost, "/api/create", strings.NewReader(fmt.Sprintf(
		`{"model":"tiny","files":{"tiny.gguf":%q},"parameters":{"num_ctx":%d},"stream":false}`, digest, numCtx)))
	do(http.MethodPost, "/api/generate", strings.NewReader(`{"model":"tiny","keep_alive":-1}`))
	do(http.MethodPost, "/v1/chat/completions", strings.NewReader(`{"model":"tiny","messages":[{"role":"user","content":"hi"}],"max_tokens":8}`))
	return time.Since(start)
}
