// Package tenants reads the API keys file (--api-keys-file): each key is a
// tenant with a name, a priority class, a weight among its class, optional
// caps and the models it may use. The name, never the key, is what travels
// in lease requests, logs and metrics. Keys may be stored as their SHA-256,
// so the file need not be a secret store.
package tenants

import (
	"bytes"
	"context"
	"crypto/sha256"
	"encoding/hex"
	"errors"
	"fmt"
	"log/slog"
	"os"
	"path"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"github.com/pelletier/go-toml/v2"

	"github.com/rbee/rbee/wsapi"
)

// Priority classes, as the file names them; a batch tenant's requests carry
// Batch on the wire.
const (
	Interactive = "interactive"
	Batch       = wsapi.PriorityBatch
)

// Tenant is one API key's rules.
type Tenant struct {
	Name string
	// Class is Interactive or Batch.
	Class  string
	Weight float64
	// MaxConcurrent and PerMinute cap the key's requests waiting or running
	// at once, and sent per minute, cluster-wide; 0 is no cap.
	MaxConcurrent int
	PerMinute     int
	// Models are globs (MatchModel) of the models it may use; empty is
	// every model.
	Models []string
}

// Allows reports whether the tenant may use model.
func (t *Tenant) Allows(model string) bool {
	if t == nil || len(t.Models) == 0 {
		return true
	}
	for _, g := range t.Models {
		if MatchModel(g, model) {
			return true
		}
	}
	return false
}

// MatchModel reports whether model matches the glob g as a keys file means
// it: path.Match's syntax, but case-insensitive (model names are, as the
// scheduler matches them) and with * and ? matching / too, so that "*"
// and "qwen*" take "Qwen/Qwen2.5-7B" (hub names have a slash).
func MatchModel(g, model string) bool {
	// A / in either becomes a byte no name holds, which path.Match's
	// wildcards do match.
	slash := func(s string) string { return strings.ReplaceAll(strings.ToLower(s), "/", "\x01") }
	ok, _ := path.Match(slash(g), slash(model))
	return ok
}

// Scope names what the tenant's requests share with no other tenant's (their
// conversations): its name, or "" for requests without a tenant, which no
// tenant's name can be.
func (t *Tenant) Scope() string {
	if t == nil {
		return ""
	}
	return t.Name
}

// Table is a parsed keys file.
type Table struct {
	byHash map[[sha256.Size]byte]*Tenant
	names  []string
}

// Lookup is the tenant of key, nil when the key is not in the table. The
// key's hash is what is looked up, so no comparison of the key itself can
// leak it through timing.
func (t *Table) Lookup(key string) *Tenant {
	if t == nil || key == "" {
		return nil
	}
	return t.byHash[sha256.Sum256([]byte(key))]
}

// Names lists the tenants in file order.
func (t *Table) Names() []string { return t.names }

// entry is one [[key]] table as written.
type entry struct {
	Name              string   `toml:"name"`
	Key               string   `toml:"key"`
	SHA256            string   `toml:"sha256"`
	Priority          string   `toml:"priority"`
	Weight            *float64 `toml:"weight"`
	MaxConcurrent     int      `toml:"max_concurrent"`
	RequestsPerMinute int      `toml:"requests_per_minute"`
	Models            []string `toml:"models"`
}

// Parse reads a keys file:
//
//	[[key]]
//	name = "alice"
//	key = "sk-alice"          # or sha256 = "<hex of sha256(key)>"
//	priority = "interactive"  # or "batch"
//	weight = 2
//	max_concurrent = 8
//	requests_per_minute = 120
//	models = ["llama-*", "qwen2.5-*"]
//
// Errors name the entry and the field.
func Parse(data []byte) (*Table, error) {
	var doc struct {
		Key []entry `toml:"key"`
	}
	dec := toml.NewDecoder(bytes.NewReader(data))
	dec.DisallowUnknownFields()
	if err := dec.Decode(&doc); err != nil {
		var sm *toml.StrictMissingError
		if errors.As(err, &sm) {
			return nil, fmt.Errorf("unknown field: %s", strings.TrimSpace(sm.String()))
		}
		return nil, err
	}
	t := &Table{byHash: map[[sha256.Size]byte]*Tenant{}}
	seen := map[string]bool{}
	for i, e := range doc.Key {
		where := fmt.Sprintf("key %d", i+1)
		if e.Name != "" {
			where = fmt.Sprintf("key %d (%s)", i+1, e.Name)
		}
		ten, hash, err := e.tenant()
		if err != nil {
			return nil, fmt.Errorf("%s: %w", where, err)
		}
		if seen[ten.Name] {
			return nil, fmt.Errorf("%s: name %q used twice", where, ten.Name)
		}
		if _, dup := t.byHash[hash]; dup {
			return nil, fmt.Errorf("%s: the same key is listed twice", where)
		}
		seen[ten.Name] = true
		t.byHash[hash] = ten
		t.names = append(t.names, ten.Name)
	}
	return t, nil
}

