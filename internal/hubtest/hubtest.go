// Package hubtest is a Hugging Face-compatible model hub for tests: the
// tree API with LFS digests, /resolve/ URLs that redirect to a CDN path
// (Range, ETag) as the real hub's do, a token when asked for, and faults on
// demand (a refusal, a connection cut mid-file, a corrupt byte).
package hubtest

import (
	"bytes"
	"crypto/sha1"
	"crypto/sha256"
	"encoding/hex"
	"encoding/json"
	"fmt"
	"net/http"
	"net/http/httptest"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"
)

// Hub is the test hub.
type Hub struct {
	srv *httptest.Server

	mu      sync.Mutex
	repos   map[string][]*file // repo -> files in order
	token   string
	cut     map[string]int64 // path -> bytes after which the next download breaks
	corrupt map[string]int64 // path -> offset served wrong once
	fail    map[string]int   // path (or "tree") -> status answered once
	served  map[string]*atomic.Int64
}

type file struct {
	path   string
	data   []byte
	lfs    bool
	sha256 string
	sha1   string
}

// New starts a hub, closed when tb ends.
func New(tb testing.TB) *Hub {
	h := &Hub{repos: map[string][]*file{}, cut: map[string]int64{}, corrupt: map[string]int64{}, fail: map[string]int{},
		served: map[string]*atomic.Int64{}}
	h.srv = httptest.NewServer(http.HandlerFunc(h.serve))
	tb.Cleanup(h.srv.Close)
	return h
}

// URL is the hub's base URL (what HF_ENDPOINT would be).
func (h *Hub) URL() string { return h.srv.URL }

// Add puts a file in repo (ORG/NAME); lfs says whether the hub keeps it in
// LFS (then the tree gives its SHA-256), as it does model weights.
func (h *Hub) Add(repo, path string, data []byte, lfs bool) {
	f := &file{path: path, data: data, lfs: lfs}
	s := sha256.Sum256(data)
	f.sha256 = hex.EncodeToString(s[:])
	b := sha1.New()
	fmt.Fprintf(b, "blob %d\x00", len(data))
	b.Write(data)
	f.sha1 = hex.EncodeToString(b.Sum(nil))
	h.mu.Lock()
	h.repos[repo] = append(h.repos[repo], f)
	h.served[path] = new(atomic.Int64)
	h.mu.Unlock()
}

// RequireToken makes every request need Authorization: Bearer tok.
func (h *Hub) RequireToken(tok string) { h.mu.Lock(); h.token = tok; h.mu.Unlock() }

// CutOnce breaks the next download of path after n bytes.
func (h *Hub) CutOnce(path string, n int64) { h.mu.Lock(); h.cut[path] = n; h.mu.Unlock() }

// CorruptOnce serves the byte at off of path wrong in its next download.
func (h *Hub) CorruptOnce(path string, off int64) { h.mu.Lock(); h.corrupt[path] = off; h.mu.Unlock() }

// FailOnce answers the next request for path ("tree" for the listing) with
// status.
func (h *Hub) FailOnce(path string, status int) { h.mu.Lock(); h.fail[path] = status; h.mu.Unlock() }

// Served is how many bytes of path the hub has sent.
func (h *Hub) Served(path string) int64 {
	h.mu.Lock()
	defer h.mu.Unlock()
	if c := h.served[path]; c != nil {
		return c.Load()
	}
	return 0
}

func (h *Hub) failOnce(key string) int {
	h.mu.Lock()
	defer h.mu.Unlock()
	st := h.fail[key]
	delete(h.fail, key)
	return st
}

