package scheduler

import (
	"slices"
	"testing"
	"time"
)

func TestPlace_SplitAcrossGPUs(t *testing.T) {
	split := func(vram uint64) CatalogModel {
		e := entry("m", vram)
		e.MultiGPU = true
		return e
	}
	four := func(used ...uint64) []GPU {
		out := make([]GPU, 4)
		for i := range out {
			out[i] = gpu(i, 24576, used[i])
		}
		return out
	}
	cases := []struct {
		name string
		hm   HiveModels
		cpu  bool  // a second hive, with the model and no GPUs
		want []int // GPUs of the start; nil for no start
	}{
		{name: "fits one GPU: not split",
			hm:   HiveModels{Catalog: []CatalogModel{split(20000)}, GPUs: four(0, 0, 0, 0)},
			want: []int{0}},
		{name: "4x24GiB: two GPUs for 40000 MiB",
			hm:   HiveModels{Catalog: []CatalogModel{split(40000)}, GPUs: four(0, 0, 0, 0)},
			want: []int{0, 1}},
		{name: "4x24GiB: the two with most free VRAM",
			hm:   HiveModels{Catalog: []CatalogModel{split(40000)}, GPUs: four(8000, 0, 3000, 0)},
			want: []int{1, 3}},
		{name: "4x24GiB: three when two are too full",
			hm:   HiveModels{Catalog: []CatalogModel{split(60000)}, GPUs: four(0, 0, 0, 8000)},
			want: []int{0, 1, 2}},
		{name: "4x24GiB: all four for 90000 MiB",
			hm:   HiveModels{Catalog: []CatalogModel{split(90000)}, GPUs: four(0, 0, 0, 0)},
			want: []int{0, 1, 2, 3}},
		{name: "4x24GiB: together too full now: no start",
			hm: HiveModels{Catalog: []CatalogModel{split(90000)}, GPUs: four(0, 0, 0, 3000)}},
		{name: "mixed sizes: an even share must fit the smaller GPU",
			hm: HiveModels{Catalog: []CatalogModel{split(60000)},
				GPUs: []GPU{gpu(0, 49152, 0), gpu(1, 24576, 0), gpu(2, 24576, 0)}},
			want: []int{0, 1, 2}},
		{name: "mixed sizes: the emptiest two, whatever their size",
			hm: HiveModels{Catalog: []CatalogModel{split(49000)},
				GPUs: []GPU{gpu(0, 24576, 0), gpu(1, 81920, 60000), gpu(2, 40960, 0)}},
			want: []int{0, 2}},
		{name: "a split before a hive with no GPUs",
			hm:   HiveModels{Catalog: []CatalogModel{split(40000)}, GPUs: four(0, 0, 0, 0)},
			cpu:  true,
			want: []int{0, 1}},
		{name: "an engine that cannot split is not split",
			hm: HiveModels{Catalog: []CatalogModel{entry("m", 20000)}, GPUs: four(10000, 10000, 10000, 10000)}},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			s := New(Config{})
			s.SetWarm(true)
			report(s, "h1", tc.hm, t0)
			if tc.cpu {
				report(s, "h2", HiveModels{Catalog: tc.hm.Catalog}, t0)
			}
			if g, err := s.Request(req("r", "m"), t0); g != nil || err != nil {
				t.Fatalf("request: grant %v err %v, want it to wait", g, err)
			}
			starts := s.Place(t0)
			var got []int
			if len(starts) == 1 && starts[0].Hive == "h1" {
				got = starts[0].GPUs
				if starts[0].VRAMMB != tc.hm.Catalog[0].VRAMMB {
					t.Errorf("start counts %d MiB, want the model's %d", starts[0].VRAMMB, tc.hm.Catalog[0].VRAMMB)
				}
			}
			if !slices.Equal(got, tc.want) || len(starts) > 1 {
				t.Fatalf("placed on %v (%+v), want %v", got, starts, tc.want)
			}
		})
	}
}

// A start split over two GPUs counts half its VRAM on each until its hive
// reports it, and a split worker that is idle frees only its share of a GPU
// when evicted.
func TestPlace_SplitAccountsPerGPU(t *testing.T) {
	s := New(Config{})
	s.SetWarm(true)
	big := entry("big", 40000)
	big.MultiGPU = true
	gpus := []GPU{gpu(0, 24576, 0), gpu(1, 24576, 0)}
	report(s, "h1", HiveModels{Catalog: []CatalogModel{big, entry("small", 4000), entry("mid", 8000)}, GPUs: gpus}, t0)
	if _, err := s.Request(req("a", "big"), t0); err != nil {
		t.Fatal(err)
	}
	starts := s.Place(t0)
	if len(starts) != 1 || !slices.Equal(starts[0].GPUs, []int{0, 1}) {
		t.Fatalf("starts %+v, want big on GPUs 0 and 1", starts)
	}
	// 20000 MiB pending on each GPU: 4576 left, small fits, mid does not.
	if _, err := s.Request(req("b", "small"), t0); err != nil {
		t.Fatal(err)
	}
	if _, err := s.Request(req("c", "mid"), t0); err != nil {
		t.Fatal(err)
	}
	starts = s.Place(t0)
	if len(starts) != 1 || starts[0].Model != "small" {
		t.Fatalf("starts %+v, want small alone (mid does not fit beside big's share)", starts)
	}

	// Later: big is ready and idle, 20000 MiB on each GPU of 32 GiB, and
	// 8000 MiB of something else beside it: evicting big frees 24768 MiB
	// of a GPU, not 40000.
	now := t0.Add(time.Minute)
	for _, tc := range []struct {
		need  uint64
		evict []string
	}{{need: 20000, evict: []string{"9000"}}, {need: 26000}} {
		s := New(Config{})
		s.SetWarm(true)
		used := []GPU{gpu(0, 32768, 28000), gpu(1, 32768, 28000)}
		managed := []Managed{{Instance: "9000", Model: "big", State: ManagedReady, GPUs: []int{0, 1}, VRAMMB: 40000, LastUsed: t0}}
		report(s, "h1", HiveModels{Catalog: []CatalogModel{big, entry("mid", tc.need)}, GPUs: used, Managed: managed}, now)
		if _, err := s.Request(req("d", "mid"), now); err != nil {
			t.Fatal(err)
		}
		starts := s.Place(now)
		var evicted []string
		if len(starts) == 1 {
			evicted = starts[0].Evict
		}
		if !slices.Equal(evicted, tc.evict) || len(starts) > 1 || (tc.evict == nil && len(starts) != 0) {
			t.Errorf("mid needing %d MiB: starts %+v, want evicted %v", tc.need, starts, tc.evict)
		}
	}
}
