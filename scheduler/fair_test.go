package scheduler

import (
	"errors"
	"fmt"
	"math/rand/v2"
	"strings"
	"testing"
	"time"
)

func keyed(id, key string, class int, weight float64) Request {
	r := req(id, "m")
	r.Key, r.Class, r.Weight, r.Arrived = key, class, weight, t0
	return r
}

// served runs the cluster's one slot: each release grants the next waiting
// request; it returns the keys in the order they were served.
func serveAll(t *testing.T, s *Scheduler, first Grant, now time.Time) []string {
	t.Helper()
	var order []string
	g := first
	for {
		next := s.Release(g.Lease.ID, now)
		if len(next) == 0 {
			return order
		}
		g = next[0]
		order = append(order, g.Request.Key)
	}
}

func TestFair_Order(t *testing.T) {
	type sent struct {
		key    string
		class  int
		weight float64
		n      int
	}
	cases := []struct {
		name string
		sent []sent // queued in this order, behind one busy slot
		want string // the keys served, in order
	}{
		{name: "one key: first come first served", sent: []sent{{"a", 0, 1, 3}}, want: "a a a"},
		{name: "interactive before batch, whatever came first",
			sent: []sent{{"b", ClassBatch, 1, 2}, {"i", ClassInteractive, 1, 2}}, want: "i i b b"},
		{name: "a flood does not hold back a later key",
			sent: []sent{{"a", 0, 1, 6}, {"b", 0, 1, 2}}, want: "a b a b a a a a"},
		{name: "three keys take turns", sent: []sent{{"a", 0, 1, 3}, {"b", 0, 1, 3}, {"c", 0, 1, 3}},
			want: "a b c a b c a b c"},
		{name: "weight 2 gets two turns to one",
			sent: []sent{{"a", 0, 1, 4}, {"h", 0, 2, 8}}, want: "h a h h a h h a h h a h"},
		{name: "weights 1, 2, 4",
			sent: []sent{{"a", 0, 1, 2}, {"b", 0, 2, 4}, {"c", 0, 4, 8}},
			want: "c b c c a b c c b c c a b c"},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			s := New(Config{})
			s.SetWarm(true)
			s.UpdateHive("h", []Worker{w("g/1", "m", 1)}, nil, t0)
			first := mustGrant(t, s, req("busy", "m"), t0)
			i := 0
			for _, x := range tc.sent {
				for range x.n {
					i++
					if g, err := s.Request(keyed(fmt.Sprint(x.key, i), x.key, x.class, x.weight), t0); g != nil || err != nil {
						t.Fatalf("should wait: %v %v", g, err)
					}
				}
			}
			if got := strings.Join(serveAll(t, s, first, t0.Add(time.Second)), " "); got != tc.want {
				t.Fatalf("served %q, want %q", got, tc.want)
			}
		})
	}
}

// A batch request that waited AgingAfter goes before interactive ones.
func TestFair_Aging(t *testing.T) {
	s := New(Config{AgingAfter: 10 * time.Second})
	s.SetWarm(true)
	s.UpdateHive("h", []Worker{w("g/1", "m", 1)}, nil, t0)
	first := mustGrant(t, s, req("busy", "m"), t0)
	old := keyed("old-batch", "b", ClassBatch, 1)
	s.Request(old, t0)
	for i := range 3 {
		r := keyed(fmt.Sprint("i", i), "i", ClassInteractive, 1)
		r.Arrived = t0.Add(9 * time.Second)
		s.Request(r, t0.Add(9*time.Second))
	}
	s.UpdateHive("h", []Worker{w("g/1", "m", 1)}, nil, t0.Add(9*time.Second))
	// At 9 s the batch request has not aged: interactive goes first.
	g := s.Release(first.Lease.ID, t0.Add(9*time.Second))
	if len(g) != 1 || g[0].Request.Key != "i" {
		t.Fatalf("at 9 s granted %+v, want interactive", g)
	}
	// At 10 s it has.
	g = s.Release(g[0].Lease.ID, t0.Add(10*time.Second))
	if len(g) != 1 || g[0].Request.ID != "old-batch" {
		t.Fatalf("at 10 s granted %+v, want the aged batch request", g)
	}
}

