package main

import (
	"bufio"
	"context"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
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
		for _, want := range []string{"http://" + addr + "/v1", "Dashboard", "curl http://" + addr + "/v1/chat/completions", "simulated",
			// The commands it prints are the ones the user ran.
			rbeeBin + " status --http-addr " + addr, rbeeBin + " top --http-addr " + addr, "  kill -9 "} {
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
// completion, embeddings, the Responses API with a follow-up, and an unknown
// model's error. CI installs node and the package; elsewhere the
// test skips, saying why, unless RBEE_REQUIRE_NODE is set.
func TestE2E_OpenAIClient(t *testing.T) { runClientAgainstDemo(t, "openai-client", "openai") }

// demoFailure is how a `rbee demo` that should not start ended.
type demoFailure struct {
	stdout, stderr string
	took           time.Duration
	code           int    // the exit status
	tmp            string // the TMPDIR it ran with, where its log folder goes
}

// runFailingDemo runs `rbee demo` with args, its TMPDIR a folder of the
// test's, and returns once it exits (at most 60 s: a demo gives up after 30).
func runFailingDemo(t *testing.T, args ...string) demoFailure {
	t.Helper()
	f := demoFailure{tmp: t.TempDir()}
	ctx, cancel := context.WithTimeout(context.Background(), 60*time.Second)
	defer cancel()
	cmd := exec.CommandContext(ctx, rbeeBin, append([]string{"demo"}, args...)...)
	cmd.Env = append(envWithoutRbee(), "TMPDIR="+f.tmp)
	var stdout, stderr strings.Builder
	cmd.Stdout, cmd.Stderr = &stdout, &stderr
	start := time.Now()
	err := cmd.Run()
	f.took, f.stdout, f.stderr = time.Since(start), stdout.String(), stderr.String()
	var ee *exec.ExitError
	if !errors.As(err, &ee) {
		t.Fatalf("rbee demo %s: %v, want a failure\nstdout:\n%s\nstderr:\n%s", strings.Join(args, " "), err, f.stdout, tail(f.stderr, 4000))
	}
	f.code = ee.ExitCode()
	return f
}

// check fails t unless the demo failed at once, with no banner, saying
// each of wants.
func (f demoFailure) check(t *testing.T, wants ...string) {
	t.Helper()
	// Today's failures take well under a second; 10 s leaves room for
	// a loaded machine and is far from the 30 s a demo gives its start.
	if f.took > 10*time.Second || f.code == 0 || f.code == -1 {
		t.Errorf("demo exited with status %d after %v; want a failure at once", f.code, f.took.Round(time.Millisecond))
	}
	if strings.Contains(f.stdout, "Ctrl-C stops the demo") || strings.Contains(f.stdout, "API ") {
		t.Errorf("a demo that failed printed its banner:\n%s", f.stdout)
	}
	for _, w := range wants {
		if !strings.Contains(f.stderr, w) {
			t.Errorf("stderr lacks %q:\n%s", w, f.stderr)
		}
	}
}

// TestE2E_DemoPortHeldFailsAtOnce: a demo whose --http-addr another program
// holds says so at once, with the bind error, and starts nothing.
func TestE2E_DemoPortHeldFailsAtOnce(t *testing.T) {
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer ln.Close()
	addr := ln.Addr().String()
	f := runFailingDemo(t, "--http-addr", addr)
	f.check(t, "rbee: --http-addr "+addr+": address already in use", "another rbee demo?", "--http-addr 127.0.0.1:0")
	if logs, _ := filepath.Glob(filepath.Join(f.tmp, "rbee-demo-*")); len(logs) != 0 {
		t.Errorf("a demo that started nothing made a log folder: %q", logs)
	}
}

// TestE2E_SecondDemoOnSamePortFails: a second demo on the first one's port
// fails at once instead of printing a banner for a cluster that is the
// first one's.
func TestE2E_SecondDemoOnSamePortFails(t *testing.T) {
	addr := startDemo(t)
	f := runFailingDemo(t, "--http-addr", addr, "--tokens-per-second", "200")
	f.check(t, "rbee: --http-addr "+addr+": address already in use", "another rbee demo?")
}

// TestE2E_DemoChildFailsKeepsLogs: a child that exits while the demo
// starts fails the demo at once, naming the child and quoting the end of
// its log; the log folder is kept, and named.
func TestE2E_DemoChildFailsKeepsLogs(t *testing.T) {
	// The demo passes --tokens-per-second to its simulated workers, which
	// refuse this one.
	f := runFailingDemo(t, "--http-addr", "127.0.0.1:0", "--tokens-per-second", "0.001")
	f.check(t, "rbee: demo did not start", ") exited: exit status 1", "simulator config: tokens per second 0.001", "logs kept in ")
	m := regexp.MustCompile(`(?m)^logs kept in (.+)$`).FindStringSubmatch(f.stderr)
	if m == nil {
		t.Fatal("no log folder named")
	}
	if filepath.Dir(m[1]) != f.tmp {
		t.Errorf("log folder %s is not in the demo's TMPDIR %s", m[1], f.tmp)
	}
	logs, err := filepath.Glob(filepath.Join(m[1], "sim-*.log"))
	if err != nil || len(logs) != 4 {
		t.Fatalf("log folder %s holds %q (%v), want the four workers' logs", m[1], logs, err)
	}
	// The worker named is one that failed, and its log is there.
	named := regexp.MustCompile(`sim-\d \(pid \d+\) exited: exit status 1; the end of (\S+):`).FindStringSubmatch(f.stderr)
	if named == nil || filepath.Dir(named[1]) != m[1] {
		t.Fatalf("the error names no simulated worker's log in %s:\n%s", m[1], f.stderr)
	}
	if b, err := os.ReadFile(named[1]); err != nil || !strings.Contains(string(b), "tokens per second") {
		t.Errorf("%s: %q, %v; want the worker's error", named[1], b, err)
	}
}

func TestUserCommand(t *testing.T) {
	for _, tc := range []struct{ exe, arg0, goCache, want string }{
		{"/tmp/go-build2528844405/b001/exe/rbee", "/tmp/go-build2528844405/b001/exe/rbee", "", "go run ./cmd/rbee"},
		{"/home/u/.cache/go-build/ab/abcdef-d/rbee", "rbee", "", "go run ./cmd/rbee"},
		{"/srv/cache/ab/abcdef-d/rbee", "rbee", "/srv/cache", "go run ./cmd/rbee"},
		{"/srv/cachex/rbee", "rbee", "/srv/cache", "rbee"},
		{"/home/u/src/rbee/rbee", "./rbee", "", "./rbee"},
		{"/usr/local/bin/rbee", "rbee", "", "rbee"},
		{"/home/u/my tools/rbee", "/home/u/my tools/rbee", "", "'/home/u/my tools/rbee'"},
		{"/x/rbee", "it's", "", `'it'\''s'`},
	} {
		if got := userCommand(tc.exe, tc.arg0, tc.goCache); got != tc.want {
			t.Errorf("userCommand(%q, %q, %q) = %q, want %q", tc.exe, tc.arg0, tc.goCache, got, tc.want)
		}
	}
}
