package models

import (
	"bytes"
	"context"
	"crypto/sha256"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net/http"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"time"
)

// The built-in ollama engine is `ollama serve` on the worker's port, told
// what to do by its environment, and then given the model through its HTTP
// API: Ollama serves only models it has created itself, from blobs in its
// own store (OLLAMA_MODELS). Once the server answers, the hive
//
//  1. puts the GGUF in the store as a blob named for its sha256: a hard
//     link when the store is on the file's file system (no copy of a
//     many-GB file), else an upload (POST /api/blobs/sha256:…), which
//     Ollama copies;
//  2. creates the model under the catalog name (POST /api/create, files:
//     the blob; parameters: num_ctx), so that the OpenAI requests the hive
//     routes, which name the model as the catalog does, find it; Ollama
//     reads the chat template from the GGUF's metadata;
//  3. preloads it (POST /api/generate with no prompt, keep_alive -1): it
//     answers once the weights are loaded, and the model stays loaded
//     until rbee stops the engine, since rbee unloads, not Ollama.
//
// The engine is ready when GET /api/ps lists the model (readiness.go).

// ollamaEnv is the environment of one `ollama serve`: its address, the store,
// the entry's slots and context, keep models loaded for ever, one model per
// server, no pruning of the shared store at start (another server of this
// hive may be creating a model in it), and rbee's load timeout rather than
// Ollama's.
func ollamaEnv(it *item, port, store string, loadTimeout time.Duration) []string {
	return []string{
		"OLLAMA_HOST=127.0.0.1:" + port,
		"OLLAMA_MODELS=" + store,
		"OLLAMA_NUM_PARALLEL=" + strconv.Itoa(it.Slots),
		"OLLAMA_CONTEXT_LENGTH=" + strconv.Itoa(ollamaNumCtx(it)),
		"OLLAMA_KEEP_ALIVE=-1",
		"OLLAMA_MAX_LOADED_MODELS=1",
		"OLLAMA_NOPRUNE=1",
		"OLLAMA_LOAD_TIMEOUT=" + loadTimeout.String(),
	}
}

// ollamaNumCtx is Ollama's num_ctx for it: Ollama gives each of its
// parallel slots num_ctx tokens, and an entry's ctx is each slot's (as
// vLLM's --max-model-len; llama-server gets ctx x slots as -c), so that the
// KV cache (and the VRAM estimate) is the same whichever engine serves it.
func ollamaNumCtx(it *item) int {
	return max(it.Ctx, 1)
}

// ollamaStore is where a hive's Ollama servers keep their models, and the
// digests of the GGUFs it has put there.
type ollamaStore struct {
	mu      sync.Mutex
	dir     string // "" until the first start
	temp    bool   // dir was made for this hive and goes with it
	digests map[string]fileDigest
}

// fileDigest is the sha256 of a file as it was when hashed.
type fileDigest struct {
	size   int64
	mtime  time.Time
	digest string // "sha256:<hex>"
}

// path is the store's folder: cfgDir when given (under --data-dir, so that
// the blobs outlive the hive), else a temporary folder removed by Close.
func (s *ollamaStore) path(cfgDir string) (string, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.dir != "" {
		return s.dir, nil
	}
	if cfgDir != "" {
		if err := os.MkdirAll(cfgDir, 0o755); err != nil {
			return "", fmt.Errorf("make ollama models folder: %w", err)
		}
		s.dir = cfgDir
		return s.dir, nil
	}
	dir, err := os.MkdirTemp("", "rbee-ollama-")
	if err != nil {
		return "", fmt.Errorf("make ollama models folder: %w", err)
	}
	s.dir, s.temp = dir, true
	return dir, nil
}

// close removes a temporary store.
func (s *ollamaStore) close() error {
	s.mu.Lock()
	defer s.mu.Unlock()
	if !s.temp {
		return nil
	}
	dir := s.dir
	s.dir, s.temp = "", false
	if err := os.RemoveAll(dir); err != nil {
		return fmt.Errorf("remove ollama models folder: %w", err)
	}
	return nil
}

