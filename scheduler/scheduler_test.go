package scheduler

import (
	"errors"
	"fmt"
	"net/http"
	"reflect"
	"runtime"
	"slices"
	"strings"
	"testing"
	"time"
)

var t0 = time.Date(2026, 1, 2, 3, 4, 5, 0, time.UTC)

func w(name, model string, slots int) Worker {
	return Worker{Name: name, Model: model, Slots: slots, Healthy: true, VRAMTotalMB: 24000, VRAMUsedMB: 4000}
}

func req(id, model string) Request {
	return Request{ID: id, Entry: "e", Model: model, Deadline: t0.Add(30 * time.Second)}
}

func mustGrant(t testing.TB, s *Scheduler, r Request, now time.Time) Grant {
	t.Helper()
	g, err := s.Request(r, now)
	if err != nil || g == nil {
		t.Fatalf("request %s: grant %v, err %v; want a grant", r.ID, g, err)
	}
	return *g
}

// TestEligibility covers each rule that keeps a worker from a request.
func TestEligibility(t *testing.T) {
	cases := []struct {
		name   string
		worker Worker
		model  string
		cfg    Config
		vram   uint64
		age    time.Duration // time since the hive reported
		leases int           // leases granted before the request
		ok     bool
	}{
		{name: "free worker", worker: w("g/1", "m", 1), model: "m", ok: true},
		{name: "alias without quantization", worker: w("g/1", "M-Q4_K_M.gguf", 1), model: "m", ok: true},
		{name: "case-insensitive", worker: w("g/1", "Llama", 1), model: "LLAMA", ok: true},
		{name: "stale telemetry", worker: w("g/1", "m", 1), model: "m", age: 4 * time.Second},
		{name: "fresh enough", worker: w("g/1", "m", 1), model: "m", age: 3 * time.Second, ok: true},
		{name: "unhealthy", worker: func() Worker { x := w("g/1", "m", 1); x.Healthy = false; return x }(), model: "m"},
		{name: "all slots leased", worker: w("g/1", "m", 2), model: "m", leases: 2},
		{name: "one of two slots free", worker: w("g/1", "m", 2), model: "m", leases: 1, ok: true},
		{name: "VRAM need from config met", worker: w("g/1", "m", 1), model: "m", cfg: Config{ModelVRAMMB: map[string]uint64{"m": 20000}}, ok: true},
		{name: "VRAM need from config not met", worker: w("g/1", "m", 1), model: "m", cfg: Config{ModelVRAMMB: map[string]uint64{"m": 20001}}},
		{name: "VRAM need configured under the served name", worker: w("g/1", "m-q8_0", 1), model: "m", cfg: Config{ModelVRAMMB: map[string]uint64{"m-q8_0": 30000}}},
		{name: "VRAM need of the request", worker: w("g/1", "m", 1), model: "m", vram: 20001},
		{name: "no GPU figures: VRAM not checked", worker: Worker{Name: "g/1", Model: "m", Slots: 1, Healthy: true}, model: "m", vram: 1000, ok: true},
		{name: "saturated by outside work", worker: func() Worker { x := w("g/1", "m", 2); x.GPUUtilPct = 95; return x }(), model: "m"},
		{name: "busy GPU from our own lease", worker: func() Worker { x := w("g/1", "m", 2); x.GPUUtilPct = 95; return x }(), model: "m", leases: 1, ok: true},
		{name: "saturation threshold configurable", worker: func() Worker { x := w("g/1", "m", 1); x.GPUUtilPct = 95; return x }(), model: "m", cfg: Config{SaturatedPct: 99}, ok: true},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			s := New(c.cfg)
			s.SetWarm(true)
			// Leases first, on an idle worker; then the telemetry under test,
			// which lists them.
			idle := c.worker
			idle.GPUUtilPct, idle.Healthy = 0, true
			s.UpdateHive("h", []Worker{idle}, nil, t0)
			var hl []HiveLease
			for i := range c.leases {
				g := mustGrant(t, s, req(fmt.Sprint("pre", i), c.model), t0)
				hl = append(hl, HiveLease{ID: g.Lease.ID, Worker: g.Lease.Worker})
			}
			s.UpdateHive("h", []Worker{c.worker}, hl, t0)
			r := req("r", c.model)
			r.VRAMMB = c.vram
			g, err := s.Request(r, t0.Add(c.age))
			if err != nil {
				t.Fatalf("err %v", err)
			}
			if (g != nil) != c.ok {
				t.Fatalf("granted %v, want %v (%s)", g != nil, c.ok, s.Explain(c.model, t0.Add(c.age)))
			}
			if g != nil && (g.Lease.Hive != "h" || g.Lease.Worker != "g/1" || g.Lease.RequestID != "r") {
				t.Fatalf("grant %+v", g.Lease)
			}
		})
	}
}

