package scheduler

import (
	"errors"
	"slices"
	"strings"
	"testing"
	"time"
)

func gpu(i int, total, used uint64) GPU { return GPU{Index: i, TotalMB: total, UsedMB: used} }

func entry(name string, vram uint64) CatalogModel {
	return CatalogModel{Name: name, Engine: "sim", Slots: 2, VRAMMB: vram}
}

// report gives hive h a catalog and GPUs (and managed workers), and the
// matching ready workers, as one telemetry report would.
func report(s *Scheduler, hive string, hm HiveModels, now time.Time) []Grant {
	s.UpdateModels(hive, hm, now)
	var ws []Worker
	for _, m := range hm.Managed {
		if m.State != ManagedLoading {
			ws = append(ws, Worker{Name: ManagedGroup + "/" + m.Instance, Model: m.Model, Slots: 2, Healthy: true})
		}
	}
	return s.UpdateHive(hive, ws, nil, now)
}

func TestPlace_GPUChoice(t *testing.T) {
	cases := []struct {
		name string
		h1   HiveModels
		h2   HiveModels
		// want is "hive/gpu", "hive/-" for no GPU, "" for no start.
		want string
	}{
		{name: "fits on the only GPU",
			h1:   HiveModels{Catalog: []CatalogModel{entry("m", 8000)}, GPUs: []GPU{gpu(0, 24000, 0)}},
			want: "h1/0"},
		{name: "does not fit anywhere now: no start",
			h1:   HiveModels{Catalog: []CatalogModel{entry("m", 8000)}, GPUs: []GPU{gpu(0, 24000, 20000)}},
			want: ""},
		{name: "prefers the GPU with most free VRAM, across hives",
			h1:   HiveModels{Catalog: []CatalogModel{entry("m", 8000)}, GPUs: []GPU{gpu(0, 24000, 10000), gpu(1, 24000, 2000)}},
			h2:   HiveModels{Catalog: []CatalogModel{entry("m", 8000)}, GPUs: []GPU{gpu(0, 80000, 70000)}},
			want: "h1/1"},
		{name: "reserved VRAM of a load under way counts as used",
			h1:   HiveModels{Catalog: []CatalogModel{entry("m", 8000)}, GPUs: []GPU{{Index: 0, TotalMB: 24000, ReservedMB: 20000}}},
			h2:   HiveModels{Catalog: []CatalogModel{entry("m", 8000)}, GPUs: []GPU{gpu(0, 24000, 10000)}},
			want: "h2/0"},
		{name: "a hive without the model is never chosen",
			h1:   HiveModels{Catalog: []CatalogModel{entry("other", 1000)}, GPUs: []GPU{gpu(0, 80000, 0)}},
			h2:   HiveModels{Catalog: []CatalogModel{entry("m", 8000)}, GPUs: []GPU{gpu(0, 24000, 10000)}},
			want: "h2/0"},
		{name: "uses the learned VRAM the hive reports (too big for h1 now)",
			h1:   HiveModels{Catalog: []CatalogModel{{Name: "m", Slots: 1, VRAMMB: 20000}}, GPUs: []GPU{gpu(0, 24000, 6000)}},
			h2:   HiveModels{Catalog: []CatalogModel{{Name: "m", Slots: 1, VRAMMB: 5000}}, GPUs: []GPU{gpu(0, 24000, 12000)}},
			want: "h2/0"},
		{name: "a GPU hive with room before a hive with no GPUs",
			h1:   HiveModels{Catalog: []CatalogModel{entry("m", 8000)}},
			h2:   HiveModels{Catalog: []CatalogModel{entry("m", 8000)}, GPUs: []GPU{gpu(0, 24000, 10000)}},
			want: "h2/0"},
		{name: "a hive with no GPUs takes it when no GPU has room",
			h1:   HiveModels{Catalog: []CatalogModel{entry("m", 8000)}},
			h2:   HiveModels{Catalog: []CatalogModel{entry("m", 8000)}, GPUs: []GPU{gpu(0, 24000, 20000)}},
			want: "h1/-"},
		{name: "an entry that cannot start is skipped",
			h1:   HiveModels{Catalog: []CatalogModel{{Name: "m", VRAMMB: 1, Unavailable: "file missing"}}, GPUs: []GPU{gpu(0, 80000, 0)}},
			h2:   HiveModels{Catalog: []CatalogModel{entry("m", 8000)}, GPUs: []GPU{gpu(0, 24000, 10000)}},
			want: "h2/0"},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			s := New(Config{})
			s.SetWarm(true)
			report(s, "h1", tc.h1, t0)
			if tc.h2.Catalog != nil {
				report(s, "h2", tc.h2, t0)
			}
			if g, err := s.Request(req("r", "m"), t0); g != nil || err != nil {
				t.Fatalf("request: grant %v err %v, want it to wait", g, err)
			}
			starts := s.Place(t0)
			got := ""
			if len(starts) > 0 {
				st := starts[0]
				got = st.Hive + "/-"
				if len(st.GPUs) > 0 {
					got = st.Hive + "/" + string(rune('0'+st.GPUs[0]))
				}
			}
			if got != tc.want || len(starts) > 1 {
				t.Fatalf("placed %q (%+v), want %q", got, starts, tc.want)
			}
		})
	}
}

