package models

// A model's files, as a hive offers them to its peers: each with its size and
// SHA-256, which is computed once per file version (path, size, modification
// time) and kept in Config.DigestFile, so that a 40 GB file is read once, not
// at every request.

import (
	"crypto/sha256"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"io/fs"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"sync"
	"time"
)

// ModelFile is one file of a model: its path relative to the model (the
// file's own name for a one-file model), size and SHA-256 (hex), and the
// SHA-256 of each BlockSize block, so that a copy checks each range it
// fetched (from whichever peer) and fetches again only a bad one.
type ModelFile struct {
	Path      string   `json:"path"`
	Size      int64    `json:"size"`
	SHA256    string   `json:"sha256"`
	BlockSize int64    `json:"block_size"`
	Blocks    []string `json:"blocks"`
}

// BlockSize is the span each block digest covers: small enough that a
// copy stopped mid-way loses little (a 40 GB file has 10,240 blocks,
// some 700 KB of digests).
const BlockSize = 4 << 20

// ErrNoModel is wrapped by Files and Open for a name the catalog lacks.
var ErrNoModel = errors.New("no such model in this hive's catalog")

// Files lists model name's files with their digests, hashing those not
// hashed before (which may take a while for a large file; concurrent
// callers share one hashing).
func (m *Manager) Files(name string) ([]ModelFile, error) {
	root, err := m.modelPath(name)
	if err != nil {
		return nil, err
	}
	paths, err := modelFiles(root)
	if err != nil {
		return nil, fmt.Errorf("model %s: %w", name, err)
	}
	out := make([]ModelFile, 0, len(paths))
	folder := isDir(root)
	for _, rel := range paths {
		full := root
		if folder {
			full = filepath.Join(root, rel)
		}
		d, err := m.digests().sum(full)
		if err != nil {
			return nil, fmt.Errorf("model %s: %w", name, err)
		}
		out = append(out, ModelFile{Path: rel, Size: d.Size, SHA256: d.SHA256, BlockSize: BlockSize, Blocks: d.Blocks})
	}
	return out, nil
}

// Open opens file rel of model name, one that Files lists: a peer's path
// never reaches outside the model.
func (m *Manager) Open(name, rel string) (*os.File, error) {
	root, err := m.modelPath(name)
	if err != nil {
		return nil, err
	}
	paths, err := modelFiles(root)
	if err != nil {
		return nil, fmt.Errorf("model %s: %w", name, err)
	}
	if !slices.Contains(paths, rel) {
		return nil, fmt.Errorf("model %s has no file %q: %w", name, rel, fs.ErrNotExist)
	}
	if !isDir(root) {
		return os.Open(root)
	}
	return os.Open(filepath.Join(root, rel))
}

func (m *Manager) modelPath(name string) (string, error) {
	m.mu.Lock()
	defer m.mu.Unlock()
	for _, it := range m.items {
		if it.Name == name && it.Path != "" {
			return it.Path, nil
		}
	}
	return "", fmt.Errorf("%w: %q", ErrNoModel, name)
}

func isDir(p string) bool {
	fi, err := os.Stat(p)
	return err == nil && fi.IsDir()
}

// modelFiles lists a model's regular files relative to it: a file model is
// its own name; a folder's files are walked, links to files followed (a
// Hugging Face snapshot is links to blobs), links to folders not.
func modelFiles(root string) ([]string, error) {
	fi, err := os.Stat(root)
	if err != nil {
		return nil, err
	}
	if !fi.IsDir() {
		return []string{filepath.Base(root)}, nil
	}
	var out []string
	err = filepath.WalkDir(root, func(p string, d fs.DirEntry, err error) error {
		if err != nil {
			return err
		}
		if d.IsDir() {
			if p != root && strings.HasPrefix(d.Name(), ".") {
				return filepath.SkipDir
			}
			return nil
		}
		if strings.HasPrefix(d.Name(), ".") {
			return nil
		}
		st, err := os.Stat(p) // follows a link
		if err != nil || !st.Mode().IsRegular() {
			return nil
		}
		rel, err := filepath.Rel(root, p)
		if err != nil {
			return err
		}
		out = append(out, filepath.ToSlash(rel))
		return nil
	})
	return out, err
}

