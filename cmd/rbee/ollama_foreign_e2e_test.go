package main

import (
	"errors"
	"fmt"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"slices"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/rbee/rbee/internal/engines"
	"github.com/rbee/rbee/internal/testutil"
	"github.com/rbee/rbee/node/api"
	"github.com/rbee/rbee/wsapi"
)

// foreignOllama starts the real Ollama by hand, as a user would before
// pointing --worker at it, with each of names created from tiny.gguf and
// none loaded. It returns the server's base URL; the server and its runners
// stop when the test ends.
func foreignOllama(t *testing.T, names ...string) string {
	t.Helper()
	base, _ := foreignOllamaWith(t, readmeTemplate, names...)
	return base
}

// ollamaListening finds the address in `ollama serve`'s
// msg="Listening on 127.0.0.1:39631 (version 0.17.4)".
var ollamaListening = regexp.MustCompile(`Listening on (127\.0\.0\.1:[0-9]+) `)

// readmeTemplate is ../shared/engines/README.md's chat template for tiny.
const readmeTemplate = "{{- range .Messages }}<|{{ .Role }}|>{{ .Content }}\n{{ end }}<|assistant|>"

// foreignOllamaWith is foreignOllama with the models' chat template; it
// also returns the process group of the server and its runners.
func foreignOllamaWith(t *testing.T, template string, names ...string) (string, int) {
	t.Helper()
	bin, tiny := engines.Find(t)
	store := t.TempDir()
	// Port 0: Ollama binds a free port itself and logs it. A port picked
	// here and handed over could be taken in between: in CI, by another
	// test's Ollama, which this test then used without knowing, until it
	// stopped and a simulator took the port.
	env := append(os.Environ(), "OLLAMA_HOST=127.0.0.1:0", "OLLAMA_MODELS="+store, "OLLAMA_NUM_PARALLEL=2",
		"OLLAMA_CONTEXT_LENGTH=512", "OLLAMA_KEEP_ALIVE=-1", "OLLAMA_MAX_LOADED_MODELS=2", "OLLAMA_NOPRUNE=1")
	logf, err := os.Create(filepath.Join(t.TempDir(), "ollama.log"))
	if err != nil {
		t.Fatal(err)
	}
	cmd := exec.Command(bin, "serve")
	cmd.Env, cmd.Stdout, cmd.Stderr = env, logf, logf
	cmd.SysProcAttr = &syscall.SysProcAttr{Setpgid: true, Pdeathsig: syscall.SIGKILL}
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		_ = syscall.Kill(-cmd.Process.Pid, syscall.SIGKILL) // and its runners
		_ = cmd.Wait()
		logf.Close()
		if t.Failed() {
			b, _ := os.ReadFile(logf.Name())
			t.Logf("ollama serve's log:\n%s", tail(string(b), 8<<10))
		}
	})
	var host string
	testutil.Every(20*time.Millisecond).Eventually(t, 30*time.Second, "ollama serve listens", func() error {
		b, _ := os.ReadFile(logf.Name())
		m := ollamaListening.FindSubmatch(b)
		if m == nil {
			return errors.New("no \"Listening on\" in its log yet")
		}
		host = string(m[1])
		return nil
	})
	env = append(env, "OLLAMA_HOST="+host) // the later one counts, for the CLI below
	base := "http://" + host
	hc := &http.Client{Transport: &http.Transport{DisableKeepAlives: true}, Timeout: 5 * time.Second}
	testutil.Every(20*time.Millisecond).Eventually(t, 30*time.Second, "ollama serve answers", func() error {
		resp, err := hc.Get(base + "/api/version")
		if err != nil {
			return err
		}
		resp.Body.Close()
		if resp.StatusCode != http.StatusOK {
			return fmt.Errorf("GET /api/version: %s", resp.Status)
		}
		return nil
	})
	mf := filepath.Join(t.TempDir(), "Modelfile")
	modelfile := fmt.Sprintf("FROM %s\nTEMPLATE \"\"\"%s\"\"\"\nPARAMETER stop \"<|user|>\"\n", tiny, template)
	if err := os.WriteFile(mf, []byte(modelfile), 0o600); err != nil {
		t.Fatal(err)
	}
	for _, name := range names {
		create := exec.Command(bin, "create", name, "-f", mf)
		create.Env = env
		if out, err := create.CombinedOutput(); err != nil {
			t.Fatalf("ollama create %s: %v: %s", name, err, out)
		}
	}
	return base, cmd.Process.Pid
}