// Two requests for one cold model start one worker; its ready report grants
// both, and a start the hive never reports is retried after pendingFor.
func TestPlace_OneStartPerColdModel(t *testing.T) {
	s := New(Config{})
	s.SetWarm(true)
	cat := HiveModels{Catalog: []CatalogModel{entry("m", 8000)}, GPUs: []GPU{gpu(0, 24000, 0)}}
	report(s, "h1", cat, t0)
	for _, id := range []string{"a", "b"} {
		if g, err := s.Request(req(id, "m"), t0); g != nil || err != nil {
			t.Fatalf("request %s: %v %v", id, g, err)
		}
	}
	starts := s.Place(t0)
	if len(starts) != 1 {
		t.Fatalf("starts %+v, want one", starts)
	}
	if again := s.Place(t0.Add(time.Second)); len(again) != 0 {
		t.Fatalf("a second start while the first is pending: %+v", again)
	}
	// The hive reports it loading: still one, and nothing granted.
	loading := cat
	loading.Managed = []Managed{{Instance: "9001", Model: "m", State: ManagedLoading, Since: t0, GPUs: []int{0}, StartID: starts[0].ID}}
	if g := report(s, "h1", loading, t0.Add(time.Second)); len(g) != 0 {
		t.Fatalf("granted on a loading worker: %+v", g)
	}
	if again := s.Place(t0.Add(pendingFor + 2*time.Second)); len(again) != 0 {
		t.Fatalf("a second start while one loads: %+v", again)
	}
	ready := cat
	ready.Managed = []Managed{{Instance: "9001", Model: "m", State: ManagedReady, Since: t0, GPUs: []int{0}, StartID: starts[0].ID}}
	g := report(s, "h1", ready, t0.Add(3*time.Second))
	if len(g) != 2 || g[0].Lease.Worker != "models/9001" {
		t.Fatalf("ready report granted %+v, want both waiting requests on models/9001", g)
	}

	// A start its hive never reports is tried again once it lapses.
	s2 := New(Config{})
	s2.SetWarm(true)
	report(s2, "h1", cat, t0)
	s2.Request(req("a", "m"), t0)
	if len(s2.Place(t0)) != 1 {
		t.Fatal("no first start")
	}
	report(s2, "h1", cat, t0.Add(pendingFor+time.Second))
	s2.Tick(t0.Add(pendingFor + time.Second))
	if len(s2.Place(t0.Add(pendingFor+time.Second))) != 1 {
		t.Fatal("a lost start was not tried again")
	}
}

