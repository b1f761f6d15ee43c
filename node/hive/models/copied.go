package models

import (
	"fmt"
	"path/filepath"
	"strings"
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