// TestOllama_ForeignWorker: an Ollama that rbee did not start, named with
// --worker, serves every model it has installed, loaded or not: /v1/models
// lists both before either is loaded, and requests for each, by its short
// name (tiny) and its full one (tiny:latest), get Ollama's answer through
// the cluster.
func TestOllama_ForeignWorker(t *testing.T) {
	t.Parallel()
	base := foreignOllama(t, "tiny", "mini")
	c := newCluster(t)
	n := c.start(nodeSpec{name: "n", extra: []string{"--worker", base + ",slots=2"}})[0]
	lc := newLCClient(c)

	// Listed before any request: Ollama loads a model on its first one.
	// Not fatal: the requests below say what a client sees either way.
	err := testutil.Every(20*time.Millisecond).Until(20*time.Second, func() error {
		ms, err := lcModels(c, n)
		if err != nil {
			return err
		}
		for _, want := range []string{"tiny:latest", "mini:latest"} {
			m, ok := ms[want]
			if !ok {
				return fmt.Errorf("%s not listed: %+v", want, ms)
			}
			if m.Slots != 2 {
				return fmt.Errorf("%s: %d slots, want 2 (--worker slots=2)", want, m.Slots)
			}
		}
		return nil
	})
	if err != nil {
		t.Errorf("/v1/models does not list both of Ollama's models: %v", err)
	}
	// /v1/cluster and rbee status show the one worker, its models and
	// its engine, as Ollama's /api/version tells it.
	var version struct {
		Version string `json:"version"`
	}
	if err := c.getJSON(strings.TrimPrefix(base, "http://"), "/api/version", &version); err != nil {
		t.Fatal(err)
	}
	engine := "ollama " + version.Version
	var view api.ClusterView
	if err := c.getJSON(n.httpAddr, "/v1/cluster", &view); err != nil {
		t.Fatal(err)
	}
	// Find the --worker by its port: the hive's cgroup scan may also list
	// workers of other tests running on this machine.
	port := base[strings.LastIndex(base, ":")+1:]
	var w *wsapi.ProcessStats
	for _, h := range view.Hives {
		for i := range h.Workers {
			if h.Workers[i].Group == "ext" && h.Workers[i].Instance == port {
				w = &h.Workers[i]
			}
		}
	}
	if w == nil {
		t.Fatalf("/v1/cluster hives %+v, want the --worker ext/%s", view.Hives, port)
	}
	// In Ollama's order (newest first, as /api/tags lists them).
	if w.Engine != engine || !slices.Equal(slices.Sorted(slices.Values(w.Models)), []string{"mini:latest", "tiny:latest"}) {
		t.Errorf("/v1/cluster worker %+v, want engine %q and both models", w, engine)
	}
	status := c.rbee("status", "--http-addr", n.httpAddr, "--cluster-key-file", c.keyFile)
	if !strings.Contains(status, "("+engine+")") || !strings.Contains(status, "mini:latest, ") && !strings.Contains(status, ", mini:latest") {
		t.Errorf("rbee status does not show both models and %q:\n%s", engine, status)
	}

	var ps struct {
		Models []struct {
			Name string `json:"name"`
		} `json:"models"`
	}
	if err := c.getJSON(strings.TrimPrefix(base, "http://"), "/api/ps", &ps); err != nil {
		t.Fatal(err)
	}
	if len(ps.Models) != 0 {
		t.Fatalf("Ollama has %+v loaded before any request: the listing proves nothing", ps.Models)
	}

	fails := 0
	for _, model := range []string{"tiny", "mini:latest", "tiny:latest", "mini", "TINY"} {
		r := lc.chat(n.httpAddr, model, 8, 60*time.Second)
		if r.err != nil || r.status != http.StatusOK || !strings.Contains(r.body, `"system_fingerprint":"fp_ollama"`) {
			t.Errorf("request for %q: %v", model, r)
			fails++
			continue
		}
		t.Logf("request for %q: 200 after %s", model, r.took.Round(time.Millisecond))
	}
	if err := c.getJSON(strings.TrimPrefix(base, "http://"), "/api/ps", &ps); err != nil {
		t.Fatal(err)
	}
	loaded := make([]string, 0, len(ps.Models))
	for _, m := range ps.Models {
		loaded = append(loaded, m.Name)
	}
	t.Logf("%d of 5 requests failed; Ollama has %s loaded", fails, strings.Join(loaded, ", "))
}