// digest is path's sha256, hashed once per size and modification time: a
// GGUF of many GB takes seconds to read.
func (s *ollamaStore) digest(ctx context.Context, path string) (string, error) {
	fi, err := os.Stat(path)
	if err != nil {
		return "", fmt.Errorf("hash model file: %w", err)
	}
	s.mu.Lock()
	d, ok := s.digests[path]
	s.mu.Unlock()
	if ok && d.size == fi.Size() && d.mtime.Equal(fi.ModTime()) {
		return d.digest, nil
	}
	f, err := os.Open(path)
	if err != nil {
		return "", fmt.Errorf("hash model file: %w", err)
	}
	defer f.Close()
	h := sha256.New()
	if _, err := io.Copy(h, ctxReader{ctx, f}); err != nil {
		return "", fmt.Errorf("hash model file %s: %w", path, err)
	}
	sum := "sha256:" + hex.EncodeToString(h.Sum(nil))
	s.mu.Lock()
	if s.digests == nil {
		s.digests = map[string]fileDigest{}
	}
	s.digests[path] = fileDigest{size: fi.Size(), mtime: fi.ModTime(), digest: sum}
	s.mu.Unlock()
	return sum, nil
}

// ctxReader stops a long read (hashing, uploading) when ctx ends.
type ctxReader struct {
	ctx context.Context
	r   io.Reader
}

func (c ctxReader) Read(p []byte) (int, error) {
	if err := c.ctx.Err(); err != nil {
		return 0, err
	}
	return c.r.Read(p)
}

// ollamaClient speaks to one `ollama serve`.
type ollamaClient struct {
	base string       // http://127.0.0.1:port
	hc   *http.Client // no timeout: a preload lasts as long as the load; ctx ends it
}

// ollamaLoaded is how long the steps of a setup took.
type ollamaLoaded struct {
	Create  time.Duration // from the server's first answer to the model created
	Preload time.Duration // the preload request: Ollama loading the weights
}

// setup waits for the server to answer, then puts the GGUF in the store,
// creates the model and preloads it (see the top of this file).
func (c *ollamaClient) setup(ctx context.Context, store *ollamaStore, storeDir string, it *item) (ollamaLoaded, error) {
	if err := c.waitUp(ctx); err != nil {
		return ollamaLoaded{}, err
	}
	up := time.Now()
	digest, err := store.digest(ctx, it.Path)
	if err != nil {
		return ollamaLoaded{}, err
	}
	if err := c.putBlob(ctx, storeDir, it.Path, digest); err != nil {
		return ollamaLoaded{}, err
	}
	create := map[string]any{
		"model":      it.Name,
		"files":      map[string]string{filepath.Base(it.Path): digest},
		"parameters": map[string]any{"num_ctx": ollamaNumCtx(it)},
		"stream":     false,
	}
	if err := c.post(ctx, "/api/create", create, nil); err != nil {
		return ollamaLoaded{}, fmt.Errorf("create model %s in ollama: %w", it.Name, err)
	}
	created := time.Now()
	// Ollama's answer to a preload says no load_duration; its log says
	// "llama runner started in …".
	if err := c.post(ctx, "/api/generate", map[string]any{"model": it.Name, "keep_alive": -1}, nil); err != nil {
		return ollamaLoaded{}, fmt.Errorf("preload model %s in ollama: %w", it.Name, err)
	}
	return ollamaLoaded{Create: created.Sub(up), Preload: time.Since(created)}, nil
}

// Ollama's server answers within ~0.1 s of its start, whatever the model:
// asked this often for its first seconds, the wait adds little to a cold
// start, at a few hundred cheap requests; then as often as readiness.
const (
	ollamaUpPoll    = 5 * time.Millisecond
	ollamaUpPollFor = 2 * time.Second
)

// waitUp polls GET /api/version until the server answers 200.
func (c *ollamaClient) waitUp(ctx context.Context) error {
	start := time.Now()
	t := time.NewTimer(0)
	defer t.Stop()
	for {
		select {
		case <-ctx.Done():
			return fmt.Errorf("wait for ollama to answer: %w", ctx.Err())
		case <-t.C:
		}
		if code, _, err := c.get(ctx, "/api/version"); err == nil && code == http.StatusOK {
			return nil
		}
		if time.Since(start) < ollamaUpPollFor {
			t.Reset(ollamaUpPoll)
		} else {
			t.Reset(pollFast)
		}
	}
}

