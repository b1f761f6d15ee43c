package models

import (
	"bytes"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net/http"
	"os"
	"path/filepath"
	"regexp"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/rbee/rbee/internal/engines"
	"github.com/rbee/rbee/internal/testutil"
	"github.com/rbee/rbee/wsapi"
)

// syncBuffer is a log sink the test reads while the manager writes.
type syncBuffer struct {
	mu sync.Mutex
	b  bytes.Buffer
}

func (s *syncBuffer) Write(p []byte) (int, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.b.Write(p)
}

func (s *syncBuffer) String() string {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.b.String()
}

// newOllamaManager is a manager whose catalog is tiny.gguf under the
// built-in ollama engine, pointed at the real binary as --engine
// ollama=BINARY does. notify gets a value at every change of state.
func newOllamaManager(tb testing.TB, cfg Config, log io.Writer, notify chan<- struct{}) *Manager {
	tb.Helper()
	bin, tiny := engines.Find(tb)
	engines := BuiltinEngines()
	if err := ParseEngineFlag(EngineOllama+"="+bin, engines); err != nil {
		tb.Fatal(err)
	}
	ResolveEngines(engines, "")
	e, err := ParseModelFlag("tiny=" + tiny + ",engine=ollama,slots=2,ctx=512")
	if err != nil {
		tb.Fatal(err)
	}
	cfg.Entries, cfg.Engines = []Entry{e}, engines
	if cfg.LogDir == "" {
		cfg.LogDir = tb.TempDir()
	}
	cfg.StopGrace = 5 * time.Second
	cfg.Logger = slog.New(slog.NewTextHandler(log, nil))
	cfg.Notify = func() {
		select {
		case notify <- struct{}{}:
		default:
		}
	}
	m, err := New(cfg)
	if err != nil {
		tb.Fatal(err)
	}
	return m
}

// psModel is one entry of Ollama's GET /api/ps.
type psModel struct {
	Name          string    `json:"name"`
	ExpiresAt     time.Time `json:"expires_at"`
	ContextLength int       `json:"context_length"`
}

func ollamaPS(base string) ([]psModel, error) {
	resp, err := http.Get(base + "/api/ps")
	if err != nil {
		return nil, err
	}
	defer resp.Body.Close()
	var ps struct {
		Models []psModel `json:"models"`
	}
	if err := json.NewDecoder(resp.Body).Decode(&ps); err != nil {
		return nil, err
	}
	return ps.Models, nil
}

// chatOnce asks base for a short chat completion and returns the answer;
// an error when the reply is not Ollama's chat completion.
func chatOnce(base, model string) (string, error) {
	body := fmt.Sprintf(`{"model":%q,"messages":[{"role":"user","content":"hi"}],"max_tokens":8}`, model)
	tr := &http.Transport{DisableKeepAlives: true}
	resp, err := (&http.Client{Transport: tr, Timeout: 30 * time.Second}).Post(base+"/v1/chat/completions", "application/json", strings.NewReader(body))
	if err != nil {
		return "", err
	}
	defer resp.Body.Close()
	b, _ := io.ReadAll(resp.Body)
	if resp.StatusCode != http.StatusOK {
		return "", fmt.Errorf("chat: %s: %s", resp.Status, b)
	}
	var cc struct {
		Fingerprint string `json:"system_fingerprint"`
		Choices     []struct {
			Message struct {
				Content string `json:"content"`
			} `json:"message"`
		} `json:"choices"`
	}
	if err := json.Unmarshal(b, &cc); err != nil || len(cc.Choices) == 0 || cc.Fingerprint != "fp_ollama" {
		return "", fmt.Errorf("chat: no answer in %s", b)
	}
	return cc.Choices[0].Message.Content, nil
}

// waitReady waits for m's one worker to get ready, woken by its notify.
func waitReady(tb testing.TB, m *Manager, notify <-chan struct{}, within time.Duration) wsapi.ManagedWorker {
	tb.Helper()
	deadline := time.NewTimer(within)
	defer deadline.Stop()
	for {
		ws := managed(m)
		if len(ws) == 1 && ws[0].State == wsapi.ManagedReady {
			return ws[0]
		}
		_, cat, _, _ := m.Report([]wsapi.ProcessStats{})
		if len(cat) == 1 && cat[0].Failures > 0 {
			tb.Fatalf("the ollama engine failed to start: %s", cat[0].FailReason)
		}
		select {
		case <-notify:
		case <-deadline.C:
			tb.Fatalf("no ready worker within %s: %+v", within, ws)
		}
	}
}