// TestChoice: fewest leases, then lowest GPU util, then most free VRAM; ties
// rotate.
func TestChoice(t *testing.T) {
	mk := func(name string, util float64, used uint64) Worker {
		x := w(name, "m", 4)
		x.GPUUtilPct, x.VRAMUsedMB = util, used
		return x
	}
	cases := []struct {
		name    string
		workers []Worker
		want    []string // workers of successive grants
	}{
		{"fewest leases spreads", []Worker{mk("a", 0, 0), mk("b", 0, 0)}, []string{"a", "b", "a", "b"}},
		{"lowest GPU util first", []Worker{mk("a", 50, 0), mk("b", 10, 0)}, []string{"b", "a"}},
		{"most free VRAM first", []Worker{mk("a", 10, 9000), mk("b", 10, 1000)}, []string{"b", "a"}},
		{"leases before util", []Worker{mk("a", 80, 0), mk("b", 10, 0)}, []string{"b", "a", "b"}},
		{"ties rotate", []Worker{mk("a", 0, 0), mk("b", 0, 0), mk("c", 0, 0)}, []string{"a", "b", "c", "a", "b", "c"}},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			s := New(Config{})
			s.SetWarm(true)
			s.UpdateHive("h", c.workers, nil, t0)
			var got []string
			for i := range c.want {
				got = append(got, mustGrant(t, s, req(fmt.Sprint(i), "m"), t0).Lease.Worker)
			}
			if !slices.Equal(got, c.want) {
				t.Fatalf("grants went to %v, want %v", got, c.want)
			}
		})
	}
	// Ties rotate also when every lease is returned at once.
	s := New(Config{})
	s.UpdateHive("h", []Worker{mk("a", 0, 0), mk("b", 0, 0)}, nil, t0)
	var got []string
	for i := range 4 {
		g := mustGrant(t, s, req(fmt.Sprint(i), "m"), t0)
		got = append(got, g.Lease.Worker)
		s.Release(g.Lease.ID, t0)
	}
	if !slices.Equal(got, []string{"a", "b", "a", "b"}) {
		t.Fatalf("grant-release cycles went to %v, want a b a b", got)
	}
}

func TestErrors(t *testing.T) {
	s := New(Config{QueueLimit: 2, RetryAfter: 2 * time.Second})
	s.UpdateHive("h", []Worker{w("g/1", "m", 1)}, nil, t0)

	// Not warm yet: an unknown model waits (a new queen has not heard
	// from every hive).
	if g, err := s.Request(req("x", "other"), t0); g != nil || err != nil {
		t.Fatalf("cold unknown model: %v %v, want to wait", g, err)
	}
	s.SetWarm(true)
	_, fails := s.Tick(t0)
	if len(fails) != 1 || !errors.Is(fails[0].Err, ErrUnknownModel) || fails[0].Request.ID != "x" {
		t.Fatalf("after warm-up: %+v, want x failed 404", fails)
	}
	if _, err := s.Request(req("y", "other"), t0); !errors.Is(err, ErrUnknownModel) {
		t.Fatalf("warm unknown model: %v, want 404", err)
	}

	mustGrant(t, s, req("1", "m"), t0)
	for _, id := range []string{"2", "3"} {
		if g, err := s.Request(req(id, "m"), t0); g != nil || err != nil {
			t.Fatalf("%s: %v %v, want queued", id, g, err)
		}
	}
	_, err := s.Request(req("4", "m"), t0)
	var se *Error
	if !errors.As(err, &se) || se.Status != 429 || se.RetryAfter != 2*time.Second {
		t.Fatalf("queue full: %v, want 429 with Retry-After 2s", err)
	}
	// Deadlines: 2 has an early one.
	s.Cancel("3")
	r := req("5", "m")
	r.Deadline = t0.Add(time.Second)
	s.Request(r, t0)
	_, fails = s.Tick(t0.Add(time.Second))
	if len(fails) != 1 || fails[0].Request.ID != "5" || !errors.Is(fails[0].Err, ErrTimeout) {
		t.Fatalf("deadline: %+v, want 5 failed 503", fails)
	}
	if s.Waiting() != 1 {
		t.Fatalf("waiting %d, want 1 (request 2)", s.Waiting())
	}
}

