package scheduler

import (
	"fmt"
	"math/rand/v2"
	"slices"
	"testing"
	"time"
)

func conv(id, c string) Request {
	r := req(id, "m")
	r.Conversation = c
	return r
}

func TestAffinity(t *testing.T) {
	setup := func() *Scheduler {
		s := New(Config{})
		s.SetWarm(true)
		s.UpdateHive("h", []Worker{w("g/1", "m", 1), w("g/2", "m", 1)}, nil, t0)
		return s
	}
	t.Run("the next turn goes back to the same worker", func(t *testing.T) {
		s := setup()
		first := mustGrant(t, s, conv("t1", "c"), t0)
		s.Release(first.Lease.ID, t0)
		// Least-loaded would now take turns (g/1 was granted last);
		// affinity sends the turn back.
		for i := range 5 {
			g := mustGrant(t, s, conv(fmt.Sprint("t", i+2), "c"), t0)
			if g.Lease.Worker != first.Lease.Worker {
				t.Fatalf("turn %d on %s, want %s", i+2, g.Lease.Worker, first.Lease.Worker)
			}
			s.Release(g.Lease.ID, t0)
		}
	})
	t.Run("a full worker is waited for, then any worker", func(t *testing.T) {
		s := setup()
		first := mustGrant(t, s, conv("t1", "c"), t0)
		if g, err := s.Request(conv("t2", "c"), t0); g != nil || err != nil {
			t.Fatalf("second turn while its worker is busy: %v %v, want it to wait for that worker", g, err)
		}
		// Its worker frees first: it gets it.
		g := s.Release(first.Lease.ID, t0.Add(100*time.Millisecond))
		if len(g) != 1 || g[0].Lease.Worker != first.Lease.Worker {
			t.Fatalf("granted %+v, want the conversation's worker", g)
		}
		// Busy again, and it stays busy: after AffinityWait the turn
		// goes to the other, free worker.
		if gs, err := s.Request(conv("t3", "c"), t0.Add(200*time.Millisecond)); gs != nil || err != nil {
			t.Fatalf("third turn: %v %v", gs, err)
		}
		later := t0.Add(200*time.Millisecond + DefaultAffinityWait + time.Millisecond)
		s.UpdateHive("h", []Worker{w("g/1", "m", 1), w("g/2", "m", 1)}, []HiveLease{{ID: g[0].Lease.ID, Worker: g[0].Lease.Worker}}, later)
		gs, _ := s.Tick(later)
		if len(gs) != 1 || gs[0].Request.ID != "t3" || gs[0].Lease.Worker == first.Lease.Worker {
			t.Fatalf("after the wait: %+v, want t3 on the other worker", gs)
		}
	})
	t.Run("never more than two rounds of slots wait for a worker", func(t *testing.T) {
		s := setup()
		mustGrant(t, s, conv("busy", "c"), t0)
		s.Request(conv("w1", "c"), t0) // waits for its worker (1 slot)
		s.Request(conv("w2", "c"), t0) // and so does this one
		g, err := s.Request(conv("w3", "c"), t0)
		if err != nil || g == nil || g.Lease.Worker == "" {
			t.Fatalf("a second waiter: %v %v, want the free worker at once", g, err)
		}
	})
	t.Run("a turn whose worker is gone goes anywhere", func(t *testing.T) {
		s := setup()
		first := mustGrant(t, s, conv("t1", "c"), t0)
		s.Release(first.Lease.ID, t0)
		other := "g/1"
		if first.Lease.Worker == "g/1" {
			other = "g/2"
		}
		s.UpdateHive("h", []Worker{w(other, "m", 1)}, nil, t0)
		if g := mustGrant(t, s, conv("t2", "c"), t0); g.Lease.Worker != other {
			t.Fatalf("on %s", g.Lease.Worker)
		}
	})
}

// Requests granted since a worker's last report count against its VRAM: a
// burst cannot place more on a GPU than fits.
func TestVRAMAfterGrant(t *testing.T) {
	s := New(Config{ModelVRAMMB: map[string]uint64{"m": 6000}})
	s.SetWarm(true)
	x := w("g/1", "m", 8) // 24000 total, 4000 used: room for 3 requests of 6000
	s.UpdateHive("h", []Worker{x}, nil, t0)
	granted := 0
	for i := range 8 {
		if g, _ := s.Request(req(fmt.Sprint("r", i), "m"), t0); g != nil {
			granted++
		}
	}
	if granted != 3 {
		t.Fatalf("granted %d, want 3 (20000 MiB free, 6000 each)", granted)
	}
	// The next report shows the VRAM they took; it is the truth again.
	x.VRAMUsedMB = 22000
	s.UpdateHive("h", []Worker{x}, nil, t0.Add(time.Second))
	if g, _ := s.Request(req("after", "m"), t0.Add(time.Second)); g != nil {
		t.Fatalf("granted with 2000 MiB free")
	}
}