func (e entry) tenant() (*Tenant, [sha256.Size]byte, error) {
	var hash [sha256.Size]byte
	if err := wsapi.ValidName(e.Name); err != nil {
		return nil, hash, fmt.Errorf("name: %w", err)
	}
	switch {
	case (e.Key == "") == (e.SHA256 == ""):
		return nil, hash, errors.New("give exactly one of key and sha256")
	case e.Key != "":
		if len(e.Key) < 8 {
			return nil, hash, errors.New("key shorter than 8 characters")
		}
		hash = sha256.Sum256([]byte(e.Key))
	default:
		b, err := hex.DecodeString(strings.ToLower(e.SHA256))
		if err != nil || len(b) != sha256.Size {
			return nil, hash, errors.New("sha256: want 64 hex digits (sha256sum of the key)")
		}
		copy(hash[:], b)
	}
	t := &Tenant{Name: e.Name, Class: Interactive, Weight: 1, MaxConcurrent: e.MaxConcurrent, PerMinute: e.RequestsPerMinute, Models: e.Models}
	switch e.Priority {
	case "", Interactive:
	case Batch:
		t.Class = Batch
	default:
		return nil, hash, fmt.Errorf("priority %q: want %q or %q", e.Priority, Interactive, Batch)
	}
	if e.Weight != nil {
		if w := *e.Weight; !(w > 0 && w <= 1000) {
			return nil, hash, fmt.Errorf("weight %v: want more than 0, at most 1000", w)
		}
		t.Weight = *e.Weight
	}
	if e.MaxConcurrent < 0 || e.RequestsPerMinute < 0 {
		return nil, hash, errors.New("max_concurrent and requests_per_minute must not be negative")
	}
	for _, g := range e.Models {
		if _, err := path.Match(g, ""); err != nil || g == "" {
			return nil, hash, fmt.Errorf("models: bad glob %q", g)
		}
	}
	return t, hash, nil
}

// File is the keys file a node serves by: read at start, read again when it
// changes (checked every 2 s) or on Reload (SIGHUP). A file that no longer
// parses keeps the last good table, and says why.
type File struct {
	path string
	log  *slog.Logger
	cur  atomic.Pointer[Table]

	mu      sync.Mutex
	modTime time.Time
	size    int64
}

// Open reads path; a file that cannot be read or parsed is an error.
func Open(path string, log *slog.Logger) (*File, error) {
	if log == nil {
		log = slog.New(slog.DiscardHandler)
	}
	f := &File{path: path, log: log}
	if err := f.Reload(); err != nil {
		return nil, err
	}
	return f, nil
}

// Table is the table in force.
func (f *File) Table() *Table { return f.cur.Load() }

// Reload reads the file again.
func (f *File) Reload() error {
	f.mu.Lock()
	defer f.mu.Unlock()
	st, err := os.Stat(f.path)
	if err == nil {
		f.modTime, f.size = st.ModTime(), st.Size()
	}
	data, err := os.ReadFile(f.path)
	if err != nil {
		return fmt.Errorf("api keys file: %w", err)
	}
	t, err := Parse(data)
	if err != nil {
		return fmt.Errorf("api keys file %s: %w", f.path, err)
	}
	f.cur.Store(t)
	f.log.Info("api keys loaded", "file", f.path, "keys", len(t.names))
	return nil
}

// Run reloads the file when it changes, until ctx ends.
func (f *File) Run(ctx context.Context) error {
	t := time.NewTicker(2 * time.Second)
	defer t.Stop()
	for {
		select {
		case <-ctx.Done():
			return nil
		case <-t.C:
		}
		st, err := os.Stat(f.path)
		if err != nil {
			continue
		}
		f.mu.Lock()
		changed := !st.ModTime().Equal(f.modTime) || st.Size() != f.size
		f.mu.Unlock()
		if changed {
			if err := f.Reload(); err != nil {
				f.log.Warn("api keys file changed but cannot be used; the previous keys stay in force", "err", err)
			}
		}
	}
}
