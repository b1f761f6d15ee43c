package scheduler

import (
	"testing"
)

// TestAvoid_NeverGrantsWhatTheRequestAvoids: a migrated stream's
// continuation avoids the worker that broke off and any hive its entry node
// could not reach, whether it is granted at once, waits for a slot, or
// follows its conversation's worker.
func TestAvoid_NeverGrantsWhatTheRequestAvoids(t *testing.T) {
	later := t0.Add(1)
	for _, c := range []struct {
		name  string
		avoid []Avoid
		full  string // a worker whose slot is taken first ("" none)
		conv  bool   // the conversation last went to h1/g/1
		want  string // granted at once, "" to wait
		then  string // granted once every lease is released
	}{
		{name: "nothing avoided: the least loaded, first by name", want: "h1/g/1"},
		{name: "the broken worker", avoid: []Avoid{{"h1", "g/1"}}, want: "h1/g/2"},
		{name: "the unreachable hive", avoid: []Avoid{{"h1", ""}}, want: "h2/g/1"},
		{name: "the conversation's worker", avoid: []Avoid{{"h1", "g/1"}}, conv: true, want: "h1/g/2"},
		{name: "every worker but a busy one: wait for it", avoid: []Avoid{{"h1", ""}}, full: "h2/g/1", want: "", then: "h2/g/1"},
		{name: "every hive: wait", avoid: []Avoid{{"h1", ""}, {"h2", ""}}, want: "", then: ""},
		{name: "the only worker left is the broken one: try it again", avoid: []Avoid{{"h1", "g/1"}, {"h1", "g/2"}, {"h2", ""}}, want: "h1/g/1"},
	} {
		t.Run(c.name, func(t *testing.T) {
			s := New(Config{})
			s.SetWarm(true)
			s.UpdateHive("h1", []Worker{w("g/1", "m", 1), w("g/2", "m", 1)}, nil, t0)
			s.UpdateHive("h2", []Worker{w("g/1", "m", 1)}, nil, t0)
			var held []Grant
			if c.conv {
				r := req("turn1", "m")
				r.Conversation = "conv"
				g := mustGrant(t, s, r, t0)
				if grantedTo(&g) != "h1/g/1" {
					t.Fatalf("first turn on %s", grantedTo(&g))
				}
				s.Release(g.Lease.ID, t0)
			}
			if c.full != "" {
				r := req("busy", "m")
				r.Avoid = []Avoid{{"h1", ""}}
				held = append(held, mustGrant(t, s, r, t0))
			}
			r := req("r", "m")
			r.Avoid = c.avoid
			if c.conv {
				r.Conversation = "conv"
			}
			g, err := s.Request(r, t0)
			if err != nil {
				t.Fatal(err)
			}
			if got := grantedTo(g); got != c.want {
				t.Fatalf("granted to %q, want %q", got, c.want)
			}
			if g != nil {
				return
			}
			var got string
			for _, h := range held {
				for _, g := range s.Release(h.Lease.ID, later) {
					if g.Request.ID == "r" {
						got = grantedTo(&g)
					}
				}
			}
			if gs, _ := s.Tick(later); got == "" {
				for _, g := range gs {
					if g.Request.ID == "r" {
						got = grantedTo(&g)
					}
				}
			}
			if got != c.then {
				t.Fatalf("then granted to %q, want %q", got, c.then)
			}
		})
	}
}
