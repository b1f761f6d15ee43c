package models

import (
	"cmp"
	"context"
	"errors"
	"fmt"
	"maps"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"time"

	"github.com/rbee/rbee/node/hive/modeldir"
	"github.com/rbee/rbee/wsapi"
)

// ErrNoModelsDir is returned for a copy into a hive without --models-dir.
var ErrNoModelsDir = fmt.Errorf("this hive has no --models-dir to copy models into")

// ModelsDir is the folder copies go into, "" when the hive takes none.
func (m *Manager) ModelsDir() string { return m.cfg.ModelsDir }

// Has reports whether the catalog has a model called name.
func (m *Manager) Has(name string) bool {
	m.mu.Lock()
	defer m.mu.Unlock()
	for _, it := range m.items {
		if it.Name == name {
			return true
		}
	}
	return false
}

// AddCopied adds to the catalog the model a copy put at path in the models
// folder, served by engine with slots and ctx as the hive it came from
// serves it (the scan's defaults where they are zero). It is checked as a
// --models-dir entry is at start-up: a missing engine binary leaves it
// listed as unavailable, with why.
func (m *Manager) AddCopied(name, path, engine string, slots, ctx int) error {
	if m.cfg.ModelsDir == "" {
		return ErrNoModelsDir
	}
	if rel, err := filepath.Rel(m.cfg.ModelsDir, path); err != nil || strings.HasPrefix(rel, "..") || strings.Contains(rel, string(filepath.Separator)) {
		return fmt.Errorf("model %s: %s is not in the models folder %s", name, path, m.cfg.ModelsDir)
	}
	found, err := ScanModelsDir(m.cfg.ModelsDir)
	if err != nil {
		return err
	}
	var e *Entry
	for i := range found {
		if found[i].Path == path {
			e = &found[i]
		}
	}
	if e == nil {
		return fmt.Errorf("model %s: the models folder has no model at %s", name, path)
	}
	e.Name = name
	if engine != "" {
		e.Engine = engine
	}
	if slots > 0 {
		e.Slots = slots
	}
	if ctx > 0 {
		e.Ctx = ctx
	}
	it := m.newItem(*e)
	m.mu.Lock()
	for _, have := range m.items {
		if have.Name == name {
			m.mu.Unlock()
			return fmt.Errorf("model %s is in the catalog already", name)
		}
	}
	m.items = append(m.items, it)
	m.mu.Unlock()
	if it.unavailable != "" {
		m.log.Warn("copied model cannot start on this hive", "model", name, "reason", it.unavailable)
	}
	m.notify()
	return nil
}

// CopyEngines are the engines this hive can serve a copied model with: none
// without a models folder or a way to copy.
func (m *Manager) CopyEngines() []string {
	if m.cfg.ModelsDir == "" || m.cfg.CopyModel == nil {
		return nil
	}
	var out []string
	for _, name := range slices.Sorted(maps.Keys(m.cfg.Engines)) {
		if m.cfg.Engines[name].Missing == "" {
			out = append(out, name)
		}
	}
	return out
}

// toCopyLocked is the catalog item a start that copies the model first
// works on: it (a copy that failed before) or a new one, listed at once so
// that the queen counts the copy's failures against this hive. Nil when ms
// asks for no copy or this hive cannot make one.
func (m *Manager) toCopyLocked(it *item, ms *wsapi.ModelStart) *item {
	c := ms.Copy
	if c == nil || m.cfg.ModelsDir == "" || m.cfg.CopyModel == nil || m.cfg.Engines[c.Engine] == nil {
		return nil
	}
	if it == nil {
		e := Entry{Name: ms.Model, Engine: c.Engine, Slots: max(c.Slots, 1), Ctx: cmp.Or(c.Ctx, DefaultCtx), VRAMMB: ms.VRAMMB}
		it = &item{Entry: e, engine: m.cfg.Engines[c.Engine]}
		m.items = append(m.items, it)
	}
	it.copyFrom = slices.Clone(c.From)
	return it
}

