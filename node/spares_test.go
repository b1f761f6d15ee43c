package node_test

import (
	"context"
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
