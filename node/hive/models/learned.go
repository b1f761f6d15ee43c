package models

import (
	"encoding/json"
	"errors"
	"os"
)

// learnedFile is what StateFile holds: what the hive learned of each model
// under each engine. A model's load time and VRAM are the engine's as much
// as the model's (Ollama, llama-server and vLLM load one GGUF at different
// speeds, into different footprints), so a figure learned under one engine
// never stands for another: an entry moved to another engine starts again
// from estimates.
type learnedFile struct {
	Models []learned `json:"models"`
}

// learned is what StateFile keeps of one model under one engine.
type learned struct {
	Model  string `json:"model"`
	Engine string `json:"engine"`
	VRAMMB uint64 `json:"vram_mb,omitempty"`
	LoadMS int64  `json:"load_ms,omitempty"`
}

// loadState reads what an earlier run learned; a missing or unreadable
// file only means starting from estimates. A file of the first format, a
// map by model name that did not say which engine, is read as nothing
// learned.
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
	var st learnedFile
	if err := json.Unmarshal(b, &st); err != nil {
		m.log.Warn("read learned model figures", "file", m.cfg.StateFile, "err", err)
		return
	}
	if st.Models == nil {
		m.log.Info("learned model figures say no engine; starting from estimates", "file", m.cfg.StateFile)
		return
	}
	for _, it := range m.items {
		for _, l := range st.Models {
			if l.Model == it.Name && l.Engine == it.Engine {
				it.learnedMB, it.loadMS = l.VRAMMB, l.LoadMS
			}
		}
	}
}

// saveState writes the learned figures if they changed, outside the lock.
// Figures of models or engines this hive no longer has are kept, so that
// an entry moved back to its old engine finds them again.
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
	st := learnedFile{Models: []learned{}}
	ours := map[[2]string]bool{}
	for _, it := range m.items {
		ours[[2]string{it.Name, it.Engine}] = true
		if it.learnedMB > 0 || it.loadMS > 0 {
			st.Models = append(st.Models, learned{Model: it.Name, Engine: it.Engine, VRAMMB: it.learnedMB, LoadMS: it.loadMS})
		}
	}
	m.mu.Unlock()
	var old learnedFile
	if b, err := os.ReadFile(m.cfg.StateFile); err == nil && json.Unmarshal(b, &old) == nil {
		for _, l := range old.Models {
			if !ours[[2]string{l.Model, l.Engine}] {
				st.Models = append(st.Models, l)
			}
		}
	}
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
