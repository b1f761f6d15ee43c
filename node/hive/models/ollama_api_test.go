package models

import (
	"context"
	"encoding/json"
	"io"
	"net/http"
	"net/http/httptest"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"testing"
)

// fakeOllama answers Ollama's API from a store of blobs it holds in memory,
// and records the requests it got.
type fakeOllama struct {
	mu      sync.Mutex
	blobs   map[string][]byte
	calls   []string
	create  map[string]any
	refuse  string // a path answered 400 {"error": "refused"}
	preload map[string]any
}

func (f *fakeOllama) ServeHTTP(w http.ResponseWriter, r *http.Request) {
	f.mu.Lock()
	defer f.mu.Unlock()
	f.calls = append(f.calls, r.Method+" "+r.URL.Path)
	if r.URL.Path == f.refuse {
		w.WriteHeader(http.StatusBadRequest)
		_, _ = io.WriteString(w, `{"error":"refused"}`)
		return
	}
	switch {
	case r.URL.Path == "/api/version":
		_, _ = io.WriteString(w, `{"version":"0.17.4"}`)
	case strings.HasPrefix(r.URL.Path, "/api/blobs/") && r.Method == http.MethodHead:
		if _, ok := f.blobs[strings.TrimPrefix(r.URL.Path, "/api/blobs/")]; !ok {
			w.WriteHeader(http.StatusNotFound)
		}
	case strings.HasPrefix(r.URL.Path, "/api/blobs/") && r.Method == http.MethodPost:
		b, _ := io.ReadAll(r.Body)
		f.blobs[strings.TrimPrefix(r.URL.Path, "/api/blobs/")] = b
		w.WriteHeader(http.StatusCreated)
	case r.URL.Path == "/api/create":
		_ = json.NewDecoder(r.Body).Decode(&f.create)
		_, _ = io.WriteString(w, `{"status":"success"}`)
	case r.URL.Path == "/api/generate":
		_ = json.NewDecoder(r.Body).Decode(&f.preload)
		_, _ = io.WriteString(w, `{"model":"m","response":"","done":true,"done_reason":"load"}`)
	default:
		http.NotFound(w, r)
	}
}

// setupAgainst runs a setup of a GGUF "m" against fake; the store's blobs
// folder cannot be made (a file is in its way), so the GGUF is uploaded.
func setupAgainst(t *testing.T, fake *fakeOllama) (gguf []byte, err error) {
	t.Helper()
	srv := httptest.NewServer(fake)
	defer srv.Close()
	dir := t.TempDir()
	path := filepath.Join(dir, "m.gguf")
	gguf = []byte("GGUF and some weights")
	if err := os.WriteFile(path, gguf, 0o644); err != nil {
		t.Fatal(err)
	}
	store := filepath.Join(dir, "store")
	if err := os.MkdirAll(store, 0o755); err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(filepath.Join(store, "blobs"), nil, 0o644); err != nil {
		t.Fatal(err)
	}
	it := &item{Entry: Entry{Name: "m", Path: path, Slots: 4, Ctx: 8192}}
	c := &ollamaClient{base: srv.URL, hc: srv.Client()}
	_, err = c.setup(context.Background(), &ollamaStore{}, store, it)
	return gguf, err
}

// Where the GGUF cannot be linked into Ollama's store it is uploaded, then
// the model is created from that blob with ctx tokens a slot, and
// preloaded to stay loaded.
func TestOllamaSetup_UploadsCreatesPreloads(t *testing.T) {
	fake := &fakeOllama{blobs: map[string][]byte{}}
	gguf, err := setupAgainst(t, fake)
	if err != nil {
		t.Fatal(err)
	}
	const digest = "sha256:"
	if len(fake.blobs) != 1 {
		t.Fatalf("blobs %v, want the GGUF uploaded once", fake.blobs)
	}
	var d string
	for k, v := range fake.blobs {
		d = k
		if string(v) != string(gguf) {
			t.Fatalf("uploaded %q, want the GGUF", v)
		}
	}
	if !strings.HasPrefix(d, digest) || len(d) != len(digest)+64 {
		t.Fatalf("blob named %q, want sha256:<64 hex>", d)
	}
	want := []string{"GET /api/version", "HEAD /api/blobs/" + d, "POST /api/blobs/" + d, "POST /api/create", "POST /api/generate"}
	if strings.Join(fake.calls, "\n") != strings.Join(want, "\n") {
		t.Fatalf("calls:\n%s\nwant:\n%s", strings.Join(fake.calls, "\n"), strings.Join(want, "\n"))
	}
	files, _ := fake.create["files"].(map[string]any)
	params, _ := fake.create["parameters"].(map[string]any)
	if fake.create["model"] != "m" || files["m.gguf"] != d || params["num_ctx"] != float64(8192) {
		t.Fatalf("create %v, want model m from %s with num_ctx 8192 (each slot's ctx)", fake.create, d)
	}
	if fake.preload["model"] != "m" || fake.preload["keep_alive"] != float64(-1) || fake.preload["prompt"] != nil {
		t.Fatalf("preload %v, want model m, keep_alive -1, no prompt", fake.preload)
	}
}

// Ollama's refusal at any step fails the setup with its words.
func TestOllamaSetup_RefusalSaysWhy(t *testing.T) {
	for path, want := range map[string]string{
		"/api/create":   "create model m in ollama: 400 Bad Request: refused",
		"/api/generate": "preload model m in ollama: 400 Bad Request: refused",
	} {
		t.Run(path, func(t *testing.T) {
			_, err := setupAgainst(t, &fakeOllama{blobs: map[string][]byte{}, refuse: path})
			if err == nil || err.Error() != want {
				t.Fatalf("setup = %v, want %q", err, want)
			}
		})
	}
	t.Run("nothing answers", func(t *testing.T) {
		fake := &fakeOllama{blobs: map[string][]byte{}}
		srv := httptest.NewServer(fake)
		srv.Close() // nothing answers: the wait for it ends with its context
		ctx, cancel := context.WithCancel(context.Background())
		cancel()
		c := &ollamaClient{base: srv.URL, hc: &http.Client{}}
		_, err := c.setup(ctx, &ollamaStore{}, t.TempDir(), &item{Entry: Entry{Name: "m", Path: "x", Slots: 1, Ctx: 1}})
		if err == nil || !strings.Contains(err.Error(), "wait for ollama to answer") {
			t.Fatalf("setup = %v, want the wait's end", err)
		}
	})
}