func TestCaps(t *testing.T) {
	s := New(Config{})
	s.SetWarm(true)
	s.UpdateHive("h", []Worker{w("g/1", "m", 1)}, nil, t0)
	capped := func(id string) Request {
		r := keyed(id, "alice", 0, 1)
		r.MaxConcurrent = 2
		return r
	}
	first := mustGrant(t, s, capped("1"), t0)
	if g, err := s.Request(capped("2"), t0); g != nil || err != nil {
		t.Fatalf("second request: %v %v, want it to wait", g, err)
	}
	_, err := s.Request(capped("3"), t0)
	var se *Error
	if !errors.As(err, &se) || se.Status != 429 || se.RetryAfter <= 0 || !strings.Contains(se.Msg, "max_concurrent") {
		t.Fatalf("third request: %v, want 429 with Retry-After", err)
	}
	if s.KeyActive("alice") != 2 {
		t.Fatalf("active %d, want 2", s.KeyActive("alice"))
	}
	// One ends: the waiting one runs, and there is room for one more.
	s.Release(first.Lease.ID, t0)
	if _, err := s.Request(capped("4"), t0); err != nil {
		t.Fatalf("after a release: %v", err)
	}
	s.Cancel("4")
	if s.KeyActive("alice") != 1 {
		t.Fatalf("active %d after a cancel, want 1", s.KeyActive("alice"))
	}
	// Another key is not affected.
	if _, err := s.Request(keyed("bob-1", "bob", 0, 1), t0); err != nil {
		t.Fatalf("bob: %v", err)
	}

	perMin := func(id string, at time.Time) error {
		r := keyed(id, "carol", 0, 1)
		r.PerMinute = 2
		_, err := s.Request(r, at)
		return err
	}
	if perMin("c1", t0) != nil || perMin("c2", t0.Add(10*time.Second)) != nil {
		t.Fatal("within the rate")
	}
	err = perMin("c3", t0.Add(20*time.Second))
	if !errors.As(err, &se) || se.Status != 429 || se.RetryAfter != 40*time.Second {
		t.Fatalf("third in a minute: %v, want 429 retry in 40 s", err)
	}
	if err := perMin("c4", t0.Add(61*time.Second)); err != nil {
		t.Fatalf("a minute later: %v", err)
	}
}