// The index picks what a full scan would, whatever happened before.
func TestIndex_PicksLikeAScan(t *testing.T) {
	rng := rand.New(rand.NewPCG(3, 4))
	s := New(Config{})
	s.SetWarm(true)
	var ws []Worker
	for i := range 40 {
		x := w(fmt.Sprint("g/", i), "m", 1+rng.IntN(3))
		x.GPUUtilPct = float64(rng.IntN(5) * 10)
		ws = append(ws, x)
	}
	s.UpdateHive("h", ws, nil, t0)
	var leases []string
	for step := range 3000 {
		switch rng.IntN(4) {
		case 0, 1:
			want := scanPick(s, "m", t0)
			g, _ := s.Request(req(fmt.Sprint("r", step), "m"), t0)
			got := (*worker)(nil)
			if g != nil {
				got = s.workers["h/"+g.Lease.Worker]
				leases = append(leases, g.Lease.ID)
			}
			if got != want {
				t.Fatalf("step %d: picked %v, a scan picks %v", step, got, want)
			}
			if g == nil {
				s.Cancel(fmt.Sprint("r", step))
			}
		case 2:
			if len(leases) > 0 {
				i := rng.IntN(len(leases))
				s.Release(leases[i], t0)
				leases = append(leases[:i], leases[i+1:]...)
			}
		case 3:
			i := rng.IntN(len(ws))
			ws[i].GPUUtilPct = float64(rng.IntN(5) * 10)
			var hl []HiveLease
			for _, l := range s.Leases() {
				hl = append(hl, HiveLease{ID: l.ID, Worker: l.Worker})
			}
			s.UpdateHive("h", ws, hl, t0)
		}
	}
}

func scanPick(s *Scheduler, key string, now time.Time) *worker {
	var best *worker
	for _, w := range s.byKey[key] {
		if s.eligible(w, Request{}, key, now) && (best == nil || better(w, best)) {
			best = w
		}
	}
	return best
}

// A turn that waits for its conversation's worker keeps its key's fair
// place: it does not wait behind every older request of a flooding key.
func TestAffinity_KeepsFairPlace(t *testing.T) {
	s := New(Config{})
	s.SetWarm(true)
	s.UpdateHive("h", []Worker{w("g/1", "m", 1)}, nil, t0)
	bTurn := func(id string) Request {
		r := keyed(id, "b", 0, 1)
		r.Conversation = "chat-b"
		return r
	}
	g := mustGrant(t, s, bTurn("b1"), t0)
	for i := range 10 {
		s.Request(keyed(fmt.Sprint("a", i), "a", 0, 1), t0)
	}
	if gs, err := s.Request(bTurn("b2"), t0); gs != nil || err != nil {
		t.Fatalf("b's next turn: %v %v, want it to wait", gs, err)
	}
	var order []string
	for {
		next := s.Release(g.Lease.ID, t0)
		if len(next) == 0 {
			break
		}
		g = next[0]
		order = append(order, g.Request.ID)
	}
	i := slices.Index(order, "b2")
	if i < 0 || i > 2 {
		t.Fatalf("served %v: b2 at %d, want within the first three (one of a's per turn)", order, i)
	}
}

// The index stays a valid heap, and picks what a scan picks, when whole
// reports change every worker's figures at once, and with workers that may
// take nothing (unhealthy, saturated) among them.
func TestIndex_BulkReports(t *testing.T) {
	rng := rand.New(rand.NewPCG(7, 8))
	s := New(Config{})
	s.SetWarm(true)
	ws := make([]Worker, 60)
	var leases []string
	for round := range 300 {
		now := t0.Add(time.Duration(round) * time.Millisecond)
		for i := range ws {
			ws[i] = w(fmt.Sprint("g/", i), "m", 1+rng.IntN(3))
			ws[i].GPUUtilPct = float64(rng.IntN(10) * 10)
			ws[i].Healthy = rng.IntN(10) > 0
			ws[i].VRAMUsedMB = uint64(rng.IntN(20000))
		}
		var hl []HiveLease
		for _, l := range s.Leases() {
			hl = append(hl, HiveLease{ID: l.ID, Worker: l.Worker})
		}
		s.UpdateHive("h", ws, hl, now)
		h := s.byKey["m"]
		for j := 1; j < len(h); j++ {
			if s.indexLess(h[j], h[(j-1)/2]) {
				t.Fatalf("round %d: heap out of order at %d", round, j)
			}
			if h[j].pos[slot(h[j], "m")] != j {
				t.Fatalf("round %d: position of %s wrong", round, h[j].id)
			}
		}
		for range 5 {
			want := scanPick(s, "m", now)
			got := s.pickIndexed("m", Request{}, now)
			if got != want {
				t.Fatalf("round %d: index picks %v, scan %v", round, got, want)
			}
			if g, _ := s.Request(req(fmt.Sprint("r", round, len(leases)), "m"), now); g != nil {
				leases = append(leases, g.Lease.ID)
			} else {
				s.Cancel(fmt.Sprint("r", round, len(leases)))
			}
		}
		for len(leases) > 10 {
			s.Release(leases[0], now)
			leases = leases[1:]
		}
	}
}