// copyIn copies it's files before its engine starts, with a worker record
// in the loading state (so the queen knows the start is under way, and
// clients hear its progress); false when the copy failed (counted as a
// failed start) or the hive stops.
func (m *Manager) copyIn(it *item, ms *wsapi.ModelStart, queen string, start time.Time) bool {
	inst := strings.Map(func(r rune) rune {
		if r >= 'a' && r <= 'z' || r >= 'A' && r <= 'Z' || r >= '0' && r <= '9' || r == '-' || r == '.' {
			return r
		}
		return '-'
	}, "copy-"+ms.StartID)
	w := &worker{instance: inst, it: it, state: wsapi.ManagedLoading, since: start, gpus: ms.GPUs,
		vramMB: ms.VRAMMB, startID: ms.StartID, startedBy: queen, stopCh: make(chan struct{}), exited: make(chan struct{}),
		stage: "copying"}
	m.mu.Lock()
	from := slices.Clone(it.copyFrom)
	m.workers[w.instance] = w
	m.mu.Unlock()
	m.notify()
	defer func() {
		m.mu.Lock()
		if m.workers[w.instance] == w {
			delete(m.workers, w.instance)
		}
		m.mu.Unlock()
		close(w.exited)
	}()
	ctx, cancel := context.WithCancel(m.ctx)
	defer cancel()
	go func() {
		select {
		case <-w.stopCh:
			cancel()
		case <-ctx.Done():
		}
	}()
	m.log.Info("copying a model from other hives before starting it", "model", it.Name, "from", from, "queen", queen)
	path, err := m.cfg.CopyModel(ctx, it.Name, from, func(done, total int64, rate float64) {
		stage := fmt.Sprintf("copying %.0f%% of %s", 100*float64(done)/float64(max(total, 1)), modeldir.Size(total))
		if rate > 0 {
			stage += fmt.Sprintf(" at %s/s, eta %s", modeldir.Size(int64(rate)), (time.Duration(float64(total-done)/rate) * time.Second).Round(time.Second))
		}
		m.mu.Lock()
		w.stage = stage
		m.mu.Unlock()
	})
	if err != nil {
		if m.ctx.Err() != nil {
			return false
		}
		m.fail(it, w, start, "failed", "copy from "+strings.Join(from, ", ")+": "+err.Error())
		return false
	}
	// The files are here: the item is what a --models-dir entry is.
	fresh := m.newItem(Entry{Name: it.Name, Path: path, Engine: it.Engine, Slots: it.Slots, Ctx: it.Ctx, VRAMMB: it.VRAMMB})
	m.mu.Lock()
	it.Path, it.bytes, it.facts, it.unavailable, it.copyFrom = path, fresh.bytes, fresh.facts, fresh.unavailable, nil
	unavailable := it.unavailable
	m.mu.Unlock()
	if unavailable != "" {
		m.fail(it, w, start, "failed", unavailable)
		return false
	}
	m.log.Info("model copied", "model", it.Name, "path", path, "bytes", fresh.bytes, "took", time.Since(start).Round(time.Millisecond))
	return true
}

// ModelsDirFree is the models folder's free space in bytes, 0 without one
// (or when it cannot be read).
func (m *Manager) ModelsDirFree() uint64 {
	if m.cfg.ModelsDir == "" {
		return 0
	}
	free, err := modeldir.Free(m.cfg.ModelsDir)
	if err != nil {
		return 0
	}
	return uint64(free)
}

// ErrRunning is wrapped by RemoveLocal for a model a worker serves.
var ErrRunning = errors.New("a worker runs it")

// RemoveLocal takes a model that lives in the models folder out of the
// catalog and deletes its file or folder; it refuses one a worker runs or
// starts, or one from elsewhere (--model), which is not rbee's to delete.
func (m *Manager) RemoveLocal(name string) (string, error) {
	m.mu.Lock()
	var it *item
	i := slices.IndexFunc(m.items, func(c *item) bool { return c.Name == name })
	if i >= 0 {
		it = m.items[i]
	}
	switch {
	case it == nil:
		m.mu.Unlock()
		return "", fmt.Errorf("%w: %q", ErrNoModel, name)
	case m.cfg.ModelsDir == "" || it.Path == "" || filepath.Dir(it.Path) != filepath.Clean(m.cfg.ModelsDir):
		m.mu.Unlock()
		return "", fmt.Errorf("model %s is not in this hive's --models-dir: only those are removed", name)
	}
	for _, w := range m.workers {
		if w.it == it {
			m.mu.Unlock()
			return "", fmt.Errorf("model %s: %w (%s): stop it first", name, ErrRunning, w.state)
		}
	}
	m.items = slices.Delete(m.items, i, i+1)
	m.mu.Unlock()
	m.notify()
	if err := os.RemoveAll(it.Path); err != nil {
		return it.Path, fmt.Errorf("model %s: %w", name, err)
	}
	return it.Path, nil
}