// TestFair_Bound checks the fairness bound on random workloads. With equal
// weights, a request that is the n-th of its key in line when it is queued
// is granted before more than (n+1) requests of each other key are: tags of
// one key are 1 apart, so at most n+1 of another key's tags fall between the
// last served tag and its own (the +1 is a tie). However many requests a
// flooding key has queued, a key that sends one at a time (n = 1) waits for
// at most two of each other key's.
func TestFair_Bound(t *testing.T) {
	rng := rand.New(rand.NewPCG(1, 2))
	for trial := range 300 {
		s := New(Config{QueueLimit: 1 << 20})
		s.SetWarm(true)
		slots := 1 + rng.IntN(4)
		s.UpdateHive("h", []Worker{w("g/1", "m", slots)}, nil, t0)
		keys := 2 + rng.IntN(3)
		var leases []string
		for i := range slots {
			leases = append(leases, mustGrant(t, s, req(fmt.Sprint("busy", i), "m"), t0).Lease.ID)
		}
		type wait struct {
			key   string
			n     int            // its place in its key's line when queued
			other map[string]int // grants of each other key since
		}
		waits := map[string]*wait{}
		inLine := map[string]int{}
		id := 0
		for step := range 500 {
			now := t0.Add(time.Duration(step) * time.Millisecond)
			if rng.IntN(3) > 0 {
				k := fmt.Sprint("k", rng.IntN(keys))
				n := 1
				if k == "k0" {
					n = 1 + rng.IntN(30) // k0 floods
				}
				for range n {
					id++
					rid := fmt.Sprint("r", id)
					g, err := s.Request(keyed(rid, k, 0, 1), now)
					switch {
					case err != nil:
						t.Fatal(err)
					case g != nil:
						leases = append(leases, g.Lease.ID)
					default:
						inLine[k]++
						waits[rid] = &wait{key: k, n: inLine[k], other: map[string]int{}}
					}
				}
				continue
			}
			if len(leases) == 0 {
				continue
			}
			i := rng.IntN(len(leases))
			l := leases[i]
			leases = append(leases[:i], leases[i+1:]...)
			for _, g := range s.Release(l, now) {
				leases = append(leases, g.Lease.ID)
				if w := waits[g.Request.ID]; w != nil {
					inLine[w.key]--
					delete(waits, g.Request.ID)
				}
				for rid, w := range waits {
					if w.key == g.Request.Key {
						continue
					}
					w.other[g.Request.Key]++
					if w.other[g.Request.Key] > w.n+1 {
						t.Fatalf("trial %d: %s (key %s, %d-th in its line) saw %d grants of %s while waiting, bound %d",
							trial, rid, w.key, w.n, w.other[g.Request.Key], g.Request.Key, w.n+1)
					}
				}
			}
		}
	}
}

// A request whose wait for its conversation's worker lapses still counts
// against its key's max_concurrent.
func TestCaps_LapsedAffinityWaitStillCounts(t *testing.T) {
	s := New(Config{})
	s.SetWarm(true)
	s.UpdateHive("h", []Worker{w("g/1", "m", 1), w("g/2", "m", 1)}, nil, t0)
	turn := func(id string) Request {
		r := keyed(id, "k", 0, 1)
		r.Conversation, r.MaxConcurrent = "c", 5
		return r
	}
	mustGrant(t, s, turn("t1"), t0)
	mustGrant(t, s, keyed("other", "o", 0, 1), t0) // g/2 busy too
	s.Request(turn("t2"), t0)                      // waits for t1's worker
	if s.KeyActive("k") != 2 {
		t.Fatalf("active %d, want 2", s.KeyActive("k"))
	}
	later := t0.Add(DefaultAffinityWait + time.Millisecond)
	s.UpdateHive("h", []Worker{w("g/1", "m", 1), w("g/2", "m", 1)}, nil, later)
	s.Tick(later)
	if s.KeyActive("k") != 2 {
		t.Fatalf("active %d after the wait lapsed, want still 2", s.KeyActive("k"))
	}
}

// A worker whose last report showed its GPU busy with rbee's own request is
// not taken for busy outside rbee the moment that request ends; a later
// report showing the GPU still busy is.
func TestOwnWorkIsNotOutsideWork(t *testing.T) {
	s := New(Config{})
	s.SetWarm(true)
	x := w("g/1", "m", 1)
	s.UpdateHive("h", []Worker{x}, nil, t0)
	g := mustGrant(t, s, req("a", "m"), t0)
	x.GPUUtilPct = 97 // the report sampled during a's generation
	s.UpdateHive("h", []Worker{x}, []HiveLease{{ID: g.Lease.ID, Worker: "g/1"}}, t0.Add(500*time.Millisecond))
	s.Release(g.Lease.ID, t0.Add(600*time.Millisecond))
	mustGrant(t, s, req("b", "m"), t0.Add(700*time.Millisecond))
	s.Release(s.Leases()[0].ID, t0.Add(800*time.Millisecond))
	s.UpdateHive("h", []Worker{x}, nil, t0.Add(3*time.Second)) // still 97% with nothing of rbee's
	if g, _ := s.Request(req("c", "m"), t0.Add(3*time.Second)); g != nil {
		t.Fatal("granted on a GPU busy outside rbee")
	}
}
