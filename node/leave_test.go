package node_test

import (
	"context"
	"errors"
	"strings"
	"testing"
	"time"

	"github.com/rbee/rbee/gossip"
	"github.com/rbee/rbee/internal/testutil"
	"github.com/rbee/rbee/node/api"
	"github.com/rbee/rbee/node/nodetest"
)

// A hive that leaves is out of scheduling at once: a request for a model
// only it served fails now, naming the hive and what happened.
func TestHiveLeaves_ItsOnlyModelFailsAtOnce(t *testing.T) {
	fw := newFakeWorker(t, "w1")
	q := nodetest.Start(t, "q", nodetest.WithRoles(gossip.RoleQueen))
	h := nodetest.Start(t, "extra-hive", nodetest.WithRoles(gossip.RoleHive), nodetest.WithJoin(q.GossipAddr()), nodetest.WithCollector(workersOf("extra", 1, fw)))
	e := nodetest.Start(t, "e", nodetest.WithRoles(), nodetest.WithJoin(q.GossipAddr()), nodetest.WithQueue(16, 20*time.Second))
	testutil.Eventually(t, 10*time.Second, "extra served", func() error {
		for _, qs := range mustQueues(q) {
			if qs.Model == "extra" && qs.Slots > 0 {
				return nil
			}
		}
		return errors.New("not yet")
	})
	if r, err := post(context.Background(), e.HTTPAddr(), api.PathChat, chat("extra", false)); err != nil || r.status != 200 {
		t.Fatalf("before the leave: %d %q %v", r.status, r.body, err)
	}
	if err := h.Leave(5 * time.Second); err != nil {
		t.Fatal(err)
	}
	start := time.Now()
	r, err := post(context.Background(), e.HTTPAddr(), api.PathChat, chat("extra", false))
	if err != nil || r.status != 503 || !strings.Contains(r.body, "its only hive, extra-hive, left") {
		t.Fatalf("after the leave: %d %q %v (after %v), want 503 naming the hive", r.status, r.body, err, time.Since(start))
	}
}

// A hive that leaves gracefully finishes the requests it serves: the entry
// node that proxies them does not cut them when gossip says the hive left
// (only when it says the hive failed).
func TestHiveLeaves_RequestsInFlightFinish(t *testing.T) {
	fw := newFakeWorker(t, "w1")
	fw.setHold(true)
	q := nodetest.Start(t, "q", nodetest.WithRoles(gossip.RoleQueen))
	h := nodetest.Start(t, "h", nodetest.WithRoles(gossip.RoleHive), nodetest.WithJoin(q.GossipAddr()), nodetest.WithCollector(workersOf("m", 1, fw)))
	e := nodetest.Start(t, "e", nodetest.WithRoles(), nodetest.WithJoin(q.GossipAddr()))
	testutil.Eventually(t, 10*time.Second, "m served, and h known to the entry node", func() error {
		known := false
		for _, m := range e.Members() {
			known = known || (m.Name == "h" && m.Status == gossip.StatusAlive)
		}
		for _, qs := range mustQueues(q) {
			if qs.Model == "m" && qs.Slots > 0 && known {
				return nil
			}
		}
		return errors.New("not yet")
	})
	res := make(chan apiResult, 1)
	go func() {
		r, err := post(context.Background(), e.HTTPAddr(), api.PathChat, chat("m", false))
		if err != nil {
			r.status, r.body = -1, err.Error()
		}
		res <- r
	}()
	fw.waitInFlight(t, 1)
	left := make(chan error, 1)
	go func() { left <- h.Leave(30 * time.Second) }()
	testutil.Eventually(t, 10*time.Second, "the entry node sees h left", func() error {
		for _, m := range e.Members() {
			if m.Name == "h" && m.Status == gossip.StatusLeft {
				return nil
			}
		}
		return errors.New("not yet")
	})
	select {
	case r := <-res:
		t.Fatalf("the request ended (%d %q) as the hive left, before its worker answered", r.status, r.body)
	default:
	}
	fw.setHold(false)
	if r := <-res; r.status != 200 {
		t.Fatalf("request in flight while its hive drained: %d %q, want 200", r.status, r.body)
	}
	if n, c := fw.arrived.Load(), fw.canceled.Load(); n != 1 || c != 0 {
		t.Fatalf("the worker got %d requests, %d canceled; want the one in flight left to finish", n, c)
	}
	if err := <-left; err != nil {
		t.Fatal(err)
	}
}
