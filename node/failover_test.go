package node_test

import (
	"errors"
	"fmt"
	"testing"
	"time"

	"github.com/rbee/rbee/gossip"
	"github.com/rbee/rbee/internal/testutil"
	"github.com/rbee/rbee/node"
	"github.com/rbee/rbee/node/nodetest"
)

// TestFailover_CrashedQueenReplacedBeforeFailureDetection: failure detection
// here takes most of a minute, so survivors agree on a new queen within the
// test only because they confirm the crash themselves (the session reset, the
// ports refusing).
func TestFailover_CrashedQueenReplacedBeforeFailureDetection(t *testing.T) {
	slow := func(cfg *node.Config) {
		cfg.GossipTiming = gossip.LANTiming()
		cfg.GossipTiming.SuspicionMult = 200 // ~40 s before a silent member is declared dead
	}
	a := nodetest.Start(t, "a", slow)
	b := nodetest.Start(t, "b", slow, nodetest.WithJoin(a.GossipAddr()))
	c := nodetest.Start(t, "c", slow, nodetest.WithJoin(a.GossipAddr()))
	testutil.Eventually(t, 10*time.Second, "all follow a, with sessions up", func() error {
		q, err := agreedQueen(a, b, c)
		if err == nil && q != "a" {
			err = fmt.Errorf("queen %s", q)
		}
		if err == nil && len(a.Registry().Hives(time.Now())) < 3 {
			err = errors.New("not every node reports to a yet")
		}
		// b and c must know each other before a dies: they met
		// through a alone.
		for _, n := range []*nodetest.Node{b, c} {
			if err == nil && len(n.Members()) < 3 {
				err = fmt.Errorf("%s knows %d members", n.Name(), len(n.Members()))
			}
		}
		return err
	})
	node.Crash(a.Node)
	testutil.Eventually(t, 15*time.Second, "survivors agree on a new queen", func() error {
		q, err := agreedQueen(b, c)
		if err == nil && q == "a" {
			err = errors.New("still a")
		}
		return err
	})
}
