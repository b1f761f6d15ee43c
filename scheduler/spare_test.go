package scheduler

import (
	"slices"
	"testing"
	"time"
)

// spareCluster is one hive with worker g/1 of model m and the given slots,
// whose service time is measured at svc by one finished lease (none: 0).
func spareCluster(t *testing.T, slots int, svc time.Duration) *Scheduler {
	t.Helper()
	s := New(Config{Standby: -1}) // a request that finds no slot waits here
	s.SetWarm(true)
	s.UpdateHive("h", []Worker{w("g/1", "m", slots)}, nil, t0)
	if svc > 0 {
		g := mustGrant(t, s, req("warm", "m"), t0)
		s.Release(g.Lease.ID, t0.Add(svc))
	}
	return s
}

func spareAsk(id string) Request { return Request{ID: id, Entry: "e2", Model: "m"} }

func TestSpare(t *testing.T) {
	at := t0.Add(time.Second)
	cases := []struct {
		name  string
		slots int
		svc   time.Duration
		ask   func(Request) Request
		setup func(t *testing.T, s *Scheduler)
		n     int
		want  int
	}{
		{name: "lends free slots but the last", slots: 4, svc: 20 * time.Millisecond, n: 8, want: 3},
		{name: "a one-slot worker lends none", slots: 1, svc: 20 * time.Millisecond, n: 1, want: 0},
		{name: "not before the model's requests are timed", slots: 4, n: 1, want: 0},
		{name: "not for long requests", slots: 4, svc: 2 * time.Second, n: 1, want: 0},
		{name: "not while a request waits", slots: 2, svc: 20 * time.Millisecond, n: 1, want: 0,
			setup: func(t *testing.T, s *Scheduler) {
				mustGrant(t, s, req("a", "m"), at)
				mustGrant(t, s, req("b", "m"), at)
				if g, err := s.Request(req("c", "m"), at); g != nil || err != nil {
					t.Fatalf("c: %v %v, want it to wait", g, err)
				}
				s.Release(s.Leases()[0].ID, at)
			}},
		{name: "not for a capped tenant", slots: 4, svc: 20 * time.Millisecond, n: 1, want: 0,
			ask: func(r Request) Request { r.Key, r.MaxConcurrent = "k", 2; return r }},
		{name: "not for a batch tenant", slots: 4, svc: 20 * time.Millisecond, n: 1, want: 0,
			ask: func(r Request) Request { r.Class = ClassBatch; return r }},
		{name: "not for a conversation", slots: 4, svc: 20 * time.Millisecond, n: 1, want: 0,
			ask: func(r Request) Request { r.Conversation = "c1"; return r }},
		{name: "not for one worker", slots: 4, svc: 20 * time.Millisecond, n: 1, want: 0,
			ask: func(r Request) Request { r.Hive, r.Worker = "h", "g/1"; return r }},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			s := spareCluster(t, c.slots, c.svc)
			if c.setup != nil {
				c.setup(t, s)
			}
			r := spareAsk("ask")
			if c.ask != nil {
				r = c.ask(r)
			}
			gs := s.Spare(r, c.n, at)
			if len(gs) != c.want {
				t.Fatalf("%d spare leases, want %d", len(gs), c.want)
			}
			ids := map[string]bool{}
			for _, g := range gs {
				if !g.Lease.Spare || g.Lease.Entry != "e2" || ids[g.Request.ID] {
					t.Fatalf("grant %+v: want a spare lease of e2 with its own request id", g)
				}
				ids[g.Request.ID] = true
			}
			if n, _ := s.WorkerLeases("h", "g/1"); c.want > 0 && n != c.want {
				t.Fatalf("worker counts %d leases, want the %d spare ones", n, c.want)
			}
		})
	}
}