// TestPull: a released slot goes to the oldest waiting request, across the
// names the model answers to.
func TestPull(t *testing.T) {
	s := New(Config{})
	s.SetWarm(true)
	s.UpdateHive("h", []Worker{w("g/1", "Llama-Q4_K_M.gguf", 1)}, nil, t0)
	g1 := mustGrant(t, s, req("1", "llama"), t0)
	s.Request(req("2", "llama-q4_k_m.gguf"), t0)
	s.Request(req("3", "llama"), t0)
	s.Request(req("4", "LLAMA"), t0)
	if s.Cancel("3") != true || s.Cancel("3") != false {
		t.Fatal("cancel must report whether the request waited")
	}
	var order []string
	lease := g1.Lease.ID
	for range 2 {
		gs := s.Release(lease, t0)
		if len(gs) != 1 {
			t.Fatalf("release granted %d, want 1", len(gs))
		}
		order = append(order, gs[0].Request.ID)
		lease = gs[0].Lease.ID
	}
	if !slices.Equal(order, []string{"2", "4"}) {
		t.Fatalf("pull order %v, want [2 4]", order)
	}
	if gs := s.Release(lease, t0); len(gs) != 0 || len(s.Leases()) != 0 {
		t.Fatalf("last release: %v, leases %v", gs, s.Leases())
	}
	// Releasing an unknown or already released lease is harmless.
	if gs := s.Release(lease, t0); gs != nil {
		t.Fatal("double release granted")
	}
}

// TestQueuedRequestsWaitTheirTurn: a new request does not overtake waiting
// ones even when it could be granted (FIFO per model).
func TestQueuedRequestsWaitTheirTurn(t *testing.T) {
	s := New(Config{})
	s.SetWarm(true)
	x := w("g/1", "m", 1)
	x.Healthy = false
	s.UpdateHive("h", []Worker{x}, nil, t0)
	s.Request(req("1", "m"), t0)
	x.Healthy = true
	gs := s.UpdateHive("h", []Worker{x}, nil, t0.Add(time.Second))
	if len(gs) != 1 || gs[0].Request.ID != "1" {
		t.Fatalf("healthy again: grants %+v, want request 1", gs)
	}
	if g, _ := s.Request(req("2", "m"), t0.Add(time.Second)); g != nil {
		t.Fatal("granted beyond the slot")
	}
}