func (h *Hub) serve(w http.ResponseWriter, r *http.Request) {
	h.mu.Lock()
	tok := h.token
	h.mu.Unlock()
	cdn := strings.HasPrefix(r.URL.Path, "/cdn/")
	if tok != "" && !cdn && r.Header.Get("Authorization") != "Bearer "+tok {
		http.Error(w, `{"error":"Invalid credentials in Authorization header"}`, http.StatusUnauthorized)
		return
	}
	parts := strings.Split(strings.TrimPrefix(r.URL.Path, "/"), "/")
	switch {
	case len(parts) >= 6 && parts[0] == "api" && parts[1] == "models" && parts[4] == "tree":
		if st := h.failOnce("tree"); st != 0 {
			w.Header().Set("Retry-After", "7")
			http.Error(w, http.StatusText(st), st)
			return
		}
		h.tree(w, parts[2]+"/"+parts[3])
	case len(parts) >= 5 && parts[2] == "resolve":
		repo, path := parts[0]+"/"+parts[1], strings.Join(parts[4:], "/")
		if h.find(repo, path) == nil {
			http.Error(w, "Entry not found", http.StatusNotFound)
			return
		}
		// As the hub does for LFS files: to a CDN, which takes no token.
		w.Header().Set("X-Linked-Size", "")
		http.Redirect(w, r, "/cdn/"+repo+"/"+path, http.StatusFound)
	case cdn && len(parts) >= 4:
		h.download(w, r, parts[1]+"/"+parts[2], strings.Join(parts[3:], "/"))
	default:
		http.NotFound(w, r)
	}
}

func (h *Hub) find(repo, path string) *file {
	h.mu.Lock()
	defer h.mu.Unlock()
	for _, f := range h.repos[repo] {
		if f.path == path {
			return f
		}
	}
	return nil
}

func (h *Hub) tree(w http.ResponseWriter, repo string) {
	h.mu.Lock()
	files := h.repos[repo]
	h.mu.Unlock()
	if files == nil {
		http.Error(w, `{"error":"Repository not found"}`, http.StatusNotFound)
		return
	}
	type lfs struct {
		OID         string `json:"oid"`
		Size        int    `json:"size"`
		PointerSize int    `json:"pointerSize"`
	}
	type entry struct {
		Type string `json:"type"`
		OID  string `json:"oid"`
		Size int    `json:"size"`
		Path string `json:"path"`
		LFS  *lfs   `json:"lfs,omitempty"`
	}
	var out []entry
	dirs := map[string]bool{}
	for _, f := range files {
		if i := strings.LastIndexByte(f.path, '/'); i > 0 && !dirs[f.path[:i]] {
			dirs[f.path[:i]] = true
			out = append(out, entry{Type: "directory", OID: strings.Repeat("0", 40), Path: f.path[:i]})
		}
		e := entry{Type: "file", OID: f.sha1, Size: len(f.data), Path: f.path}
		if f.lfs {
			e.OID = strings.Repeat("a", 40) // the pointer file's blob
			e.LFS = &lfs{OID: f.sha256, Size: len(f.data), PointerSize: 134}
			e.Size = len(f.data)
		}
		out = append(out, e)
	}
	w.Header().Set("Content-Type", "application/json")
	_ = json.NewEncoder(w).Encode(out)
}

func (h *Hub) download(w http.ResponseWriter, r *http.Request, repo, path string) {
	f := h.find(repo, path)
	if f == nil {
		http.NotFound(w, r)
		return
	}
	if st := h.failOnce(path); st != 0 {
		w.Header().Set("Retry-After", "7")
		http.Error(w, http.StatusText(st), st)
		return
	}
	h.mu.Lock()
	data := f.data
	if off, ok := h.corrupt[path]; ok {
		data = bytes.Clone(data)
		data[off] ^= 0xff
		delete(h.corrupt, path)
	}
	cut, cutting := h.cut[path]
	delete(h.cut, path)
	counter := h.served[path]
	h.mu.Unlock()
	w.Header().Set("ETag", `"`+f.sha256+`"`)
	cw := &countWriter{ResponseWriter: w, n: counter, cut: -1}
	if cutting {
		cw.cut = cut
	}
	http.ServeContent(cw, r, "", time.Time{}, bytes.NewReader(data))
}

// countWriter counts what a download sends and breaks it after cut bytes
// (cut < 0: never).
type countWriter struct {
	http.ResponseWriter
	n    *atomic.Int64
	sent int64
	cut  int64
}

func (c *countWriter) Write(b []byte) (int, error) {
	if c.cut >= 0 && c.sent+int64(len(b)) > c.cut {
		k, _ := c.ResponseWriter.Write(b[:c.cut-c.sent])
		c.n.Add(int64(k))
		c.ResponseWriter.(http.Flusher).Flush()
		panic(http.ErrAbortHandler)
	}
	k, err := c.ResponseWriter.Write(b)
	c.sent += int64(k)
	c.n.Add(int64(k))
	return k, err
}