func TestSpare_Revoke(t *testing.T) {
	at := t0.Add(time.Second)
	s := spareCluster(t, 4, 20*time.Millisecond)
	spares := s.Spare(spareAsk("ask"), 3, at)
	if len(spares) != 3 {
		t.Fatalf("%d spare leases, want 3", len(spares))
	}
	if r := s.Revokes(); len(r) != 0 {
		t.Fatalf("revokes %v before anything waits", r)
	}
	// One slot is left: the next request takes it, the one after waits,
	// and the spare leases are asked back.
	mustGrant(t, s, req("a", "m"), at)
	if g, err := s.Request(req("b", "m"), at); g != nil || err != nil {
		t.Fatalf("b: %v %v, want it to wait", g, err)
	}
	r := s.Revokes()
	var want []string
	for _, g := range spares {
		want = append(want, g.Lease.ID)
	}
	slices.Sort(want)
	if !slices.Equal(r["e2"], want) || len(r) != 1 {
		t.Fatalf("revokes %v, want e2's %v", r, want)
	}
	if again := s.Revokes(); len(again) != 0 {
		t.Fatalf("revokes %v asked twice", again)
	}
	// The entry node gives one back unused: b gets its slot, and the
	// service time stays what it was (20 ms), not the time it was held.
	gs := s.ReleaseSpare(spares[0].Lease.ID, SpareUse{Unused: true}, at.Add(5*time.Millisecond))
	if len(gs) != 1 || gs[0].Request.ID != "b" {
		t.Fatalf("after a spare lease came back: %+v, want b granted (%s)", gs, s.Explain("m", at.Add(5*time.Millisecond)))
	}
	if svc := s.service[RequestKey("m")]; svc != 20*time.Millisecond {
		t.Fatalf("service time %v after an unused spare lease, want 20ms", svc)
	}
	// One that ran says how long, and for which conversation.
	s.ReleaseSpare(spares[1].Lease.ID, SpareUse{Ran: 40 * time.Millisecond, Conversation: "c1"}, at.Add(6*time.Millisecond))
	if svc := s.service[RequestKey("m")]; svc <= 20*time.Millisecond || svc >= 40*time.Millisecond {
		t.Fatalf("service time %v after a 40 ms use, want between 20 and 40 ms", svc)
	}
	if s.convs["c1"] != "h/g/1" {
		t.Fatalf("conversation c1 remembered on %q, want h/g/1", s.convs["c1"])
	}
	// Requests that ran on spare leases keep the model's time current:
	// grown long, the model gets no more spare leases.
	before := s.Granted()
	s.NoteUses(1000)
	for range 100 {
		s.NoteRan("m", 10, 30*time.Second)
	}
	if s.Granted() != before+1000 {
		t.Fatalf("granted %d, want %d: uses count as requests", s.Granted(), before+1000)
	}
	if svc := s.service[RequestKey("m")]; svc < s.cfg.StandbyBelow {
		t.Fatalf("service time %v after uses of 3 s, want past %v (no more spare leases)", svc, s.cfg.StandbyBelow)
	}
}

