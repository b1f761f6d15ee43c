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
	"github.com/rbee/rbee/node/api"
	"github.com/rbee/rbee/node/nodetest"
	"github.com/rbee/rbee/wsapi"
)

// simWorkers serves model m from n simulators of slots each, on one hive.
func simWorkers(t *testing.T, n, slots int) (endpointCollector, []*sim.Simulator) {
	t.Helper()
	c := endpointCollector{eps: map[string]string{}}
	var sims []*sim.Simulator
	for i := range n {
		s, err := sim.New(sim.Config{Model: "m", Slots: slots, TokensPerSecond: 0, MaxTokens: 1})
		if err != nil {
			t.Fatal(err)
		}
		srv := httptest.NewServer(s.Handler())
		t.Cleanup(srv.Close)
		sims = append(sims, s)
		name := fmt.Sprint("s", i)
		c.workers = append(c.workers, wsapi.ProcessStats{Group: "sim", Instance: name, Model: ptr("m"), Slots: slots, Simulated: true})
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
	for i, s := range sims {
		if st := s.Stats(); st.Peak > 4 {
			t.Errorf("simulator %d saw %d requests at once, has 4 slots", i, st.Peak)
		}
	}
	if r := used(entry, "revoked") + used(b, "revoked"); r == 0 {
		t.Error("no spare lease was taken back while requests waited")
	}
	// Once the load is gone, the spare leases held go back within a
	// second or so, and the queen counts no lease.
	testutil.Eventually(t, 10*time.Second, "every lease back", func() error {
		n := 0
		for _, q := range mustQueues(a) {
			n += q.Leases
		}
		if n != 0 {
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
