package main

import (
	"encoding/json"
	"fmt"
	"net/http"
	"os"
	"path/filepath"
	"regexp"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/rbee/rbee/internal/engines"
	"github.com/rbee/rbee/internal/testutil"
)

// TestModels_OllamaColdStart: a hive whose catalog serves tiny.gguf with the
// built-in ollama engine answers a cold request through the cluster with
// the real Ollama's answer; the load time it reports covers Ollama's own
// load, Ollama keeps the model loaded with no expiry, and what the hive
// learned is kept under the ollama engine.
func TestModels_OllamaColdStart(t *testing.T) {
	t.Parallel()
	bin, tiny := engines.Find(t)
	c := newLCCluster(t)
	n := c.start(lcNode(c, "n", "", "--engine", "ollama="+bin, "--model", "tiny="+tiny+",engine=ollama,slots=2,ctx=1024"))[0]
	lc := newLCClient(c)
	waitModelState(t, c, n, "tiny", "available", "n")

	r := lc.chat(n.httpAddr, "tiny", 8, 60*time.Second)
	// Ollama's answer, even an empty one: tiny's random weights may end
	// it at once.
	if r.err != nil || r.status != http.StatusOK || !strings.Contains(r.body, `"system_fingerprint":"fp_ollama"`) ||
		!strings.Contains(r.body, `"choices":[{`) {
		t.Fatalf("cold request: %v", r)
	}
	ws := waitWorkerStart(t, n, "tiny", time.Second)
	ready := logRecords(n.log(), "worker ready", "model", "tiny")
	if len(ready) != 1 {
		t.Fatalf(`hive logged "worker ready" %d times, want 1`, len(ready))
	}
	rbeeLoad, err := time.ParseDuration(ready[0]["load_time"])
	if err != nil {
		t.Fatal(err)
	}
	engineLog := filepath.Join(c.dir, "n-data", "engines", "tiny-"+ws.instance+".log")
	b, err := os.ReadFile(engineLog)
	if err != nil {
		t.Fatal(err)
	}
	own := regexp.MustCompile(`llama runner started in ([0-9.]+) seconds`).FindSubmatch(b)
	if own == nil {
		t.Fatalf("%s says nothing of Ollama's load", engineLog)
	}
	secs, _ := strconv.ParseFloat(string(own[1]), 64)
	ollamaLoad := time.Duration(secs * float64(time.Second))
	if ollamaLoad <= 0 || rbeeLoad < ollamaLoad {
		t.Fatalf("hive's load time %s, Ollama's own %s: want rbee's to cover Ollama's", rbeeLoad, ollamaLoad)
	}
	t.Logf("cold request answered after %s: %q; load time: hive %s, Ollama's own %s",
		r.took.Round(time.Millisecond), r.text(), rbeeLoad, ollamaLoad)

	var ps struct {
		Models []struct {
			Name      string    `json:"name"`
			ExpiresAt time.Time `json:"expires_at"`
		} `json:"models"`
	}
	if err := c.getJSON("127.0.0.1:"+ws.instance, "/api/ps", &ps); err != nil {
		t.Fatal(err)
	}
	if len(ps.Models) != 1 || ps.Models[0].Name != "tiny:latest" || time.Until(ps.Models[0].ExpiresAt) < 100*365*24*time.Hour {
		t.Fatalf("Ollama's /api/ps = %+v, want tiny loaded with no expiry", ps.Models)
	}
	waitModelState(t, c, n, "tiny", "loaded")

	state := filepath.Join(c.dir, "n-data", "models.json")
	testutil.Every(50*time.Millisecond).Eventually(t, 10*time.Second, "the hive keeps tiny's load time under ollama", func() error {
		b, err := os.ReadFile(state)
		if err != nil {
			return err
		}
		var st struct {
			Models []struct {
				Model, Engine string
				LoadMS        int64 `json:"load_ms"`
			} `json:"models"`
		}
		if err := json.Unmarshal(b, &st); err != nil {
			return err
		}
		for _, m := range st.Models {
			if m.Model == "tiny" && m.Engine == "ollama" && m.LoadMS > 0 {
				return nil
			}
		}
		return fmt.Errorf("%s: %s", state, b)
	})
	if _, err := os.Stat(filepath.Join(c.dir, "n-data", "ollama", "blobs")); err != nil {
		t.Fatalf("the ollama store is not under --data-dir: %v", err)
	}

	// A node that stops stops Ollama and the runner it started (which
	// the harness's SIGKILL at the end would leave behind).
	runners := processesWith(t, "runner", filepath.Join(c.dir, "n-data", "ollama"))
	if len(runners) == 0 {
		t.Fatalf("no ollama runner serves tiny from the store under --data-dir")
	}
	n.signal(t, syscall.SIGTERM, 30*time.Second)
	for _, pid := range append(runners, ws.pid) {
		waitProcessGone(t, pid, 10*time.Second, fmt.Sprintf("ollama process %d gone after the node stopped", pid))
	}
}

// processesWith lists the processes whose command line holds every one of
// words.
func processesWith(t *testing.T, words ...string) []int {
	t.Helper()
	ents, err := os.ReadDir("/proc")
	if err != nil {
		t.Fatal(err)
	}
	var out []int
	for _, e := range ents {
		pid, err := strconv.Atoi(e.Name())
		if err != nil {
			continue
		}
		b, err := os.ReadFile(filepath.Join("/proc", e.Name(), "cmdline"))
		if err != nil {
			continue
		}
		all := true
		for _, w := range words {
			all = all && strings.Contains(string(b), w)
		}
		if all {
			out = append(out, pid)
		}
	}
	return out
}
