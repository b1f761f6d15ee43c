package node_test

import (
	"context"
	"errors"
	"fmt"
	"net/http/httptest"
	"sync"
	"testing"
	"time"

	"github.com/rbee/rbee/internal/sim"
	"github.com/rbee/rbee/internal/testutil"
	"github.com/rbee/rbee/node"
	"github.com/rbee/rbee/node/api"
	"github.com/rbee/rbee/node/nodetest"
	"github.com/rbee/rbee/wsapi"
)

// simWorkers serves model m from n simulators of slots each, on one hive,
// answering at once with one token.
func simWorkers(t *testing.T, n, slots int) (endpointCollector, []*sim.Simulator) {
	return simWorkersOf(t, n, sim.Config{Model: "m", Slots: slots, MaxTokens: 1})
}

// simWorkersOf serves cfg.Model from n simulators of cfg, on one hive.
func simWorkersOf(t *testing.T, n int, cfg sim.Config) (endpointCollector, []*sim.Simulator) {
	t.Helper()
	c := endpointCollector{eps: map[string]string{}}
	var sims []*sim.Simulator
	for i := range n {
		s, err := sim.New(cfg)
		if err != nil {
			t.Fatal(err)
		}
		srv := httptest.NewServer(s.Handler())
		t.Cleanup(srv.Close)
		sims = append(sims, s)
		name := fmt.Sprint("s", i)
		c.workers = append(c.workers, wsapi.ProcessStats{Group: "sim", Instance: name, Model: ptr(cfg.Model), Slots: cfg.Slots, Simulated: true})
		c.eps["sim/"+name] = srv.URL
	}
	return c, sims
}

// TestRoute_SpareLeases: requests through an entry node and through a hive
// start on spare leases (no round trip to the queen each) once the model's
// requests are timed; when the two entry nodes together ask for more than
// the workers' slots, every request is still served, none on more slots
// than a worker has, and the spare leases go back to the queen.
func TestRoute_SpareLeases(t *testing.T) {
	ca, simsA := simWorkers(t, 1, 4)
	cb, simsB := simWorkers(t, 1, 4)
	a, b, entry := routeCluster(t, ca, cb)
	sims := append(simsA, simsB...)
	ctx := context.Background()
	one := func(n *nodetest.Node) error {
		r, err := post(ctx, n.HTTPAddr(), api.PathChat, chat("m", false))
		if err == nil && r.status != 200 {
			err = fmt.Errorf("status %d: %s", r.status, r.body)
		}
		return err
	}
	used := func(n *nodetest.Node, outcome string) float64 {
		return metricValue(t, scrape(t, n), `rbee_lease_spares_total{outcome="`+outcome+`"}`)
	}
	// One at a time, through the entry-only node (two hops) and through
	// hive b (one hop, or two when the queen grants a's worker).
	// The queen lends once it has timed the model's requests.
	for _, n := range []*nodetest.Node{entry, b} {
		testutil.Eventually(t, 10*time.Second, "requests start on spare leases", func() error {
			before := used(n, "used")
			for range 20 {
				if err := one(n); err != nil {
					t.Fatal(err)
				}
			}
			if u := used(n, "used") - before; u < 19 {
				return fmt.Errorf("%v of 20 requests started on a spare lease", u)
			}
			return nil
		})
	}
	// Both entry nodes at once, 16 clients each, against 8 slots: the
	// model's requests wait, the queen takes the spare leases back.
	var wg sync.WaitGroup
	errs := make(chan error, 32*20)
	for i := range 32 {
		n := []*nodetest.Node{entry, b}[i%2]
		wg.Go(func() {
			for range 20 {
				errs <- one(n)
			}
		})
	}
	wg.Wait()
	close(errs)
	for err := range errs {
		if err != nil {
			t.Fatal(err)
		}
	}
	wantPeaksWithin(t, sims, 4)
	if r := used(entry, "revoked") + used(b, "revoked"); r == 0 {
		t.Error("no spare lease was taken back while requests waited")
	}
	// Once the load is gone, the spare leases held go back within a
	// second or so, and the queen counts no lease.
	testutil.Eventually(t, 10*time.Second, "every lease back", func() error {
		if _, n := queueTotals(a); n != 0 {
			return fmt.Errorf("%d leases held", n)
		}
		return nil
	})
}

