package scheduler

import (
	"testing"
	"time"
)

// TestCopy_Placement: a shared model goes to a hive that has its files
// while one has room; to a hive that would copy them when none has room
// without evicting (or can never fit it); and never to a hive that cannot
// run its engine or takes no copies, nor from a hive that does not share.
func TestCopy_Placement(t *testing.T) {
	big := CatalogModel{Name: "big", Engine: "sim", Slots: 1, VRAMMB: 3000}
	for _, c := range []struct {
		name     string
		shared   bool
		aGPU     uint64   // MiB of hive a's one GPU (a has the model)
		bEngines []string // what hive b (no model) copies with
		wantHive string
		wantCopy bool
	}{
		{name: "a has room", shared: true, aGPU: 8000, bEngines: []string{"sim"}, wantHive: "a"},
		{name: "a can never fit it: b copies", shared: true, aGPU: 2000, bEngines: []string{"sim"}, wantHive: "b", wantCopy: true},
		{name: "not shared", shared: false, aGPU: 2000, bEngines: []string{"sim"}},
		{name: "b lacks the engine", shared: true, aGPU: 2000, bEngines: []string{"vllm"}},
		{name: "b takes no copies", shared: true, aGPU: 2000},
	} {
		t.Run(c.name, func(t *testing.T) {
			s := New(Config{})
			s.SetWarm(true)
			e := big
			e.Shared = c.shared
			s.UpdateModels("a", HiveModels{Catalog: []CatalogModel{e}, GPUs: []GPU{{Index: 0, TotalMB: c.aGPU}}}, t0)
			s.UpdateHive("a", nil, nil, t0)
			s.UpdateModels("b", HiveModels{GPUs: []GPU{{Index: 0, TotalMB: 8000}}, CopyEngines: c.bEngines}, t0)
			s.UpdateHive("b", nil, nil, t0)
			if _, err := s.Request(req("r", "big"), t0); err != nil {
				if c.wantHive != "" {
					t.Fatalf("refused: %v", err)
				}
				return
			}
			starts := s.Place(t0.Add(time.Millisecond))
			if c.wantHive == "" {
				if len(starts) > 0 {
					t.Fatalf("started %+v, want nothing", starts)
				}
				return
			}
			if len(starts) != 1 || starts[0].Hive != c.wantHive || (starts[0].Copy != nil) != c.wantCopy {
				t.Fatalf("starts %+v, want one on %s (copy %v)", starts, c.wantHive, c.wantCopy)
			}
			if c.wantCopy && (len(starts[0].Copy.From) != 1 || starts[0].Copy.From[0] != "a" || starts[0].Copy.Engine != "sim") {
				t.Fatalf("copy %+v, want from a with sim", *starts[0].Copy)
			}
		})
	}
}

// TestModelETA_WhileLoading: a model nothing serves yet, loading on a hive
// that loaded it before, waits what is left of that load (the WAIT column
// of rbee status), not "unknown".
func TestModelETA_WhileLoading(t *testing.T) {
	s := New(Config{})
	s.SetWarm(true)
	s.UpdateModels("h", HiveModels{Catalog: []CatalogModel{{Name: "m", Engine: "sim", Slots: 1, LoadTime: 10 * time.Second}},
		Managed: []Managed{{Instance: "9000", Model: "m", State: ManagedLoading, Since: t0}}}, t0)
	s.UpdateHive("h", nil, nil, t0)
	if got := s.ModelETA("m", t0.Add(3*time.Second)); got != 7*time.Second {
		t.Fatalf("ETA %v, want the 7 s left of the load", got)
	}
	if got := s.ModelETA("other", t0); got != 0 {
		t.Fatalf("ETA of a model nothing loads: %v", got)
	}
}
