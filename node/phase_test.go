package node_test

import (
	"fmt"
	"testing"
	"time"

	"github.com/rbee/rbee/internal/testutil"
	"github.com/rbee/rbee/node/nodetest"
	"github.com/rbee/rbee/wsapi"
)

// TestCluster_HivesReportInPhase: every hive's periodic reports land at the
// start of each period (wsapi.NextReport), whenever its session began, so
// that the queen reads them together. On a ticker started with each session,
// as before, each hive kept the phase its session happened to start at.
func TestCluster_HivesReportInPhase(t *testing.T) {
	const hives = 8
	key := mustKey(t)
	nodes := []*nodetest.Node{nodetest.Start(t, "h0", nodetest.WithKey(key), nodetest.WithCollector(staticWorkers()))}
	for i := 1; i < hives; i++ {
		nodes = append(nodes, nodetest.Start(t, fmt.Sprintf("h%d", i), nodetest.WithKey(key),
			nodetest.WithJoin(nodes[0].GossipAddr()), nodetest.WithCollector(staticWorkers())))
	}
	var queen string
	testutil.Eventually(t, 15*time.Second, "all agree on a queen", func() (err error) {
		queen, err = agreedQueen(nodes...)
		return err
	})
	q := byName(nodes, queen)
	testutil.Eventually(t, 15*time.Second, "every hive online", func() error {
		online := 0
		for _, h := range q.Registry().Hives(time.Now()) {
			if h.Online {
				online++
			}
		}
		if online != hives {
			return fmt.Errorf("%d of %d online", online, hives)
		}
		return nil
	})

	// nodetest's telemetry interval is 100 ms: each hive reports within
	// its first 10 ms (the window), plus the timer's lateness on a busy
	// machine. A hive out of phase reports at a fixed offset anywhere in
	// the period: all eight under half of it by chance is 1 in 256.
	period := nodetest.Config(t, "x").TelemetryInterval
	late := period / 2
	feed := dialFeed(t, q.HTTPAddr())
	inPhase, all := map[string]int{}, map[string]int{}
	// Until every hive has sent enough reports to judge (about 1.5 s): a
	// machine too busy to run eight nodes at full pace gets longer.
	const enough = 15
	deadline := time.After(30 * time.Second)
	for collecting := true; collecting; {
		select {
		case ev := <-feed.events:
			ht, ok := ev.(*wsapi.HiveTelemetry)
			if !ok {
				continue
			}
			all[ht.HiveID]++
			if ht.Timestamp.Sub(ht.Timestamp.Truncate(period)) < late {
				inPhase[ht.HiveID]++
			}
			collecting = false
			for _, n := range nodes {
				if all[n.Name()] < enough {
					collecting = true
				}
			}
		case <-deadline:
			collecting = false
		}
	}
	for _, n := range nodes {
		name := n.Name()
		if all[name] < enough {
			t.Errorf("%s: %d reports in 30s, want %d", name, all[name], enough)
			continue
		}
		// Most, not all: a report the race detector or a busy CI
		// machine held back past the half period is no sign of a hive
		// out of phase, whose reports all keep one offset, in or out.
		if inPhase[name]*10 < all[name]*6 {
			t.Errorf("%s: %d of %d reports within %v of the period's start, want at least 60%%", name, inPhase[name], all[name], late)
		}
	}
}