func TestPlace_Eviction(t *testing.T) {
	idle := func(inst, model string, vram uint64, lastUsed time.Duration) Managed {
		return Managed{Instance: inst, Model: model, State: ManagedReady, Since: t0, GPUs: []int{0}, VRAMMB: vram, LastUsed: t0.Add(lastUsed)}
	}
	cases := []struct {
		name    string
		managed []Managed
		busy    []string // instances with a lease
		used    uint64   // the GPU's used VRAM
		want    []string // evicted, nil for none; "none" for no start at all
	}{
		{name: "least recently used first",
			managed: []Managed{idle("1", "a", 10000, 5*time.Second), idle("2", "b", 10000, time.Second)},
			used:    20000, want: []string{"2"}},
		{name: "as many as needed, oldest first",
			managed: []Managed{idle("1", "a", 6000, 3*time.Second), idle("2", "b", 6000, time.Second), idle("3", "c", 6000, 2*time.Second)},
			used:    20000, want: []string{"2", "3"}},
		{name: "never a busy one",
			managed: []Managed{idle("1", "a", 10000, 5*time.Second), idle("2", "b", 10000, time.Second)},
			busy:    []string{"2"}, used: 20000, want: []string{"1"}},
		{name: "all busy: no start",
			managed: []Managed{idle("1", "a", 10000, 5*time.Second), idle("2", "b", 10000, time.Second)},
			busy:    []string{"1", "2"}, used: 20000, want: []string{"none"}},
		{name: "room without evicting",
			managed: []Managed{idle("1", "a", 10000, time.Second)},
			used:    10000, want: nil},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			s := New(Config{})
			s.SetWarm(true)
			hm := HiveModels{Catalog: []CatalogModel{entry("a", 10000), entry("b", 10000), entry("c", 6000), entry("new", 12000)},
				GPUs: []GPU{gpu(0, 24000, tc.used)}, Managed: tc.managed}
			report(s, "h1", hm, t0)
			for _, inst := range tc.busy {
				m := tc.managed[slices.IndexFunc(tc.managed, func(m Managed) bool { return m.Instance == inst })].Model
				mustGrant(t, s, req("busy-"+inst, m), t0)
			}
			s.Request(req("r", "new"), t0)
			starts := s.Place(t0)
			if slices.Equal(tc.want, []string{"none"}) {
				if len(starts) != 0 {
					t.Fatalf("started %+v, want nothing", starts)
				}
				return
			}
			if len(starts) != 1 || !slices.Equal(starts[0].Evict, tc.want) {
				t.Fatalf("starts %+v, want one evicting %v", starts, tc.want)
			}
			// An evicted worker takes no new request.
			for _, inst := range tc.want {
				model := tc.managed[slices.IndexFunc(tc.managed, func(m Managed) bool { return m.Instance == inst })].Model
				if g, _ := s.Request(req("after-"+inst, model), t0); g != nil && g.Lease.Worker == ManagedGroup+"/"+inst {
					t.Fatalf("granted on evicted worker %s", inst)
				}
			}
		})
	}
}

func TestBackoff(t *testing.T) {
	for _, tc := range []struct {
		failures int
		want     time.Duration
	}{{0, 0}, {1, 10 * time.Second}, {2, 20 * time.Second}, {3, 40 * time.Second}, {5, 160 * time.Second}, {6, 5 * time.Minute}, {50, 5 * time.Minute}} {
		if got := Backoff(tc.failures); got != tc.want {
			t.Errorf("Backoff(%d) = %v, want %v", tc.failures, got, tc.want)
		}
	}
}

