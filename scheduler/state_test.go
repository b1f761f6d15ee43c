package scheduler

import (
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
		{"hive offline wins over all", Load{Health: "failing", Slots: 1}, StateOffline, "stopped reporting"},
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
			state, _ := State(Load{Fresh: tc.age < 3*time.Second, Health: map[bool]string{false: "failing"}[tc.worker.Healthy],
				Leases: n, Slots: tc.worker.Slots, GPUUtilPct: tc.worker.GPUUtilPct}, s.SaturatedPct())
			g, _ := s.Request(Request{ID: "probe", Model: "m", Deadline: now.Add(time.Minute)}, now)
			if granted := g != nil; granted != Available(state) {
				t.Errorf("state %s, scheduler granted = %v", state, granted)
			}
		})
	}
}
