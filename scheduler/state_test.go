package scheduler

import (
	"errors"
	"fmt"
	"strings"
	"testing"
	"time"
)

func TestState_OneRuleForEveryView(t *testing.T) {
	for _, tc := range []struct {
		name       string
		load       Load
		want       string
		wantReason string
	}{
		{"free slots", Load{Fresh: true, GPUUtilPct: 30, Slots: 2}, StateIdle, "free slots"},
		{"some slots leased", Load{Fresh: true, GPUUtilPct: 99, Leases: 1, Slots: 2}, StateBusy, "1 of 2 slots busy"},
		{"every slot leased", Load{Fresh: true, Leases: 2, Slots: 2}, StateSaturated, "all 2 slots busy"},
		{"no slots reported counts as one", Load{Fresh: true, Leases: 1}, StateSaturated, "all 1 slots busy"},
		{"GPU busy outside rbee", Load{Fresh: true, GPUUtilPct: 90, Slots: 2}, StateSaturated, "busy outside rbee"},
		{"GPU just below the rule", Load{Fresh: true, GPUUtilPct: 89.9, Slots: 2}, StateIdle, "free slots"},
		{"health failing wins over load", Load{Fresh: true, Health: "failing", Leases: 2, Slots: 2}, StateFailing, "fail (failing)"},
		{"failing stays failing with a reason", Load{Fresh: true, Health: HealthFailing, HealthReason: "x", Slots: 2}, StateFailing, "fail (failing)"},
		{"an unknown mark counts as failing", Load{Fresh: true, Health: "sick", Slots: 2}, StateFailing, "fail (sick)"},
		{"down says the hive's reason", Load{Fresh: true, Health: HealthDown, HealthReason: "GET http://127.0.0.1:9/health: connection refused", Slots: 2},
			StateDown, "the hive cannot reach it: GET http://127.0.0.1:9/health: connection refused"},
		{"down without a reason", Load{Fresh: true, Health: HealthDown, Slots: 1}, StateDown, "the hive cannot reach it"},
		{"down wins over load", Load{Fresh: true, Health: HealthDown, HealthReason: "r", Leases: 1, Slots: 1}, StateDown, "cannot reach it: r"},
		{"hive offline wins over all", Load{Health: "failing", Slots: 1}, StateOffline, "stopped reporting"},
		{"hive offline wins over down", Load{Health: HealthDown, HealthReason: "r", Slots: 1}, StateOffline, "stopped reporting"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			got, reason := State(tc.load, DefaultSaturatedPct)
			if got != tc.want || !strings.Contains(reason, tc.wantReason) {
				t.Errorf("State = %q (%q), want %q (containing %q)", got, reason, tc.want, tc.wantReason)
			}
			if a := Available(got); a != (got == StateIdle || got == StateBusy) {
				t.Errorf("Available(%q) = %v", got, a)
			}
		})
	}
}

// The scheduler grants exactly to the workers the state rule calls
// available: no view shows a worker idle that the scheduler refuses, or the
// other way round.
func TestState_SchedulerAgreesWithRule(t *testing.T) {
	t0 := time.Date(2026, 1, 1, 0, 0, 0, 0, time.UTC)
	for _, tc := range []struct {
		name   string
		worker Worker
		leases int
		age    time.Duration
	}{
		{"idle", Worker{Name: "g/1", Model: "m", Slots: 2, Healthy: true}, 0, 0},
		{"busy", Worker{Name: "g/1", Model: "m", Slots: 2, Healthy: true}, 1, 0},
		{"full", Worker{Name: "g/1", Model: "m", Slots: 2, Healthy: true}, 2, 0},
		{"outside work", Worker{Name: "g/1", Model: "m", Slots: 2, Healthy: true, GPUUtilPct: 95}, 0, 0},
		{"failing", Worker{Name: "g/1", Model: "m", Slots: 2}, 0, 0},
		{"down", Worker{Name: "g/1", Model: "m", Slots: 2, Down: true, DownReason: "connection refused"}, 0, 0},
		{"down and stale", Worker{Name: "g/1", Model: "m", Slots: 2, Down: true}, 0, 4 * time.Second},
		{"stale", Worker{Name: "g/1", Model: "m", Slots: 2, Healthy: true}, 0, 4 * time.Second},
	} {
		t.Run(tc.name, func(t *testing.T) {
			s := New(Config{})
			s.SetWarm(true)
			s.UpdateHive("h", []Worker{tc.worker}, nil, t0)
			for i := range tc.leases {
				if g, err := s.Request(Request{ID: "held" + string(rune('a'+i)), Model: "m", Deadline: t0.Add(time.Minute)}, t0); g == nil || err != nil {
					t.Fatalf("setup lease %d: %v %v", i, g, err)
				}
			}
			now := t0.Add(tc.age)
			n, _ := s.WorkerLeases("h", "g/1")
			health := map[bool]string{false: HealthFailing}[tc.worker.Healthy]
			if tc.worker.Down {
				health = HealthDown
			}
			state, _ := State(Load{Fresh: tc.age < 3*time.Second, Health: health, HealthReason: tc.worker.DownReason,
				Leases: n, Slots: tc.worker.Slots, GPUUtilPct: tc.worker.GPUUtilPct}, s.SaturatedPct())
			g, _ := s.Request(Request{ID: "probe", Model: "m", Deadline: now.Add(time.Minute)}, now)
			if granted := g != nil; granted != Available(state) {
				t.Errorf("state %s, scheduler granted = %v", state, granted)
			}
		})
	}
}

