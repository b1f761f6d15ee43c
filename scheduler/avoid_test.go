package scheduler

import (
	"testing"
)

// TestAvoid_NeverGrantsWhatTheRequestAvoids: a migrated stream's
// continuation avoids the worker that broke off and any hive its entry node
// could not reach, whether it is granted at once, waits for a slot, or
// follows its conversation's worker.
// TestAvoid_DoesNotHoldUpOthers: a continuation waiting for another
// worker, ahead of a request that any worker may serve, does not keep the
// worker it avoids from that request.
func TestAvoid_DoesNotHoldUpOthers(t *testing.T) {
	s := New(Config{})
	s.SetWarm(true)
	s.UpdateHive("h1", []Worker{w("g/1", "m", 1)}, nil, t0)
	s.UpdateHive("h2", []Worker{w("g/1", "m", 1)}, nil, t0)
	busy1, busy2 := mustGrant(t, s, req("busy1", "m"), t0), mustGrant(t, s, req("busy2", "m"), t0)
	if grantedTo(&busy1) != "h1/g/1" || grantedTo(&busy2) != "h2/g/1" {
		t.Fatalf("busy on %s and %s", grantedTo(&busy1), grantedTo(&busy2))
	}
	cont := req("cont", "m")
	cont.Avoid = []Avoid{{"h1", "g/1"}}
	for _, r := range []Request{cont, req("next", "m")} {
		if g, err := s.Request(r, t0); g != nil || err != nil {
			t.Fatalf("%s: granted %v, err %v; want it to wait", r.ID, grantedTo(g), err)
		}
	}
	got := map[string]string{}
	for _, lease := range []Grant{busy1, busy2} {
		for _, g := range s.Release(lease.Lease.ID, t0.Add(1)) {
			got[g.Request.ID] = grantedTo(&g)
		}
	}
	if got["next"] != "h1/g/1" || got["cont"] != "h2/g/1" {
		t.Fatalf("granted %v, want next on h1/g/1 (freed first) and cont on h2/g/1", got)
	}
}

// TestAvoid_PrefersAnotherHive: a continuation whose worker broke off on a
// live hive goes to another hive when one can take it at once, else to
// the broken worker's neighbour.
func TestAvoid_PrefersAnotherHive(t *testing.T) {
	for _, c := range []struct {
		name      string
		h2Busy    bool
		want      string
		elsewhere []string
	}{
		{name: "without a preference: the least loaded, first by name", want: "h1/g/2"},
		{name: "another hive free", elsewhere: []string{"h1"}, want: "h2/g/1"},
		{name: "another hive busy: the neighbour", elsewhere: []string{"h1"}, h2Busy: true, want: "h1/g/2"},
	} {
		t.Run(c.name, func(t *testing.T) {
			s := New(Config{})
			s.SetWarm(true)
			s.UpdateHive("h1", []Worker{w("g/1", "m", 1), w("g/2", "m", 1)}, nil, t0)
			s.UpdateHive("h2", []Worker{w("g/1", "m", 1)}, nil, t0)
			if c.h2Busy {
				r := req("busy", "m")
				r.Avoid = []Avoid{{"h1", ""}}
				mustGrant(t, s, r, t0)
			}
			r := req("r", "m")
			r.Avoid, r.Elsewhere = []Avoid{{"h1", "g/1"}}, c.elsewhere
			g, err := s.Request(r, t0)
			if err != nil {
				t.Fatal(err)
			}
			if got := grantedTo(g); got != c.want {
				t.Fatalf("granted to %q, want %q", got, c.want)
			}
		})
	}
}

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
