package main

// Partial faults: the network between two nodes fails in one protocol or
// one direction while the rest of the cluster sees both, the failures a
// pulled cable cannot make.

import (
	"fmt"
	"strconv"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/rbee/rbee/internal/netlab"
)

// partialFault is one way the links between the queen and one node fail.
type partialFault struct {
	name string
	// cut makes the fault between the queen's host q and the node's x.
	cut func(q, x *netlab.Host)
}

var (
	// rejectTCP: the queen's firewall refuses the node's TCP to its API
	// and gossip ports (answered with a reset, as a live process's closed
	// port is) while UDP gossip flows both ways. The node sees refused
	// connections and would take the queen for dead.
	rejectTCP = partialFault{"reject-tcp", func(q, x *netlab.Host) {
		for _, port := range []int{netHTTPPort, netGossipPort} {
			q.Firewall("-A", "INPUT", "-p", "tcp", "-s", x.IP, "--dport", strconv.Itoa(port), "-j", "REJECT", "--reject-with", "tcp-reset")
		}
	}}
	// bridged: nothing passes between the queen and the node, while the
	// third node reaches both, so its indirect probes keep both alive.
	bridged = partialFault{"bridged", func(q, x *netlab.Host) {
		q.Firewall("-A", "INPUT", "-s", x.IP, "-j", "DROP")
		x.Firewall("-A", "INPUT", "-s", q.IP, "-j", "DROP")
	}}
	// oneWay: what the node sends the queen is lost; what the queen sends
	// arrives.
	oneWay = partialFault{"one-way", func(q, x *netlab.Host) {
		q.Firewall("-A", "INPUT", "-s", x.IP, "-j", "DROP")
	}}
)

// partialFaultUnderLoad builds queen a and hives b and c (a simulated worker
// each; a is oldest, so b is next in the queen order and c last), cuts the
// filtered node ("b" or "c") from a as f does while clients send through
// both hives, and reports what the clients of the other hive (unaffected)
// and of the filtered one saw, and the queens every node named.
func partialFaultUnderLoad(t *testing.T, f partialFault, filtered string, fault time.Duration) (unaffected, stranded loadStats, queens map[string][]string) {
	nc := newNetCluster(t)
	ha, hb, hc := nc.host("a"), nc.host("b"), nc.host("c")
	a := nc.node(ha, "")
	simArgs := []string{"--slots", "8", "--tokens-per-second", "0", "--max-tokens", "1"}
	b := nc.node(hb, a.gossipAddr, nc.sim(hb, "m", simArgs...)...)
	c := nc.node(hc, a.gossipAddr, nc.sim(hc, "m", simArgs...)...)
	all := []*proc{a, b, c}
	if q := nc.waitConverged(all, 30*time.Second); q != "a" {
		t.Fatalf("queen %s, want a", q)
	}
	x, hx, other := b, hb, c
	if filtered == "c" {
		x, hx, other = c, hc, b
	}
	nc.waitServed(other.httpAddr, "m")
	nc.waitServed(x.httpAddr, "m")

	stop := make(chan struct{})
	var faultAt atomic.Int64
	watches := map[string]*queenWatch{}
	var watchWGs []*sync.WaitGroup
	for _, p := range all {
		w, wg := nc.watchQueen(p, stop)
		watches[p.name], watchWGs = w, append(watchWGs, wg)
	}
	var loadWG sync.WaitGroup
	loadWG.Go(func() { unaffected = nc.runLoad(other, "m", 4, stop, &faultAt) })
	loadWG.Go(func() { stranded = nc.runLoad(x, "m", 4, stop, &faultAt) })
	// Fixed lengths of time, not conditions: a second of load before the
	// fault, the fault itself, and the fault's aftermath.
	time.Sleep(time.Second)
	faultAt.Store(time.Now().UnixNano())
	f.cut(ha, hx)
	time.Sleep(fault)
	for _, p := range all {
		if p.Exited() {
			t.Fatalf("%s exited", p.name)
		}
	}
	close(stop)
	loadWG.Wait()
	for _, wg := range watchWGs {
		wg.Wait()
	}
	queens = map[string][]string{}
	for name, w := range watches {
		_, queens[name] = w.handovers()
	}
	return unaffected, stranded, queens
}

// TestFault_PartialCutsKeepOneQueenAndServe: for a firewall that refuses one
// node's TCP to the queen (with the node next in the queen order and last),
// a cut between one node and the queen that a third node bridges, and a
// one-way loss, the cluster keeps one queen throughout, no request through
// the unaffected node fails, and the cut-off node serves its own clients
// through a peer. Before: the refused node confirmed the queen dead and
// claimed the seat ~15 times a second (5-78% of all requests failed), and a
// bridged or one-way node held its clients 31 s, then answered 503.
func TestFault_PartialCutsKeepOneQueenAndServe(t *testing.T) {
	cases := []struct {
		f        partialFault
		filtered string
	}{
		{rejectTCP, "b"},
		{rejectTCP, "c"},
		{bridged, "b"},
		{oneWay, "b"},
	}
	for _, tc := range cases {
		t.Run(fmt.Sprintf("%s/%s", tc.f.name, tc.filtered), func(t *testing.T) {
			unaffected, stranded, queens := partialFaultUnderLoad(t, tc.f, tc.filtered, 8*time.Second)
			t.Logf("%s, node %s filtered: through the unaffected node: %s", tc.f.name, tc.filtered, unaffected)
			t.Logf("%s, node %s filtered: through the filtered node: %s", tc.f.name, tc.filtered, stranded)
			t.Logf("queens named: %v", queens)
			for name, seen := range queens {
				if len(seen) != 1 || seen[0] != "a" {
					t.Errorf("%s named queens %v during the fault, want only a", name, seen)
				}
			}
			if unaffected.notFound+unaffected.serverErr+unaffected.other > 0 || unaffected.ok == 0 {
				t.Errorf("clients of the unaffected node saw failures: %s", unaffected)
			}
			if stranded.ok == 0 || stranded.notFound+stranded.other > 0 {
				t.Errorf("clients of the filtered node: %s", stranded)
			}
			// Requests entering the filtered node may wait for it to
			// find itself cut off (about 2 s), never for the queue
			// timeout (30 s).
			if stranded.maxLatency > 10*time.Second || stranded.serverErr > 0 {
				t.Errorf("the filtered node held or failed its clients: %s", stranded)
			}
		})
	}
}