func downWorker(name, model, why string) Worker {
	x := w(name, model, 2)
	x.Healthy, x.Down, x.DownReason = false, true, why
	return x
}

// A model whose every worker is down is not listed as served, and a request
// for it fails at once with a 503 naming the workers and why, instead of
// waiting out its deadline; one worker coming up serves it again.
func TestState_DownWorkerFailsAtOnceNamingIt(t *testing.T) {
	s := New(Config{})
	s.SetWarm(true)
	const why = "GET http://127.0.0.1:9/health: connection refused"
	s.UpdateHive("hive-a", []Worker{downWorker("llm/9", "ghost", why)}, nil, t0)
	if ms := s.Models(t0); len(ms) != 0 {
		t.Errorf("Models = %+v, want none: a down worker serves nobody", ms)
	}
	g, err := s.Request(req("1", "ghost"), t0)
	var serr *Error
	want := `model "ghost": worker hive-a/llm/9 is down (` + why + `)`
	if g != nil || !errors.As(err, &serr) || serr.Status != 503 || serr.Msg != want {
		t.Fatalf("Request = %v, %v; want 503 %q", g, err, want)
	}
	if s.Waiting() != 0 {
		t.Errorf("%d requests waiting, want none", s.Waiting())
	}

	// A request waiting when the only worker goes down fails on the next
	// tick, not at its deadline.
	s.UpdateHive("hive-a", []Worker{w("llm/9", "ghost", 1)}, nil, t0)
	held := mustGrant(t, s, req("2", "ghost"), t0)
	if g, err := s.Request(req("3", "ghost"), t0); g != nil || err != nil {
		t.Fatalf("second request: %v %v, want it to wait", g, err)
	}
	s.UpdateHive("hive-a", []Worker{downWorker("llm/9", "ghost", why)}, []HiveLease{{ID: held.Lease.ID, Worker: "llm/9", Model: "ghost"}}, t0)
	_, fails := s.Tick(t0.Add(time.Second))
	if len(fails) != 1 || fails[0].Request.ID != "3" || fails[0].Err.Status != 503 || !strings.Contains(fails[0].Err.Msg, "is down ("+why+")") {
		t.Fatalf("Tick failures = %+v, want request 3 failed with the reason", fails)
	}

	// Up again: listed and served.
	s.UpdateHive("hive-a", []Worker{w("llm/9", "ghost", 2)}, nil, t0.Add(2*time.Second))
	mustGrant(t, s, req("4", "ghost"), t0.Add(2*time.Second))
	if ms := s.Models(t0.Add(2 * time.Second)); len(ms) != 1 || ms[0].Slots != 2 {
		t.Errorf("Models = %+v, want ghost with 2 slots", ms)
	}
}

// While another worker of the model is up, or only busy, requests wait for
// it as usual; the down one is still named when they time out.
func TestState_DownWorkerBesideLiveOnesOnlyExplains(t *testing.T) {
	s := New(Config{})
	s.SetWarm(true)
	s.UpdateHive("h", []Worker{w("g/1", "m", 1), downWorker("g/2", "m", "status 500")}, nil, t0)
	mustGrant(t, s, req("1", "m"), t0)
	if g, err := s.Request(req("2", "m"), t0); g != nil || err != nil {
		t.Fatalf("request beside a busy live worker: %v %v, want it to wait", g, err)
	}
	if got, want := s.Explain("m", t0), "workers: 1 all slots leased; worker h/g/2 is down (status 500)"; got != want {
		t.Errorf("Explain = %q, want %q", got, want)
	}
	if ms := s.Models(t0); len(ms) != 1 || ms[0].Slots != 1 || ms[0].Workers != 1 {
		t.Errorf("Models = %+v, want m with the live worker's 1 slot", ms)
	}
}

func TestExplain_NamesAFewDownWorkers(t *testing.T) {
	s := New(Config{})
	var ws []Worker
	for i := range 5 {
		ws = append(ws, downWorker(fmt.Sprint("g/", i), "m", ""))
	}
	s.UpdateHive("h", ws, nil, t0)
	want := "worker h/g/0 is down (the hive cannot reach it); worker h/g/1 is down (the hive cannot reach it); " +
		"worker h/g/2 is down (the hive cannot reach it); 2 more workers down"
	if got := s.Explain("m", t0); got != want {
		t.Errorf("Explain = %q, want %q", got, want)
	}
}
