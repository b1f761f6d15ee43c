package scheduler

import (
	"fmt"
	"testing"
	"time"
)

// TestStandby_SpreadsOverFullWorkers: requests that queued before the
// model's service time was known stand by one to a worker once it is, not
// on the worker that just freed a slot, though its GPU figures, sampled
// while it was finishing, make it look the idlest. A conversation's first
// turn stays where it went, so piling them up would keep three sessions
// on one worker for good.
func TestStandby_SpreadsOverFullWorkers(t *testing.T) {
	s := New(Config{Standby: 1})
	s.SetWarm(true)
	ws := []Worker{w("g/1", "m", 1), w("g/2", "m", 1), w("g/3", "m", 1), w("g/4", "m", 1)}
	s.UpdateHive("h", ws, nil, t0)
	var running []Grant
	for i := range 8 {
		if g, _ := s.Request(conv(fmt.Sprint("r", i), fmt.Sprint("c", i)), t0); g != nil {
			running = append(running, *g)
		}
	}
	if len(running) != 4 {
		t.Fatalf("%d granted at once, want one a worker", len(running))
	}
	// The hive reports g/1, which is finishing its request, at low GPU
	// use, the others busy.
	var hl []HiveLease
	for _, g := range running {
		hl = append(hl, HiveLease{ID: g.Lease.ID, Worker: g.Lease.Worker, Model: "m"})
	}
	for i := range ws {
		ws[i].GPUUtilPct = 90
	}
	ws[0].GPUUtilPct = 5
	s.UpdateHive("h", ws, hl, t0.Add(250*time.Millisecond))
	var on1 Grant
	for _, g := range running {
		if g.Lease.Worker == "g/1" {
			on1 = g
		}
	}
	per := map[string]int{}
	for _, g := range s.Release(on1.Lease.ID, t0.Add(300*time.Millisecond)) {
		per[g.Lease.Worker]++
	}
	for _, x := range ws {
		if per[x.Name] != 1 {
			t.Fatalf("grants per worker %v, want one on each", per)
		}
	}
}
