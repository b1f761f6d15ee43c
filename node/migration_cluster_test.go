package node_test

import (
	"fmt"
	"testing"
	"time"

	"github.com/rbee/rbee/internal/testutil"
	"github.com/rbee/rbee/node"
	"github.com/rbee/rbee/node/nodetest"
	"github.com/rbee/rbee/wsapi"
)

// A migration an entry node reports reaches the queen's events: over the
// uplink from another node, directly from the queen's own proxy.
func TestCluster_MigrationsReachTheQueenEvent(t *testing.T) {
	a := nodetest.Start(t, "a")
	b := nodetest.Start(t, "b", nodetest.WithJoin(a.GossipAddr()))
	testutil.Eventually(t, 10*time.Second, "b's reports reach queen a", func() error {
		if q, err := agreedQueen(a, b); err != nil || q != "a" {
			return fmt.Errorf("queen %q: %v", q, err)
		}
		for _, h := range a.Registry().Hives(time.Now()) {
			if h.HiveID == "b" && h.Online {
				return nil
			}
		}
		return fmt.Errorf("b not online at a")
	})
	at := time.Now().UTC().Truncate(time.Millisecond)
	fromB := wsapi.Migration{Type: wsapi.TypeMigration, At: at, Entry: "b", Model: "m", From: "a/llm/1", To: "b/llm/2",
		Tokens: 120, PauseMS: 400, Result: wsapi.MigrationContinued}
	fromA := wsapi.Migration{Type: wsapi.TypeMigration, At: at, Entry: "a", Model: "m", From: "b/llm/2", Tokens: 7,
		Result: wsapi.MigrationFailed, Reason: "no other worker serves m"}
	node.ReportMigration(b.Node, fromB)
	node.ReportMigration(a.Node, fromA)

	feed := dialFeed(t, a.HTTPAddr())
	qe := feed.waitEvent(t, 10*time.Second, "queen event listing both migrations", func(ev any) bool {
		qe, ok := ev.(*wsapi.QueenEvent)
		return ok && len(qe.Migrations) == 2
	}).(*wsapi.QueenEvent)
	for _, want := range []wsapi.Migration{fromA, fromB} {
		found := false
		for _, m := range qe.Migrations {
			found = found || (m.Entry == want.Entry && m.At.Equal(want.At) && m.From == want.From && m.Result == want.Result &&
				m.Tokens == want.Tokens && m.Reason == want.Reason)
		}
		if !found {
			t.Errorf("queen event lists %+v, without %+v", qe.Migrations, want)
		}
	}
}