// putBlob makes digest a blob of the store: a hard link to path when the
// store is on its file system, else an upload.
func (c *ollamaClient) putBlob(ctx context.Context, storeDir, path, digest string) error {
	if c.hasBlob(ctx, digest) {
		return nil
	}
	blobs := filepath.Join(storeDir, "blobs")
	if os.MkdirAll(blobs, 0o755) == nil {
		// Ollama names a blob sha256-<hex>; it checks only that it is
		// there, and serves it from there.
		if os.Link(path, filepath.Join(blobs, strings.Replace(digest, ":", "-", 1))) == nil && c.hasBlob(ctx, digest) {
			return nil
		}
	}
	f, err := os.Open(path)
	if err != nil {
		return fmt.Errorf("upload model file to ollama: %w", err)
	}
	defer f.Close()
	req, err := http.NewRequestWithContext(ctx, http.MethodPost, c.base+"/api/blobs/"+digest, ctxReader{ctx, f})
	if err != nil {
		return fmt.Errorf("upload model file to ollama: %w", err)
	}
	if fi, err := f.Stat(); err == nil {
		req.ContentLength = fi.Size()
	}
	resp, err := c.hc.Do(req)
	if err != nil {
		return fmt.Errorf("upload model file to ollama: %w", err)
	}
	defer resp.Body.Close()
	if resp.StatusCode/100 != 2 {
		return fmt.Errorf("upload model file to ollama: %w", apiError(resp))
	}
	return nil
}

func (c *ollamaClient) hasBlob(ctx context.Context, digest string) bool {
	req, err := http.NewRequestWithContext(ctx, http.MethodHead, c.base+"/api/blobs/"+digest, nil)
	if err != nil {
		return false
	}
	resp, err := c.hc.Do(req)
	if err != nil {
		return false
	}
	resp.Body.Close()
	return resp.StatusCode == http.StatusOK
}

// post sends body as JSON and decodes a 200 answer into out (when not nil).
func (c *ollamaClient) post(ctx context.Context, path string, body, out any) error {
	b, err := json.Marshal(body)
	if err != nil {
		return err
	}
	req, err := http.NewRequestWithContext(ctx, http.MethodPost, c.base+path, bytes.NewReader(b))
	if err != nil {
		return err
	}
	req.Header.Set("Content-Type", "application/json")
	resp, err := c.hc.Do(req)
	if err != nil {
		return err
	}
	defer resp.Body.Close()
	if resp.StatusCode != http.StatusOK {
		return apiError(resp)
	}
	if out == nil {
		_, _ = io.Copy(io.Discard, io.LimitReader(resp.Body, 1<<20))
		return nil
	}
	if err := json.NewDecoder(io.LimitReader(resp.Body, 1<<20)).Decode(out); err != nil {
		return fmt.Errorf("read answer of %s: %w", path, err)
	}
	return nil
}

func (c *ollamaClient) get(ctx context.Context, path string) (int, []byte, error) {
	req, err := http.NewRequestWithContext(ctx, http.MethodGet, c.base+path, nil)
	if err != nil {
		return 0, nil, err
	}
	resp, err := c.hc.Do(req)
	if err != nil {
		return 0, nil, err
	}
	defer resp.Body.Close()
	b, err := io.ReadAll(io.LimitReader(resp.Body, 1<<20))
	return resp.StatusCode, b, err
}

// apiError is an Ollama error answer: {"error": "..."} with its status.
func apiError(resp *http.Response) error {
	b, _ := io.ReadAll(io.LimitReader(resp.Body, 64<<10))
	var e struct {
		Error string `json:"error"`
	}
	if json.Unmarshal(b, &e) == nil && e.Error != "" {
		return fmt.Errorf("%s: %s", resp.Status, e.Error)
	}
	if s := strings.TrimSpace(string(b)); s != "" {
		return fmt.Errorf("%s: %s", resp.Status, clean(s, 200))
	}
	return errors.New(resp.Status)
}

// ollamaLists says whether an /api/ps answer lists model (Ollama adds the
// tag ":latest" to a name without one).
func ollamaLists(ps []byte, model string) bool {
	var list struct {
		Models []struct {
			Name  string `json:"name"`
			Model string `json:"model"`
		} `json:"models"`
	}
	if json.Unmarshal(ps, &list) != nil {
		return false
	}
	for _, m := range list.Models {
		for _, n := range []string{m.Name, m.Model} {
			if strings.EqualFold(n, model) || strings.EqualFold(n, model+":latest") {
				return true
			}
		}
	}
	return false
}
