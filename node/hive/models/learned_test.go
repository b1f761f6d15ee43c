package models

import (
	"os"
	"path/filepath"
	"testing"
)

// A model's learned load time and VRAM belong to the engine it ran under:
// the same model moved to another engine starts from estimates, and finds
// its figures again when moved back.
func TestLearned_KeptPerModelAndEngine(t *testing.T) {
	exe, err := os.Executable()
	if err != nil {
		t.Fatal(err)
	}
	dir := t.TempDir()
	state := filepath.Join(dir, "models.json")
	engines := map[string]*Engine{
		"a": {Name: "a", Words: []string{exe, "{port}"}},
		"b": {Name: "b", Words: []string{exe, "{port}"}},
	}
	ResolveEngines(engines, "")
	open := func(engine string) *Manager {
		t.Helper()
		m, err := New(Config{Entries: []Entry{{Name: "m", Path: exe, Engine: engine, Slots: 1, Ctx: 1024, VRAMMB: 1000}},
			Engines: engines, StateFile: state, LogDir: dir})
		if err != nil {
			t.Fatal(err)
		}
		return m
	}

	m := open("a")
	m.mu.Lock()
	m.items[0].learnedMB, m.items[0].loadMS, m.dirty = 2345, 777, true
	m.mu.Unlock()
	m.Close()

	m = open("b")
	if c := catalog(m, "m"); c.LoadMS != 0 || c.VRAMSource == "learned" {
		t.Fatalf("under engine b: %+v, want nothing learned (it was learned under a)", c)
	}
	m.mu.Lock()
	m.items[0].loadMS, m.dirty = 55, true
	m.mu.Unlock()
	m.Close()

	m = open("a")
	if c := catalog(m, "m"); c.LoadMS != 777 || c.VRAMMB != 2345 || c.VRAMSource != "learned" {
		t.Fatalf("back under engine a: %+v, want load 777 ms and 2345 MiB learned", c)
	}
	m.Close()
	m = open("b")
	if c := catalog(m, "m"); c.LoadMS != 55 {
		t.Fatalf("back under engine b: %+v, want load 55 ms", c)
	}
	m.Close()
}

// A state file of the first format (a map by model, no engine) is not
// taken for any engine's figures.
func TestLearned_OldFormatIsNotCarriedOver(t *testing.T) {
	exe, err := os.Executable()
	if err != nil {
		t.Fatal(err)
	}
	dir := t.TempDir()
	state := filepath.Join(dir, "models.json")
	if err := os.WriteFile(state, []byte(`{"m":{"vram_mb":2345,"load_ms":777}}`), 0o644); err != nil {
		t.Fatal(err)
	}
	engines := map[string]*Engine{"a": {Name: "a", Words: []string{exe, "{port}"}}}
	ResolveEngines(engines, "")
	m, err := New(Config{Entries: []Entry{{Name: "m", Path: exe, Engine: "a", Slots: 1, Ctx: 1024, VRAMMB: 1000}},
		Engines: engines, StateFile: state, LogDir: dir})
	if err != nil {
		t.Fatal(err)
	}
	defer m.Close()
	if c := catalog(m, "m"); c.LoadMS != 0 || c.VRAMSource == "learned" {
		t.Fatalf("%+v, want nothing learned", c)
	}
}