// TestRoute_SpareLeasesKeepConversationsOnTheirWorker: a conversation's
// first turn starts on a spare lease through one entry node, which the
// queen did not grant; its second turn, through another node, still goes
// to the worker that served the first (prefix affinity).
func TestRoute_SpareLeasesKeepConversationsOnTheirWorker(t *testing.T) {
	ca, simsA := simWorkers(t, 1, 4)
	cb, simsB := simWorkers(t, 1, 4)
	_, b, entry := routeCluster(t, ca, cb)
	sims := append(simsA, simsB...)
	ctx := context.Background()
	send := func(n *nodetest.Node, body string) int {
		t.Helper()
		before := make([]int64, len(sims))
		for i, s := range sims {
			before[i] = s.Stats().Served
		}
		r, err := post(ctx, n.HTTPAddr(), api.PathChat, body)
		if err == nil && r.status != 200 {
			err = fmt.Errorf("status %d: %s", r.status, r.body)
		}
		if err != nil {
			t.Fatal(err)
		}
		served := -1
		testutil.Eventually(t, 5*time.Second, "the turn counted", func() error {
			for i, s := range sims {
				if s.Stats().Served > before[i] {
					served = i
					return nil
				}
			}
			return errors.New("no simulator counted it yet")
		})
		return served
	}
	used := func(n *nodetest.Node) float64 {
		return metricValue(t, scrape(t, n), `rbee_lease_spares_total{outcome="used"}`)
	}
	for _, n := range []*nodetest.Node{entry, b} {
		testutil.Eventually(t, 10*time.Second, "requests start on spare leases", func() error {
			before := used(n)
			for range 10 {
				send(n, chat("m", false))
			}
			if u := used(n) - before; u < 9 {
				return fmt.Errorf("%v of 10 requests started on a spare lease", u)
			}
			return nil
		})
	}
	const convs = 20
	same, onSpare := 0, 0
	for i := range convs {
		q := fmt.Sprintf("question %d", i)
		turn1 := fmt.Sprintf(`{"model":"m","messages":[{"role":"user","content":%q}]}`, q)
		turn2 := fmt.Sprintf(`{"model":"m","messages":[{"role":"user","content":%q},{"role":"assistant","content":"a"},{"role":"user","content":"and?"}]}`, q)
		u := used(entry)
		first := send(entry, turn1)
		if used(entry) > u {
			onSpare++
		}
		if send(b, turn2) == first {
			same++
		}
	}
	t.Logf("%d of %d first turns on a spare lease; %d of %d second turns, through another node, on the first turn's worker", onSpare, convs, same, convs)
	if onSpare < convs-2 {
		t.Fatalf("%d of %d first turns started on a spare lease: the test does not exercise them", onSpare, convs)
	}
	// Two workers: by chance, half would be.
	if same < convs-2 {
		t.Fatalf("%d of %d second turns reached the first turn's worker", same, convs)
	}
}

// TestQueen_AReplacedSessionGivesBackItsSpareLeases: a node whose session
// to the queen is replaced by a newer one (it reconnected before the queen
// saw the old one fail) dropped the spare leases of the old one; the queen
// takes them back with the hive's next report, instead of counting them on
// the worker for as long as the new session lasts.
func TestQueen_AReplacedSessionGivesBackItsSpareLeases(t *testing.T) {
	key := mustKey(t)
	cw, _ := simWorkers(t, 1, 4)
	a := nodetest.Start(t, "a", nodetest.WithKey(key), nodetest.WithCollector(cw))
	testutil.Eventually(t, 10*time.Second, "a is queen with 4 slots", func() error {
		if n, _ := queueTotals(a); n != 4 {
			return fmt.Errorf("%d slots", n)
		}
		return nil
	})
	url := "ws://" + a.HTTPAddr() + wsapi.SessionPath
	opts := &wsapi.SessionOptions{Key: key, Name: "x", Version: node.Version}
	ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
	defer cancel()
	dial := func() *wsapi.Session {
		s, err := wsapi.DialHive(ctx, url, opts)
		if err != nil {
			t.Fatal(err)
		}
		t.Cleanup(func() { s.CloseNow() })
		return s
	}
	// answer reads until the answer to id, skipping what else comes.
	answer := func(s *wsapi.Session, id string) any {
		t.Helper()
		for {
			msg, err := s.Read(ctx)
			if err != nil {
				t.Fatal(err)
			}
			switch m := msg.(type) {
			case *wsapi.LeaseGrant:
				if m.RequestID == id {
					return m
				}
			case *wsapi.LeaseSpares:
				if m.RequestID == id {
					return m
				}
			}
		}
	}
	spares := func(s *wsapi.Session, id string, n int) int {
		t.Helper()
		if err := s.Write(ctx, &wsapi.LeaseSpareRequest{Type: wsapi.TypeLeaseSpareRequest, RequestID: id, Model: "m", Count: n}); err != nil {
			t.Fatal(err)
		}
		return len(answer(s, id).(*wsapi.LeaseSpares).Grants)
	}
	old := dial()
	// One request timed, so that the model gets spare leases.
	if err := old.Write(ctx, &wsapi.LeaseRequest{Type: wsapi.TypeLeaseRequest, RequestID: "x.1", Model: "m", WaitMS: 5000}); err != nil {
		t.Fatal(err)
	}
	g := answer(old, "x.1").(*wsapi.LeaseGrant)
	if err := old.Write(ctx, &wsapi.LeaseRelease{Type: wsapi.TypeLeaseRelease, LeaseID: g.LeaseID}); err != nil {
		t.Fatal(err)
	}
	// 4 slots, the last never lent: 3 spare leases at most.
	if n := spares(old, "x.s1", 3); n != 3 {
		t.Fatalf("%d spare leases, want 3", n)
	}
	if n := spares(old, "x.s2", 3); n != 0 {
		t.Fatalf("%d more spare leases with 3 lent, want 0", n)
	}
	fresh := dial()
	testutil.Eventually(t, 10*time.Second, "the old session's spare leases taken back", func() error {
		if n := spares(fresh, fmt.Sprint("x.s", time.Now().UnixNano()), 3); n != 3 {
			return fmt.Errorf("%d spare leases on the new session", n)
		}
		return nil
	})
}

// wantPeaksWithin fails t if a simulator saw more than slots requests at
// once (those waiting for one of its slots included).
func wantPeaksWithin(t *testing.T, sims []*sim.Simulator, slots int) {
	t.Helper()
	for i, s := range sims {
		st := s.Stats()
		if st.Peak > int64(slots) {
			t.Errorf("simulator %d saw %d requests at once, has %d slots", i, st.Peak, slots)
		}
		t.Logf("simulator %d: peak %d, served %d", i, st.Peak, st.Served)
	}
}