// digestCache remembers each file version's SHA-256.
type digestCache struct {
	file string // "" keeps them in memory only

	mu      sync.Mutex
	entries map[string]digestEntry
	running map[string]*digestRun
}

type digestEntry struct {
	Size    int64     `json:"size"`
	ModTime time.Time `json:"mod_time"`
	SHA256  string    `json:"sha256"`
	Blocks  []string  `json:"blocks"`
}

type digestRun struct {
	done chan struct{}
	d    digestEntry
	err  error
}

func (m *Manager) digests() *digestCache {
	m.digestOnce.Do(func() {
		c := &digestCache{file: m.cfg.DigestFile, entries: map[string]digestEntry{}, running: map[string]*digestRun{}}
		if c.file != "" {
			if b, err := os.ReadFile(c.file); err == nil {
				_ = json.Unmarshal(b, &c.entries) // a bad file is hashed again
			}
		}
		m.digestC = c
	})
	return m.digestC
}

// sum returns path's digests, from the cache when the file has not changed
// since it was hashed.
func (c *digestCache) sum(path string) (digestEntry, error) {
	fi, err := os.Stat(path)
	if err != nil {
		return digestEntry{}, err
	}
	c.mu.Lock()
	if e, ok := c.entries[path]; ok && e.Size == fi.Size() && e.ModTime.Equal(fi.ModTime()) && len(e.Blocks) == blocksOf(e.Size) {
		c.mu.Unlock()
		return e, nil
	}
	run := c.running[path]
	if run == nil {
		run = &digestRun{done: make(chan struct{})}
		c.running[path] = run
		c.mu.Unlock()
		run.d, run.err = hashFile(path)
		run.d.ModTime = fi.ModTime()
		c.mu.Lock()
		delete(c.running, path)
		if run.err == nil {
			c.entries[path] = run.d
			c.saveLocked()
		}
		close(run.done)
	}
	c.mu.Unlock()
	<-run.done
	return run.d, run.err
}

// blocksOf is how many BlockSize blocks a file of size bytes has (one for
// an empty file).
func blocksOf(size int64) int { return int(max((size+BlockSize-1)/BlockSize, 1)) }

func (c *digestCache) saveLocked() {
	if c.file == "" {
		return
	}
	b, err := json.Marshal(c.entries)
	if err != nil {
		return
	}
	tmp := c.file + ".tmp"
	if os.WriteFile(tmp, b, 0o600) == nil {
		_ = os.Rename(tmp, c.file)
	}
}

// hashFile reads path once for its SHA-256 and its blocks'.
func hashFile(path string) (digestEntry, error) {
	f, err := os.Open(path)
	if err != nil {
		return digestEntry{}, err
	}
	defer f.Close()
	whole := sha256.New()
	buf := make([]byte, 1<<20)
	var d digestEntry
	for {
		block := sha256.New()
		n, err := io.CopyBuffer(io.MultiWriter(whole, block), io.LimitReader(f, BlockSize), buf)
		if err != nil {
			return digestEntry{}, fmt.Errorf("hash %s: %w", path, err)
		}
		if n > 0 || d.Size == 0 && len(d.Blocks) == 0 {
			d.Blocks = append(d.Blocks, hex.EncodeToString(block.Sum(nil)))
		}
		d.Size += n
		if n < BlockSize {
			break
		}
	}
	d.SHA256 = hex.EncodeToString(whole.Sum(nil))
	return d, nil
}

// knownDigest is path's SHA-256 when the cache holds it for the file as it
// is now, "" otherwise (a report never hashes).
func (m *Manager) knownDigest(path string) string {
	if path == "" {
		return ""
	}
	fi, err := os.Stat(path)
	if err != nil || fi.IsDir() {
		return ""
	}
	c := m.digests()
	c.mu.Lock()
	defer c.mu.Unlock()
	if e, ok := c.entries[path]; ok && e.Size == fi.Size() && e.ModTime.Equal(fi.ModTime()) {
		return e.SHA256
	}
	return ""
}