// A failed start: the waiting requests fail with the hive's reason unless
// another hive may try; new requests are refused with it until the backoff
// ends; then it is tried again.
func TestPlace_FailureBacksOff(t *testing.T) {
	failed := func(n int, at time.Time) CatalogModel {
		e := entry("m", 1000)
		e.Failures, e.FailedAt, e.FailReason = n, at, "exited with status 1: cannot open model"
		return e
	}
	s := New(Config{})
	s.SetWarm(true)
	gpus := []GPU{gpu(0, 24000, 0)}
	report(s, "h1", HiveModels{Catalog: []CatalogModel{entry("m", 1000)}, GPUs: gpus}, t0)
	report(s, "h2", HiveModels{Catalog: []CatalogModel{entry("m", 1000)}, GPUs: []GPU{gpu(0, 24000, 5000)}}, t0)
	s.Request(req("a", "m"), t0)
	st := s.Place(t0)
	if len(st) != 1 || st[0].Hive != "h1" {
		t.Fatalf("first start %+v, want h1 (most free)", st)
	}
	t1 := t0.Add(time.Second)
	report(s, "h1", HiveModels{Catalog: []CatalogModel{failed(1, t1)}, GPUs: gpus}, t1)
	if _, fails := s.Tick(t1); len(fails) != 0 {
		t.Fatalf("failed %+v while h2 may still try", fails)
	}
	st = s.Place(t1)
	if len(st) != 1 || st[0].Hive != "h2" {
		t.Fatalf("after h1 failed: starts %+v, want h2", st)
	}
	t2 := t1.Add(time.Second)
	report(s, "h2", HiveModels{Catalog: []CatalogModel{failed(1, t2)}, GPUs: gpus}, t2)
	_, fails := s.Tick(t2)
	if len(fails) != 1 || fails[0].Err.Status != 503 || !strings.Contains(fails[0].Err.Msg, "cannot open model") {
		t.Fatalf("fails %+v, want the waiting request failed with the engine's reason", fails)
	}
	_, err := s.Request(req("b", "m"), t2)
	var se *Error
	if !errors.As(err, &se) || se.Status != 503 || se.RetryAfter < 8*time.Second || !strings.Contains(se.Msg, "next try in") {
		t.Fatalf("new request during backoff: %v, want a 503 saying when it is tried again", err)
	}
	t3 := t1.Add(Backoff(1) + time.Second)
	report(s, "h1", HiveModels{Catalog: []CatalogModel{failed(1, t1)}, GPUs: gpus}, t3)
	report(s, "h2", HiveModels{Catalog: []CatalogModel{failed(1, t2)}, GPUs: gpus}, t3)
	if g, err := s.Request(req("c", "m"), t3); g != nil || err != nil {
		t.Fatalf("after the backoff: %v %v, want it to wait for a new start", g, err)
	}
	if st := s.Place(t3); len(st) != 1 || st[0].Hive != "h1" {
		t.Fatalf("after the backoff: starts %+v, want h1 again", st)
	}
}

// However the hives fail, the cluster starts a model at most startsPerMin
// times a minute.
func TestPlace_StartsPerMinuteBounded(t *testing.T) {
	s := New(Config{})
	s.SetWarm(true)
	gpus := []GPU{gpu(0, 24000, 0)}
	hives := []string{"h1", "h2", "h3", "h4", "h5", "h6"}
	for _, h := range hives {
		report(s, h, HiveModels{Catalog: []CatalogModel{entry("m", 1000)}, GPUs: gpus}, t0)
	}
	starts := 0
	for i := range 120 {
		now := t0.Add(time.Duration(i) * 500 * time.Millisecond)
		s.Request(req("r"+string(rune('a'+i%26))+string(rune('a'+i/26)), "m"), now)
		for _, st := range s.Place(now) {
			starts++
			// Every start fails at once.
			e := entry("m", 1000)
			e.Failures, e.FailedAt, e.FailReason = 1, now, "boom"
			report(s, st.Hive, HiveModels{Catalog: []CatalogModel{e}, GPUs: gpus}, now)
		}
		for _, h := range hives {
			s.hiveAt[h] = now // the hives keep reporting
		}
		s.Tick(now)
	}
	if starts > startsPerMin || starts == 0 {
		t.Fatalf("%d starts in a minute, want 1..%d", starts, startsPerMin)
	}
}

func TestPlace_WaitOrLoad(t *testing.T) {
	cases := []struct {
		name    string
		service time.Duration
		load    time.Duration
		waiting int
		maxRep  int
		want    bool
	}{
		{name: "long queue, quick load: scale out", service: 10 * time.Second, load: 2 * time.Second, waiting: 4, want: true},
		{name: "short queue: wait", service: time.Second, load: 5 * time.Second, waiting: 4, want: false},
		{name: "no service time measured yet: wait", service: 0, load: time.Second, waiting: 10, want: false},
		{name: "unknown load time counts as slow", service: 2 * time.Second, load: 0, waiting: 10, want: false},
		{name: "max_replicas reached: wait", service: 10 * time.Second, load: 2 * time.Second, waiting: 4, maxRep: 1, want: false},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			s := New(Config{})
			s.SetWarm(true)
			e := entry("m", 1000)
			e.LoadTime, e.MaxReplicas = tc.load, tc.maxRep
			e.Slots = 1
			report(s, "h1", HiveModels{Catalog: []CatalogModel{e}, GPUs: []GPU{gpu(0, 24000, 1000)},
				Managed: []Managed{{Instance: "1", Model: "m", State: ManagedReady, GPUs: []int{0}, VRAMMB: 1000}}}, t0)
			s.UpdateHive("h1", []Worker{{Name: "models/1", Model: "m", Slots: 1, Healthy: true}}, nil, t0)
			if tc.service > 0 {
				g := mustGrant(t, s, req("first", "m"), t0)
				s.Release(g.Lease.ID, t0.Add(tc.service))
			}
			now := t0.Add(tc.service)
			s.UpdateHive("h1", []Worker{{Name: "models/1", Model: "m", Slots: 1, Healthy: true}}, nil, now)
			s.hiveAt["h1"] = now
			mustGrant(t, s, req("busy", "m"), now)
			for i := range tc.waiting {
				s.Request(req("w"+string(rune('a'+i)), "m"), now)
			}
			got := len(s.Place(now)) == 1
			if got != tc.want {
				t.Fatalf("scale out %v, want %v", got, tc.want)
			}
		})
	}
}