// TestNeverOversubscribed drives random requests, releases and telemetry and
// checks the invariants: a worker's leases never exceed its slots plus its
// standby grants (Config.Standby), a standby grant is made only when every
// worker of its model is full, and the hive, which starts a lease only in
// a free slot (oldest first) and lists those it started, never runs more
// than its slots.
func TestNeverOversubscribed(t *testing.T) {
	s := New(Config{QueueLimit: 1 << 20})
	s.SetWarm(true)
	ws := []Worker{w("g/1", "m", 2), w("g/2", "m", 2), w("g/3", "m", 1), w("g/4", "n", 3)}
	s.UpdateHive("h1", ws[:2], nil, t0)
	s.UpdateHive("h2", ws[2:], nil, t0)
	var held []Lease // oldest first
	started := map[string]bool{}
	seed := uint64(1)
	rnd := func(n int) int { seed = seed*6364136223846793005 + 1442695040888963407; return int(seed>>33) % n }
	now := t0
	standbys, spares := 0, 0
	check := func(grants []Grant) {
		t.Helper()
		count := map[string]int{}
		for _, l := range s.Leases() {
			count[l.Hive+"/"+l.Worker]++
		}
		for _, x := range s.workers {
			if count[x.id] > x.Slots+s.cfg.Standby || x.leases != count[x.id] {
				t.Fatalf("worker %s: %d leases (counted %d), %d slots, %d standby", x.id, count[x.id], x.leases, x.Slots, s.cfg.Standby)
			}
		}
		// The spare leases a waiting request revokes are exactly
		// those not asked back yet, under their model.
		for key, m := range s.revocable {
			for id, l := range m {
				if s.spares[id] != l || l.spareKey != key || l.revoked || l.orphan {
					t.Fatalf("spare lease %s listed revocable under %q: spare %v, key %q, revoked %v, orphan %v", id, key, s.spares[id] == l, l.spareKey, l.revoked, l.orphan)
				}
			}
		}
		for id, l := range s.spares {
			if !l.revoked && !l.orphan && s.revocable[l.spareKey][id] != l {
				t.Fatalf("spare lease %s of %q not listed revocable", id, l.spareKey)
			}
		}
		for _, g := range grants {
			if g.Lease.Spare {
				// Lent only while nothing of the model waits,
				// never a worker's last free slot.
				spares++
				if x := s.byHive[g.Lease.Hive][g.Lease.Worker]; x.leases >= x.Slots || s.waitsFor(RequestKey(g.Request.Model), now) {
					t.Fatalf("spare lease %s on %s with %d of %d slots leased, or while a request waits", g.Lease.ID, x.id, x.leases, x.Slots)
				}
			}
			if !g.Lease.Standby {
				continue
			}
			standbys++
			for _, x := range s.byKey[RequestKey(g.Request.Model)] {
				if x.leases < x.Slots {
					t.Fatalf("standby grant %s on %s/%s while %s has %d of %d slots leased", g.Lease.ID, g.Lease.Hive, g.Lease.Worker, x.id, x.leases, x.Slots)
				}
			}
		}
	}
	release := func(j int) []Grant {
		l, ran := held[j], started[held[j].ID]
		delete(started, l.ID)
		held = append(held[:j], held[j+1:]...)
		if l.Spare {
			return s.ReleaseSpare(l.ID, SpareUse{Unused: !ran, Ran: 10 * time.Millisecond}, now)
		}
		return s.Release(l.ID, now)
	}
	for i := range 5000 {
		now = now.Add(10 * time.Millisecond)
		var grants []Grant
		switch rnd(6) {
		case 4:
			// An entry node asks for spare leases (spare.go);
			// the hive serves their uses like any lease. Now and
			// then its session ends first, orphaning its pool.
			if rnd(8) == 0 {
				s.DropSpares("e2")
			}
			grants = s.Spare(Request{ID: fmt.Sprint("s", i), Entry: "e2", Model: []string{"m", "n"}[rnd(2)]}, 1+rnd(3), now)
		case 0, 1:
			r := req(fmt.Sprint("r", i), []string{"m", "n"}[rnd(2)])
			r.Deadline = now.Add(time.Hour)
			if g, _ := s.Request(r, now); g != nil {
				grants = append(grants, *g)
			}
		case 2, 5:
			if len(held) > 0 {
				grants = release(rnd(len(held)))
			}
		case 3:
			hive := []string{"h1", "h2"}[rnd(2)]
			src := ws[:2]
			if hive == "h2" {
				src = ws[2:]
			}
			// The hive starts what waits for a free slot, oldest
			// first, and reports what it started.
			running := map[string]int{}
			for _, l := range held {
				if started[l.ID] {
					running[l.Worker]++
				}
			}
			var hl []HiveLease
			for _, l := range held {
				if l.Hive != hive {
					continue
				}
				slots := 0
				for _, x := range src {
					if x.Name == l.Worker {
						slots = x.Slots
					}
				}
				if !started[l.ID] && running[l.Worker] < slots {
					started[l.ID] = true
					running[l.Worker]++
				}
				if started[l.ID] {
					id := l.ID
					if l.Spare {
						id += "/1" // a use of it
					}
					hl = append(hl, HiveLease{ID: id, Worker: l.Worker, Model: l.Model, Entry: l.Entry, RequestID: l.RequestID})
				}
				if running[l.Worker] > slots {
					t.Fatalf("hive %s runs %d on %s, %d slots", hive, running[l.Worker], l.Worker, slots)
				}
			}
			grants = s.UpdateHive(hive, src, hl, now)
		}
		for _, g := range grants {
			held = append(held, g.Lease)
		}
		check(grants)
		// The entry node gives back at once the revoked spare leases
		// it holds unused.
		for _, ids := range s.Revokes() {
			for _, id := range ids {
				if j := slices.IndexFunc(held, func(l Lease) bool { return l.ID == id }); j >= 0 && !started[id] {
					gs := release(j)
					for _, g := range gs {
						held = append(held, g.Lease)
					}
					check(gs)
				}
			}
		}
	}
	if spares == 0 {
		t.Fatal("no spare lease in 5000 steps: the test does not exercise them")
	}
	if s.cfg.Standby > 0 && standbys == 0 {
		t.Fatal("no standby grant in 5000 steps: the test does not exercise them")
	}
	t.Logf("%d standby grants, %d spare leases", standbys, spares)
}

