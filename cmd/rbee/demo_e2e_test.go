package main

import (
	"bufio"
	"context"
	"fmt"
	"io"
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

// startDemo runs `rbee demo` on a free port and waits for its ready banner;
// it returns the API address. The demo is stopped with SIGINT at cleanup,
// and must exit 0 having stopped every child.
func startDemo(t *testing.T) string {
	t.Helper()
	ports, err := freePorts(1)
	if err != nil {
		t.Fatal(err)
	}
	addr := "127.0.0.1:" + strconv.Itoa(ports[0])
	cmd := exec.Command(rbeeBin, "demo", "--http-addr", addr, "--tokens-per-second", "200")
	cmd.Env = envWithoutRbee()
	stdout, err := cmd.StdoutPipe()
	if err != nil {
		t.Fatal(err)
	}
	var stderr strings.Builder
	cmd.Stderr = &stderr
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	ready := make(chan string, 1)
	var out strings.Builder
	go func() {
		sc := bufio.NewScanner(stdout)
		for sc.Scan() {
			line := sc.Text()
			out.WriteString(line + "\n")
			if strings.HasPrefix(line, "Ctrl-C stops the demo") {
				ready <- out.String()
			}
		}
		close(ready)
	}()
	t.Cleanup(func() {
		_ = cmd.Process.Signal(syscall.SIGINT)
		done := make(chan error, 1)
		go func() { done <- cmd.Wait() }()
		select {
		case err := <-done:
			if err != nil {
				t.Errorf("demo exited with %v\nstderr:\n%s", err, tail(stderr.String(), 4000))
			}
		case <-time.After(20 * time.Second):
			_ = cmd.Process.Kill()
			t.Errorf("demo did not stop within 20 s of SIGINT")
		}
	})
	select {
	case banner, ok := <-ready:
		if !ok {
			t.Fatalf("demo exited before it was ready\nstdout:\n%s\nstderr:\n%s", out.String(), tail(stderr.String(), 4000))
		}
		for _, want := range []string{"http://" + addr + "/v1", "Dashboard", "curl http://" + addr + "/v1/chat/completions", "simulated"} {
			if !strings.Contains(banner, want) {
				t.Errorf("banner lacks %q:\n%s", want, banner)
			}
		}
	case <-time.After(60 * time.Second):
		t.Fatalf("demo not ready after 60 s\nstderr:\n%s", tail(stderr.String(), 4000))
	}
	return addr
}

// TestE2E_DemoCurl: the README's curl line works against `rbee demo`, through
// its entry node, streaming.
func TestE2E_DemoCurl(t *testing.T) {
	addr := startDemo(t)
	ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
	defer cancel()
	req, _ := http.NewRequestWithContext(ctx, http.MethodPost, "http://"+addr+"/v1/chat/completions",
		strings.NewReader(`{"model":"llama-3.2-1b","messages":[{"role":"user","content":"hi"}],"stream":true}`))
	// curl -d sends form data's content type; rbee must not care.
	req.Header.Set("Content-Type", "application/x-www-form-urlencoded")
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	b, _ := io.ReadAll(resp.Body)
	if resp.StatusCode != 200 || !strings.Contains(string(b), "chat.completion.chunk") || !strings.HasSuffix(strings.TrimSpace(string(b)), "data: [DONE]") {
		t.Fatalf("demo chat: %d\n%s", resp.StatusCode, b)
	}
	var view struct {
		Hives []struct {
			Workers []struct {
				Simulated bool `json:"simulated"`
			} `json:"workers"`
		} `json:"hives"`
	}
	c := &cluster{hc: http.DefaultClient}
	testutil.Every(100*time.Millisecond).Eventually(t, 10*time.Second, "4 simulated workers in /v1/cluster", func() error {
		if err := c.getJSON(addr, "/v1/cluster", &view); err != nil {
			return err
		}
		n := 0
		for _, h := range view.Hives {
			for _, w := range h.Workers {
				if w.Simulated {
					n++
				}
			}
		}
		if n != 4 || len(view.Hives) != 2 {
			return fmt.Errorf("%d hives, %d simulated workers", len(view.Hives), n)
		}
		return nil
	})
}

// TestE2E_OpenAIClient runs the official openai npm package (with node)
// against `rbee demo`: models list, a non-streaming and a streaming chat
// completion, embeddings. CI installs node and the package; elsewhere the
// test skips, saying why, unless RBEE_REQUIRE_NODE is set.
func TestE2E_OpenAIClient(t *testing.T) {
	dir, _ := filepath.Abs("../../testdata/openai-client")
	nodeBin, err := exec.LookPath("node")
	if err == nil {
		_, err = os.Stat(filepath.Join(dir, "node_modules", "openai", "package.json"))
	}
	if err != nil {
		if os.Getenv("RBEE_REQUIRE_NODE") != "" {
			t.Fatalf("node or the openai package missing (run: npm ci --prefix testdata/openai-client): %v", err)
		}
		t.Skipf("node or the openai package missing (run: npm ci --prefix testdata/openai-client): %v", err)
	}
	addr := startDemo(t)
	for _, model := range []string{"llama-3.2-1b", "qwen2.5-0.5b"} {
		ctx, cancel := context.WithTimeout(context.Background(), 60*time.Second)
		out, err := exec.CommandContext(ctx, nodeBin, filepath.Join(dir, "client.mjs"), "http://"+addr+"/v1", model).CombinedOutput()
		cancel()
		t.Logf("openai client, %s:\n%s", model, out)
		if err != nil || !strings.Contains(string(out), "OK") {
			t.Fatalf("openai client against rbee demo (%s): %v", model, err)
		}
	}
}
