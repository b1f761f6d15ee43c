package models

import (
	"encoding/json"
	"errors"
	"os"
)

// learned is what StateFile keeps of one model.
type learned struct {
	VRAMMB uint64 `json:"vram_mb,omitempty"`
	LoadMS int64  `json:"load_ms,omitempty"`
}

// loadState reads what an earlier run learned; a missing or unreadable
// file only means starting from estimates.
func (m *Manager) loadState() {
	if m.cfg.StateFile == "" {
		return
	}
	b, err := os.ReadFile(m.cfg.StateFile)
	if err != nil {
		if !errors.Is(err, os.ErrNotExist) {
			m.log.Warn("read learned model figures", "file", m.cfg.StateFile, "err", err)
		}
		return
	}
	var st map[string]learned
	if err := json.Unmarshal(b, &st); err != nil {
		m.log.Warn("read learned model figures", "file", m.cfg.StateFile, "err", err)
		return
	}
	for _, it := range m.items {
		if l, ok := st[it.Name]; ok {
			it.learnedMB, it.loadMS = l.VRAMMB, l.LoadMS
		}
	}
}

// saveState writes the learned figures if they changed, outside the lock.
func (m *Manager) saveState() {
	// One writer at a time, and a caller returns only once what it saw
	// is on disk.
	m.saveMu.Lock()
	defer m.saveMu.Unlock()
	m.mu.Lock()
	if !m.dirty || m.cfg.StateFile == "" {
		m.mu.Unlock()
		return
	}
	m.dirty = false
	st := map[string]learned{}
	for _, it := range m.items {
		if it.learnedMB > 0 || it.loadMS > 0 {
			st[it.Name] = learned{VRAMMB: it.learnedMB, LoadMS: it.loadMS}
		}
	}
	m.mu.Unlock()
	b, _ := json.MarshalIndent(st, "", "  ")
	tmp := m.cfg.StateFile + ".tmp"
	err := os.WriteFile(tmp, b, 0o644)
	if err == nil {
		err = os.Rename(tmp, m.cfg.StateFile)
	}
	if err != nil {
		m.log.Warn("save learned model figures", "file", m.cfg.StateFile, "err", err)
	}
}