// TestNewQueenAdoptsLeases: a new queen learns the leases in flight from the
// hives' telemetry and grants only the slots left.
func TestNewQueenAdoptsLeases(t *testing.T) {
	s := New(Config{LeasePrefix: "q2-"})
	s.SetWarm(true)
	hl := []HiveLease{{ID: "q1-7", Worker: "g/1", Model: "m", Entry: "e", RequestID: "old", Since: t0}}
	s.UpdateHive("h", []Worker{w("g/1", "m", 2)}, hl, t0)
	mustGrant(t, s, req("new", "m"), t0)
	if g, _ := s.Request(req("more", "m"), t0); g != nil {
		t.Fatal("granted a slot the adopted lease holds")
	}
	// The old request ends: the hive stops listing it, which frees its
	// slot and pulls the waiting request.
	gs := s.UpdateHive("h", []Worker{w("g/1", "m", 2)}, []HiveLease{{ID: "q2-1", Worker: "g/1", Model: "m"}}, t0.Add(time.Second))
	if len(gs) != 1 || gs[0].Request.ID != "more" {
		t.Fatalf("after adopted lease ended: %+v, want request more granted", gs)
	}
}

// TestLeaseReclaim: a lease no hive ever lists (its entry node died before
// reaching the hive) is reclaimed; a listed one is not, however long.
func TestLeaseReclaim(t *testing.T) {
	s := New(Config{LeaseStartTimeout: 5 * time.Second})
	s.SetWarm(true)
	s.UpdateHive("h", []Worker{w("g/1", "m", 1), w("g/2", "m", 1)}, nil, t0)
	g1 := mustGrant(t, s, req("1", "m"), t0)
	g2 := mustGrant(t, s, req("2", "m"), t0)
	s.UpdateHive("h", []Worker{w("g/1", "m", 1), w("g/2", "m", 1)},
		[]HiveLease{{ID: g1.Lease.ID, Worker: g1.Lease.Worker}}, t0.Add(time.Second))
	r := req("3", "m")
	r.Deadline = t0.Add(time.Minute)
	s.Request(r, t0.Add(time.Second))
	fresh := []Worker{w("g/1", "m", 1), w("g/2", "m", 1)}
	s.UpdateHive("h", fresh, []HiveLease{{ID: g1.Lease.ID, Worker: g1.Lease.Worker}}, t0.Add(6*time.Second))
	gs, _ := s.Tick(t0.Add(6 * time.Second))
	if len(gs) != 1 || gs[0].Request.ID != "3" || gs[0].Lease.Worker != g2.Lease.Worker {
		t.Fatalf("reclaim: grants %+v, want request 3 on %s", gs, g2.Lease.Worker)
	}
	if _, ok := s.leases[g1.Lease.ID]; !ok {
		t.Fatal("a confirmed lease was reclaimed")
	}
}

