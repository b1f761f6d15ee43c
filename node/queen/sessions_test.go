package queen

import (
	"context"
	"net/http"
	"net/http/httptest"
	"strings"
	"testing"
	"time"

	"github.com/rbee/rbee/gossip"
	"github.com/rbee/rbee/wsapi"
)

// TestQueen_SessionServedOnceScheduling: the election names this node queen
// a moment before Run starts its scheduler. A node whose session opens in
// between sends at once the lease requests it has waiting (the new queen's
// first session after a failover); they must reach the scheduler, not be
// dropped for want of one, since the node asks again only on a new session.
// In a CI run seven requests waited 30 s for a queen that was there.
func TestQueen_SessionServedOnceScheduling(t *testing.T) {
	q, err := New(Config{Name: "q", HTTPAddr: "127.0.0.1:1",
		Members: fakeMembers{self: "q", addrs: map[string]string{"h": "127.0.0.1:2"}, gone: map[string]gossip.Status{}},
		Feed:    wsapi.NewHub(0), HiveTTL: 3 * time.Second, ForgetAfter: time.Minute, EventInterval: time.Second})
	if err != nil {
		t.Fatal(err)
	}
	srv := httptest.NewServer(http.HandlerFunc(q.HandleSession))
	defer srv.Close()
	ctx, cancel := context.WithTimeout(t.Context(), 10*time.Second)
	defer cancel()
	s, err := wsapi.DialHive(ctx, "ws"+strings.TrimPrefix(srv.URL, "http"), &wsapi.SessionOptions{Name: "h", Version: "test"})
	if err != nil {
		t.Fatal(err)
	}
	defer s.CloseNow()
	// What a node's uplink sends first on a new session: the requests
	// that wait, then its report.
	if err := s.Write(ctx, ask("r1", "m")); err != nil {
		t.Fatal(err)
	}
	if err := s.Write(ctx, report("h", wsapi.ProcessStats{Group: "g", Instance: "1", Model: ptr("m"), Slots: 1})); err != nil {
		t.Fatal(err)
	}
	// A session served at once hands the report to the registry (after
	// the request, which had no scheduler to go to). One that waits for
	// the scheduler does not: the poll runs out, and that is the pass.
	for deadline := time.Now().Add(time.Second); len(q.registry.Hives(time.Now())) == 0 && time.Now().Before(deadline); {
		time.Sleep(5 * time.Millisecond)
	}

	runCtx, stopRun := context.WithCancel(ctx)
	ran := make(chan error, 1)
	go func() { ran <- q.Run(runCtx) }()
	defer func() {
		stopRun()
		<-ran
	}()
	for {
		msg, err := s.Read(ctx)
		if err != nil {
			t.Fatalf("no grant for the request sent before the queen scheduled: %v", err)
		}
		if g, ok := msg.(*wsapi.LeaseGrant); ok {
			if g.RequestID != "r1" || g.Worker != "g/1" {
				t.Fatalf("grant %+v, want r1's on g/1", g)
			}
			return
		}
	}
}
