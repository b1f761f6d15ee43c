package scheduler

import (
	"errors"
	"testing"
	"time"
)

func pinned(id, model, hive, worker string) Request {
	r := req(id, model)
	r.Hive, r.Worker = hive, worker
	return r
}

// TestPin_RequestForOneWorker: a request naming a worker (a Responses API
// follow-up) is granted on that worker only, waiting for its slot, and on
// any worker once that one is gone, failing, down, offline or serving
// another model.
func TestPin_RequestForOneWorker(t *testing.T) {
	unhealthy := w("g/1", "m", 1)
	unhealthy.Healthy = false
	down := w("g/1", "m", 1)
	down.Down = true
	later := t0.Add(time.Second)
	cases := []struct {
		name string
		cold bool          // the queen has not heard from every hive yet
		h1   []Worker      // hive h1's workers (h2 always has g/2 serving m, 1 slot)
		full bool          // h1/g/1's slots are all leased before the request
		age  time.Duration // since h1 last reported
		// want is the worker granted at once ("" to wait); then is what
		// happens next, and wantThen the worker the waiting request gets.
		want     string
		then     func(s *Scheduler, first Grant) []Grant
		wantThen string
	}{
		{name: "free preferred worker, though another is as free", h1: []Worker{w("g/1", "m", 1)}, want: "h1/g/1"},
		{name: "preferred worker named by an alias of its model", h1: []Worker{w("g/1", "M-Q4_K_M.gguf", 1)}, want: "h1/g/1"},
		{name: "full preferred worker: wait, then its slot", h1: []Worker{w("g/1", "m", 1)}, full: true, want: "",
			then:     func(s *Scheduler, first Grant) []Grant { return s.Release(first.Lease.ID, later) },
			wantThen: "h1/g/1"},
		{name: "full preferred worker: another's free slot does not take it", h1: []Worker{w("g/1", "m", 1)}, full: true, want: "",
			then:     func(s *Scheduler, _ Grant) []Grant { g, _ := s.Tick(later); return g },
			wantThen: ""},
		{name: "waiting, then the worker leaves: any worker", h1: []Worker{w("g/1", "m", 1)}, full: true, want: "",
			then: func(s *Scheduler, _ Grant) []Grant {
				s.UpdateHive("h1", nil, nil, later)
				g, _ := s.Tick(later)
				return g
			},
			wantThen: "h2/g/2"},
		{name: "waiting, then the worker fails: any worker", h1: []Worker{w("g/1", "m", 1)}, full: true, want: "",
			then: func(s *Scheduler, _ Grant) []Grant {
				s.UpdateHive("h1", []Worker{unhealthy}, nil, later)
				g, _ := s.Tick(later)
				return g
			},
			wantThen: "h2/g/2"},
		{name: "worker gone", h1: nil, want: "h2/g/2"},
		{name: "worker serves another model", h1: []Worker{w("g/1", "other", 1)}, want: "h2/g/2"},
		{name: "worker failing", h1: []Worker{unhealthy}, want: "h2/g/2"},
		{name: "worker down", h1: []Worker{down}, want: "h2/g/2"},
		{name: "worker's hive silent", h1: []Worker{w("g/1", "m", 1)}, age: 4 * time.Second, want: "h2/g/2"},
		{name: "new queen: an unknown worker is waited for", cold: true, h1: nil, want: "",
			then: func(s *Scheduler, _ Grant) []Grant {
				return s.UpdateHive("h1", []Worker{w("g/1", "m", 1)}, nil, later)
			},
			wantThen: "h1/g/1"},
		{name: "new queen warms up without the worker: any worker", cold: true, h1: nil, want: "",
			then: func(s *Scheduler, _ Grant) []Grant {
				s.SetWarm(true)
				g, _ := s.Tick(later)
				return g
			},
			wantThen: "h2/g/2"},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			s := New(Config{})
			s.SetWarm(!c.cold)
			if c.h1 != nil || !c.cold {
				s.UpdateHive("h1", c.h1, nil, t0.Add(-c.age))
			}
			s.UpdateHive("h2", []Worker{w("g/2", "m", 1)}, nil, t0)
			var first Grant
			if c.full {
				first = mustGrant(t, s, pinned("first", "m", "h1", "g/1"), t0)
			}
			g, err := s.Request(pinned("r", "m", "h1", "g/1"), t0)
			if err != nil {
				t.Fatalf("err %v", err)
			}
			if got := grantedTo(g); got != c.want {
				t.Fatalf("granted to %q, want %q", got, c.want)
			}
			if c.then == nil {
				return
			}
			var got string
			for _, g := range c.then(s, first) {
				if g.Request.ID == "r" {
					got = grantedTo(&g)
				}
			}
			if got != c.wantThen {
				t.Fatalf("then granted to %q, want %q", got, c.wantThen)
			}
		})
	}
}

