package node_test

import (
	"context"
	"errors"
	"strings"
	"testing"
	"time"

	"github.com/rbee/rbee/gossip"
	"github.com/rbee/rbee/internal/testutil"
	"github.com/rbee/rbee/node/nodetest"
	"github.com/rbee/rbee/node/proxy"
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
	if r, err := post(context.Background(), e.HTTPAddr(), proxy.PathChat, chat("extra", false)); err != nil || r.status != 200 {
		t.Fatalf("before the leave: %d %q %v", r.status, r.body, err)
	}
	if err := h.Leave(5 * time.Second); err != nil {
		t.Fatal(err)
	}
	start := time.Now()
	r, err := post(context.Background(), e.HTTPAddr(), proxy.PathChat, chat("extra", false))
	if err != nil || r.status != 503 || !strings.Contains(r.body, "its only hive, extra-hive, left") {
		t.Fatalf("after the leave: %d %q %v (after %v), want 503 naming the hive", r.status, r.body, err, time.Since(start))
	}
}