// TestSpare_Uses: a hive reports each use of a spare lease under its own id
// (the lease's, a slash, a number); the queen counts the lease once, keeps
// it while its entry node holds it between uses, and lets it go with the
// entry node's session, or once the hive no longer lists it then.
func TestSpare_Uses(t *testing.T) {
	at := t0.Add(time.Second)
	s := spareCluster(t, 4, 20*time.Millisecond)
	spares := s.Spare(spareAsk("ask"), 2, at)
	a, b := spares[0].Lease, spares[1].Lease
	report := func(now time.Time, ids ...string) {
		t.Helper()
		var hl []HiveLease
		for _, id := range ids {
			hl = append(hl, HiveLease{ID: id, Worker: "g/1", Model: "m", Entry: "e2", RequestID: "r-" + id, Since: now})
		}
		s.UpdateHive("h", []Worker{w("g/1", "m", 4)}, hl, now)
	}
	leases := func() int { n, _ := s.WorkerLeases("h", "g/1"); return n }
	report(at, a.ID+"/1")
	if leases() != 2 {
		t.Fatalf("%d leases with one spare lease in use, want 2 (no use counted twice)", leases())
	}
	report(at.Add(time.Second), a.ID+"/2", b.ID+"/3")
	if n, _ := s.WorkerInUse("h", "g/1"); n != 2 {
		t.Fatalf("%d in use with both spare leases listed, want 2", n)
	}
	report(at.Add(2 * time.Second))
	if leases() != 2 {
		t.Fatalf("%d leases while the entry node holds both unused, want 2", leases())
	}
	if n, _ := s.WorkerInUse("h", "g/1"); n != 0 {
		t.Fatalf("the worker shows %d in use while both spare leases are idle, want 0", n)
	}
	// Long past the start timeout: a spare lease is its entry node's.
	report(at.Add(time.Minute))
	s.Tick(at.Add(time.Minute))
	if leases() != 2 {
		t.Fatalf("%d leases after a minute, want 2: spare leases are not reclaimed as unstarted", leases())
	}
	// The entry node's session ends while b is in use: each goes with
	// the first report that lists no use of it (a use may have started
	// since the last report), a with the next, b when the hive no longer
	// lists it.
	report(at.Add(61*time.Second), b.ID+"/4")
	s.DropSpares("e2")
	if leases() != 2 {
		t.Fatalf("%d leases right after the entry node left, want 2 until its hive reports", leases())
	}
	report(at.Add(62*time.Second), b.ID+"/4")
	if leases() != 1 {
		t.Fatalf("%d leases, want b's while the hive lists it", leases())
	}
	report(at.Add(63 * time.Second))
	if leases() != 0 {
		t.Fatalf("%d leases once the hive no longer lists b, want 0", leases())
	}
	// An orphan in use stays while its hive lists it, however long its
	// request runs, and goes when the hive falls silent.
	c := s.Spare(spareAsk("ask2"), 1, at.Add(63*time.Second))[0].Lease
	report(at.Add(63*time.Second), c.ID+"/9")
	s.DropSpares("e2")
	report(at.Add(66*time.Second), c.ID+"/9")
	s.Tick(at.Add(67 * time.Second))
	if leases() != 1 {
		t.Fatalf("%d leases while the hive lists c in use, want 1", leases())
	}
	s.Tick(at.Add(70 * time.Second))
	if leases() != 0 {
		t.Fatalf("%d leases once c's hive fell silent, want 0", leases())
	}
	report(at.Add(70 * time.Second))
	// A use of a lease this queen never granted (another queen's) is
	// adopted as one request served.
	report(at.Add(64*time.Second), "old.1/7")
	if leases() != 1 {
		t.Fatalf("%d leases with another queen's spare lease in use, want 1", leases())
	}
}

// TestSpare_RevokedWhereTheyWouldFail: spare leases on a worker that turns
// unhealthy, or on a hive that departs, are asked back: requests on them
// would fail and be retried.
func TestSpare_RevokedWhereTheyWouldFail(t *testing.T) {
	at := t0.Add(time.Second)
	s := spareCluster(t, 4, 20*time.Millisecond)
	a := s.Spare(spareAsk("ask"), 1, at)[0].Lease
	sick := w("g/1", "m", 4)
	sick.Healthy = false
	s.UpdateHive("h", []Worker{sick}, nil, at)
	if r := s.Revokes(); len(r["e2"]) != 1 || r["e2"][0] != a.ID {
		t.Fatalf("revokes %v, want %s: its worker is unhealthy", r, a.ID)
	}
	s = spareCluster(t, 4, 20*time.Millisecond)
	b := s.Spare(spareAsk("ask"), 1, at)[0].Lease
	s.HiveGone("h", "left", at)
	if r := s.Revokes(); len(r["e2"]) != 1 || r["e2"][0] != b.ID {
		t.Fatalf("revokes %v, want %s: its hive left", r, b.ID)
	}
}