// The built-in ollama engine: rbee starts `ollama serve`, gives it the
// catalog's GGUF, and calls it ready once Ollama has the model loaded, for
// ever; the load time rbee learns covers Ollama's own load; Close stops
// Ollama and its runner and removes the temporary store.
func TestOllama_StartsCreatesPreloads(t *testing.T) {
	var log syncBuffer
	notify := make(chan struct{}, 1)
	logDir := t.TempDir()
	m := newOllamaManager(t, Config{LogDir: logDir}, &log, notify)
	closed := false
	defer func() {
		if !closed {
			m.Close()
		}
		if t.Failed() {
			t.Logf("hive log:\n%s", log.String())
		}
	}()
	m.Start(&wsapi.ModelStart{StartID: "s1", Model: "tiny"}, "q")
	w := waitReady(t, m, notify, 60*time.Second)
	base := "http://127.0.0.1:" + w.Instance

	ps, err := ollamaPS(base)
	if err != nil {
		t.Fatal(err)
	}
	if len(ps) != 1 || ps[0].Name != "tiny:latest" {
		t.Fatalf("/api/ps = %+v, want tiny loaded", ps)
	}
	if left := time.Until(ps[0].ExpiresAt); left < 100*365*24*time.Hour {
		t.Fatalf("tiny expires in %s, want never (keep_alive -1)", left)
	}
	// ctx is each slot's: 512 (tiny itself takes 512).
	if ps[0].ContextLength != 512 {
		t.Errorf("context length %d, want 512 (each slot's ctx)", ps[0].ContextLength)
	}
	// Any answer, even an empty one: tiny's random weights may end it
	// at once.
	if answer, err := chatOnce(base, "tiny"); err != nil {
		t.Fatalf("chat with the ready engine: %q, %v", answer, err)
	}
	// A request does not set the model's expiry back to Ollama's
	// default: OLLAMA_KEEP_ALIVE=-1.
	if ps, err := ollamaPS(base); err != nil || len(ps) != 1 || time.Until(ps[0].ExpiresAt) < 100*365*24*time.Hour {
		t.Fatalf("after a chat /api/ps = %+v, %v; want tiny loaded for ever", ps, err)
	}

	rbeeLoad := time.Duration(catalog(m, "tiny").LoadMS) * time.Millisecond
	ollamaLoad := ollamaOwnLoad(t, filepath.Join(logDir, "tiny-"+w.Instance+".log"))
	if ollamaLoad <= 0 || rbeeLoad < ollamaLoad {
		t.Fatalf("rbee's load time %s, Ollama's own %s: want Ollama's > 0 and rbee's at least that", rbeeLoad, ollamaLoad)
	}
	t.Logf("load time: rbee %s, Ollama's own %s", rbeeLoad, ollamaLoad)

	store := m.ollama.dir
	runners := ollamaRunners(t, w.PID)
	if len(runners) == 0 {
		t.Fatalf("ollama serve (pid %d) runs no runner with tiny loaded", w.PID)
	}
	m.Close()
	closed = true
	for _, pid := range append(runners, w.PID) {
		testutil.Eventually(t, 10*time.Second, "ollama process "+strconv.Itoa(pid)+" gone", func() error {
			if alive(pid) && !zombie(pid) {
				return errors.New("still runs")
			}
			return nil
		})
	}
	if _, err := os.Stat(store); !errors.Is(err, os.ErrNotExist) {
		t.Fatalf("temporary store %s after Close: %v, want it gone", store, err)
	}
}

// A model Ollama cannot create fails the start with Ollama's reason.
func TestOllama_CreateFailsWithOllamasReason(t *testing.T) {
	var log syncBuffer
	notify := make(chan struct{}, 1)
	m := newOllamaManager(t, Config{}, &log, notify)
	defer m.Close()
	// Not a GGUF: Ollama refuses to create a model of it.
	bad := filepath.Join(t.TempDir(), "bad.gguf")
	if err := os.WriteFile(bad, []byte("not a gguf"), 0o644); err != nil {
		t.Fatal(err)
	}
	m.mu.Lock()
	m.items[0].Path = bad
	m.mu.Unlock()
	m.Start(&wsapi.ModelStart{StartID: "s1", Model: "tiny"}, "q")
	var reason string
	testutil.Eventually(t, 60*time.Second, "the start failed", func() error {
		c := catalog(m, "tiny")
		if c.Failures == 0 {
			return errors.New("not yet")
		}
		reason = c.FailReason
		return nil
	})
	if !strings.Contains(reason, "create model tiny in ollama") {
		t.Fatalf("fail reason %q, want the create's", reason)
	}
}

// ollamaOwnLoad is how long Ollama says it took to load the model: its log's
// "llama runner started in 0.30 seconds".
func ollamaOwnLoad(tb testing.TB, path string) time.Duration {
	tb.Helper()
	b, err := os.ReadFile(path)
	if err != nil {
		tb.Fatal(err)
	}
	m := regexp.MustCompile(`llama runner started in ([0-9.]+) seconds`).FindSubmatch(b)
	if m == nil {
		tb.Fatalf("%s says nothing of how long the load took", path)
	}
	s, err := strconv.ParseFloat(string(m[1]), 64)
	if err != nil {
		tb.Fatal(err)
	}
	return time.Duration(s * float64(time.Second))
}

// ollamaRunners are the children of the ollama server pid (its runners),
// found by their parent: /proc/PID/task/PID/children lists only what the
// main thread started, and Go starts processes from any thread.
func ollamaRunners(t *testing.T, pid int) []int {
	t.Helper()
	ents, err := os.ReadDir("/proc")
	if err != nil {
		t.Fatal(err)
	}
	var out []int
	for _, e := range ents {
		n, err := strconv.Atoi(e.Name())
		if err != nil {
			continue
		}
		b, err := os.ReadFile(filepath.Join("/proc", e.Name(), "stat"))
		if err != nil {
			continue
		}
		s := string(b)
		i := strings.LastIndexByte(s, ')')
		if f := strings.Fields(s[i+1:]); i > 0 && len(f) > 1 && f[1] == strconv.Itoa(pid) {
			out = append(out, n)
		}
	}
	return out
}

func zombie(pid int) bool {
	b, err := os.ReadFile(fmt.Sprintf("/proc/%d/stat", pid))
	if err != nil {
		return true
	}
	s := string(b)
	i := strings.LastIndexByte(s, ')')
	return i > 0 && i+2 < len(s) && (s[i+2] == 'Z' || s[i+2] == 'X')
}