// A request for a model only a catalog has waits instead of 404; a model
// nobody has is still 404.
func TestRequest_CatalogModelWaits(t *testing.T) {
	s := New(Config{})
	s.SetWarm(true)
	report(s, "h1", HiveModels{Catalog: []CatalogModel{entry("Qwen2.5-7B", 1000)}}, t0)
	if g, err := s.Request(req("a", "qwen2.5-7b"), t0); g != nil || err != nil {
		t.Fatalf("catalog model: %v %v, want it to wait", g, err)
	}
	if _, err := s.Request(req("b", "nope"), t0); !errors.Is(err, ErrUnknownModel) {
		t.Fatalf("unknown model: %v, want 404", err)
	}
	if _, fails := s.Tick(t0.Add(time.Second)); len(fails) != 0 {
		t.Fatalf("the waiting request failed: %+v", fails)
	}
	ws := func() []WaitStatus {
		s.waiting["a"].req.Progress = true
		return s.Waits(t0.Add(time.Second))
	}()
	if len(ws) != 1 || ws[0].Position != 1 {
		t.Fatalf("waits %+v", ws)
	}
}

// A hive that misses a few reports neither fails the requests for the
// model it serves nor gets it started elsewhere.
func TestPlace_ReportGapIsNotCold(t *testing.T) {
	s := New(Config{})
	s.SetWarm(true)
	cat := HiveModels{Catalog: []CatalogModel{entry("m", 1000)}, GPUs: []GPU{gpu(0, 24000, 0)},
		Managed: []Managed{{Instance: "1", Model: "m", State: ManagedReady, GPUs: []int{0}}}}
	report(s, "h1", cat, t0)
	report(s, "h2", HiveModels{Catalog: []CatalogModel{entry("m", 1000)}, GPUs: []GPU{gpu(0, 24000, 0)}}, t0)
	mustGrant(t, s, req("busy1", "m"), t0)
	mustGrant(t, s, req("busy2", "m"), t0)
	s.Request(req("w", "m"), t0)
	later := t0.Add(4 * time.Second) // h1 silent for longer than StaleAfter
	report(s, "h2", HiveModels{Catalog: []CatalogModel{entry("m", 1000)}, GPUs: []GPU{gpu(0, 24000, 0)}}, later)
	if _, fails := s.Tick(later); len(fails) != 0 {
		t.Fatalf("failed %+v during a report gap", fails)
	}
	if st := s.Place(later); len(st) != 0 {
		t.Fatalf("started %+v during a report gap", st)
	}
	if _, err := s.Request(req("new", "m"), later); err != nil {
		t.Fatalf("a new request during the gap: %v", err)
	}
}

// A request waiting for one worker gets progress reports too.
func TestWaits_Pinned(t *testing.T) {
	s := New(Config{})
	s.SetWarm(true)
	s.UpdateHive("h", []Worker{w("g/1", "m", 1)}, nil, t0)
	mustGrant(t, s, req("busy", "m"), t0)
	r := req("follow-up", "m")
	r.Hive, r.Worker, r.Progress = "h", "g/1", true
	if g, err := s.Request(r, t0); g != nil || err != nil {
		t.Fatalf("%v %v", g, err)
	}
	ws := s.Waits(t0)
	if len(ws) != 1 || ws[0].Request.ID != "follow-up" || ws[0].Position != 1 {
		t.Fatalf("waits %+v", ws)
	}
}