func grantedTo(g *Grant) string {
	if g == nil {
		return ""
	}
	return g.Lease.Hive + "/" + g.Lease.Worker
}

// TestPin_DoesNotHoldUpOthers: requests waiting for one busy worker leave
// the other workers to everyone else, are counted as waiting for the model,
// time out like any request, and can be cancelled.
func TestPin_DoesNotHoldUpOthers(t *testing.T) {
	s := New(Config{})
	s.SetWarm(true)
	s.UpdateHive("h1", []Worker{w("g/1", "m", 1)}, nil, t0)
	s.UpdateHive("h2", []Worker{w("g/2", "m", 1)}, nil, t0)
	mustGrant(t, s, pinned("busy", "m", "h1", "g/1"), t0)
	for _, id := range []string{"p1", "p2"} {
		if g, err := s.Request(pinned(id, "m", "h1", "g/1"), t0); g != nil || err != nil {
			t.Fatalf("%s: grant %v, err %v; want it to wait for h1/g/1", id, g, err)
		}
	}
	if g := mustGrant(t, s, req("any", "m"), t0); grantedTo(&g) != "h2/g/2" {
		t.Fatalf("unpinned request went to %s", grantedTo(&g))
	}
	if ms := s.Models(t0); len(ms) != 1 || ms[0].Waiting != 2 || ms[0].Leases != 2 {
		t.Fatalf("models %+v, want m with 2 waiting and 2 leases", ms)
	}
	if !s.Cancel("p1") || s.Waiting() != 1 {
		t.Fatalf("cancel: %d waiting", s.Waiting())
	}
	_, fails := s.Tick(t0.Add(31 * time.Second))
	if len(fails) != 1 || fails[0].Request.ID != "p2" || !errors.Is(fails[0].Err, ErrTimeout) {
		t.Fatalf("fails %+v, want p2 timed out", fails)
	}
	if s.Waiting() != 0 || len(s.pinned) != 0 {
		t.Fatalf("%d waiting, %d worker queues left", s.Waiting(), len(s.pinned))
	}
}

// TestPin_LapsedRequestKeepsItsPlace: a request that waited for a worker
// that then left joins its model's queue ahead of younger requests.
func TestPin_LapsedRequestKeepsItsPlace(t *testing.T) {
	s := New(Config{})
	s.SetWarm(true)
	s.UpdateHive("h1", []Worker{w("g/1", "m", 1)}, nil, t0)
	s.UpdateHive("h2", []Worker{w("g/2", "m", 1)}, nil, t0)
	mustGrant(t, s, req("a", "m"), t0)
	b := mustGrant(t, s, req("b", "m"), t0)
	if g, _ := s.Request(pinned("old", "m", "h1", "g/1"), t0); g != nil {
		t.Fatal("pinned request granted on a full worker")
	}
	if g, _ := s.Request(req("young", "m"), t0); g != nil {
		t.Fatal("request granted with every slot leased")
	}
	s.UpdateHive("h1", nil, nil, t0)
	s.Tick(t0)
	grants := s.Release(b.Lease.ID, t0)
	if len(grants) != 1 || grants[0].Request.ID != "old" {
		t.Fatalf("grants %+v, want the older request first", grants)
	}
}