// TestRequestAgainIsIdempotent: an entry node that lost its session asks
// again with the same id and gets the same lease, not a second one.
func TestRequestAgainIsIdempotent(t *testing.T) {
	s := New(Config{})
	s.SetWarm(true)
	s.UpdateHive("h", []Worker{w("g/1", "m", 2)}, nil, t0)
	a := mustGrant(t, s, req("1", "m"), t0)
	b := mustGrant(t, s, req("1", "m"), t0)
	if a.Lease.ID != b.Lease.ID || len(s.Leases()) != 1 {
		t.Fatalf("asked twice: leases %v and %v, %d held", a.Lease.ID, b.Lease.ID, len(s.Leases()))
	}
	s.Request(req("2", "m"), t0)
	s.Request(req("3", "m"), t0)
	s.Request(req("3", "m"), t0)
	if s.Waiting() != 1 {
		t.Fatalf("waiting %d, want 1", s.Waiting())
	}
	if n := s.CancelEntry("e"); n != 1 || s.Waiting() != 0 {
		t.Fatalf("cancel entry: %d", n)
	}
}

// TestHiveGone: removing a hive drops its workers and leases; its waiting
// requests stay queued for other workers.
func TestHiveGone(t *testing.T) {
	s := New(Config{ForgetAfter: 10 * time.Second})
	s.SetWarm(true)
	s.UpdateHive("h1", []Worker{w("g/1", "m", 1)}, nil, t0)
	s.UpdateHive("h2", []Worker{w("g/1", "m", 1)}, nil, t0)
	mustGrant(t, s, req("1", "m"), t0)
	mustGrant(t, s, req("2", "m"), t0)
	s.Request(req("3", "m"), t0)
	s.RemoveHive("h1")
	if len(s.Leases()) != 1 {
		t.Fatalf("leases %v after hive removed", s.Leases())
	}
	// h2 goes silent past ForgetAfter: forgotten; request 3 then fails
	// with why (its only hive stopped reporting), not as an unknown model.
	_, fails := s.Tick(t0.Add(11 * time.Second))
	if len(s.Leases()) != 0 || len(fails) != 1 || fails[0].Request.ID != "3" {
		t.Fatalf("after forget: leases %v fails %v", s.Leases(), fails)
	}
	if e := fails[0].Err; e.Status != http.StatusServiceUnavailable || !strings.Contains(e.Msg, "h2, stopped reporting") {
		t.Fatalf("request 3 failed with %+v, want 503 naming h2", e)
	}
	if _, fails = s.Tick(t0.Add(12 * time.Second)); len(fails) != 0 {
		t.Fatalf("failed again: %+v", fails)
	}
}

// TestHiveGone_LoadUnderWay: a request waiting on a model its only hive was
// loading (or could start) learns that the hive died, with a 503, not that
// the model is unknown.
func TestHiveGone_LoadUnderWay(t *testing.T) {
	for _, how := range []string{"failed", "silent"} {
		t.Run(how, func(t *testing.T) {
			s := New(Config{ForgetAfter: 10 * time.Second})
			s.SetWarm(true)
			s.UpdateHive("h", nil, nil, t0)
			s.UpdateModels("h", HiveModels{Catalog: []CatalogModel{{Name: "m", VRAMMB: 100}}}, t0)
			if _, err := s.Request(req("1", "m"), t0); err != nil {
				t.Fatalf("request for a model the hive can start: %v", err)
			}
			var fails []Failure
			if how == "failed" {
				fails = s.HiveGone("h", "failed", t0.Add(time.Second))
			} else {
				_, fails = s.Tick(t0.Add(11 * time.Second))
			}
			if len(fails) != 1 || fails[0].Err.Status != http.StatusServiceUnavailable {
				t.Fatalf("fails %+v, want request 1 failed with 503", fails)
			}
		})
	}
}

func TestModels(t *testing.T) {
	s := New(Config{})
	s.UpdateHive("h1", []Worker{w("g/1", "a", 2), w("g/2", "b", 1), {Name: "g/3", Slots: 1, Healthy: true}}, nil, t0)
	s.UpdateHive("h2", []Worker{w("g/1", "a", 1)}, nil, t0.Add(-10*time.Second))
	mustGrant(t, s, req("1", "a"), t0)
	s.Request(req("2", "b"), t0)
	s.Request(req("3", "b"), t0)
	s.Request(req("4", "zzz"), t0) // cold queen: waits
	got := s.Models(t0)
	want := []ModelStats{
		{Model: "a", Leases: 1, Slots: 2, Workers: 1, State: StateLoaded},
		{Model: "b", Leases: 1, Waiting: 1, Slots: 1, Workers: 1, State: StateLoaded},
		{Model: "zzz", Waiting: 1},
	}
	if !reflect.DeepEqual(got, want) {
		t.Fatalf("Models:\n got %+v\nwant %+v", got, want)
	}
}

func TestExplain(t *testing.T) {
	s := New(Config{})
	x := w("g/2", "m", 1)
	x.Healthy = false
	s.UpdateHive("h", []Worker{w("g/1", "m", 1), x}, nil, t0)
	mustGrant(t, s, req("1", "m"), t0)
	if got, want := s.Explain("m", t0), "workers: 1 all slots leased, 1 unhealthy"; got != want {
		t.Fatalf("Explain = %q, want %q", got, want)
	}
}

// BenchmarkDecision times a request and its release with n workers of one
// model: the index, and beside it the scan every decision made before it.
func BenchmarkDecision(b *testing.B) {
	for _, n := range []int{10, 1000, 10000} {
		for _, scan := range []bool{false, true} {
			name := fmt.Sprint(n, "_workers")
			if scan {
				name += "_scan_baseline"
			}
			b.Run(name, func(b *testing.B) { benchDecision(b, n, scan) })
		}
	}
}

func benchDecision(b *testing.B, n int, scan bool) {
	{
		{
			s := New(Config{})
			s.SetWarm(true)
			s.scanOnly = scan
			const perHive = 8
			for h := 0; h < n/perHive+1; h++ {
				var ws []Worker
				for i := 0; i < perHive && h*perHive+i < n; i++ {
					x := w(fmt.Sprint("g/", i), "m", 4)
					x.GPUUtilPct = float64((h*perHive + i) % 50)
					ws = append(ws, x)
				}
				s.UpdateHive(fmt.Sprint("h", h), ws, nil, t0)
			}
			r := req("r", "m")
			b.ReportAllocs()
			b.ResetTimer()
			for i := 0; b.Loop(); i++ {
				r.ID = "r"
				g, err := s.Request(r, t0)
				if g == nil || err != nil {
					b.Fatal("no grant")
				}
				s.Release(g.Lease.ID, t0)
			}
		}
	}
}

// BenchmarkWaitingMemory holds 100,000 requests waiting for one model, from
// 10 keys, and reports the heap they take.
func BenchmarkWaitingMemory(b *testing.B) {
	const n = 100_000
	for b.Loop() {
		s := New(Config{QueueLimit: n})
		s.SetWarm(true)
		s.UpdateHive("h", []Worker{w("g/1", "m", 1)}, nil, t0)
		mustGrant(b, s, req("busy", "m"), t0)
		reqs := make([]Request, n)
		for i := range reqs {
			reqs[i] = keyed(fmt.Sprintf("entry-7.m3k9x.%d", i), fmt.Sprint("key", i%10), 0, 1)
		}
		var before, after runtime.MemStats
		runtime.GC()
		runtime.ReadMemStats(&before)
		for _, r := range reqs {
			if _, err := s.Request(r, t0); err != nil {
				b.Fatal(err)
			}
		}
		runtime.GC()
		runtime.ReadMemStats(&after)
		if s.Waiting() != n {
			b.Fatalf("%d waiting", s.Waiting())
		}
		per := float64(after.HeapAlloc-before.HeapAlloc) / n
		b.ReportMetric(per, "bytes/waiting")
		b.ReportMetric(float64(after.HeapAlloc-before.HeapAlloc)/(1<<20), "MiB/100k")
	}
}
