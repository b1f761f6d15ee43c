package queen

import (
	"errors"
	"strings"
	"testing"
	"time"

	"github.com/rbee/rbee/gossip"
	"github.com/rbee/rbee/scheduler"
	"github.com/rbee/rbee/wsapi"
)

// A hive that only posts heartbeats is in the view and on the feed, online
// while it posts within the TTL, but the scheduler never hears of its
// workers: a request for its model waits, and its workers show unavailable.
func TestQueen_IngestShowsHeartbeatHiveButSchedulesNothing(t *testing.T) {
	t0 := time.Date(2026, 1, 1, 0, 0, 0, 0, time.UTC)
	peers := &fakePeers{present: map[string]bool{"e": true}}
	q := testQueen(t, peers, map[string]string{})
	q.startScheduling(t0)
	sub := q.cfg.Feed.Subscribe()
	defer q.cfg.Feed.Unsubscribe(sub)

	hb := report("seed-hive",
		wsapi.ProcessStats{PID: 1, Group: "llm", Instance: "8080", Model: ptr("llama-3.2-1b"), GPUUtilPct: 0},
		wsapi.ProcessStats{PID: 2, Group: "llm", Instance: "8081", Model: ptr("llama-3.2-1b"), Health: "failing"})
	hb.Type = ""
	hb.Leases = []wsapi.LeaseInfo{{LeaseID: "l", Worker: "llm/8080", Model: "llama-3.2-1b", Entry: "e"}}
	if err := q.Ingest(hb, t0); err != nil {
		t.Fatalf("Ingest: %v", err)
	}

	hives := q.registry.Hives(t0)
	if len(hives) != 1 || hives[0].HiveID != "seed-hive" || !hives[0].Online || len(hives[0].Workers) != 2 || len(hives[0].Leases) != 0 {
		t.Fatalf("registry = %+v, want seed-hive online with its 2 workers and no leases", hives)
	}
	for i, want := range []string{scheduler.StateSaturated, scheduler.StateFailing} {
		w := hives[0].Workers[i]
		if w.State != want || !strings.Contains(w.StateReason, "hive-heartbeat") {
			t.Errorf("worker %s: state %q (%q), want %q saying it is heartbeat-only", w.ID(), w.State, w.StateReason, want)
		}
	}
	select {
	case b := <-sub.C():
		msg, err := wsapi.Decode(b)
		if ht, ok := msg.(*wsapi.HiveTelemetry); err != nil || !ok || ht.HiveID != "seed-hive" || ht.Type != wsapi.TypeHiveTelemetry {
			t.Errorf("feed got %s (%v), want seed-hive's telemetry", b, err)
		}
	default:
		t.Error("nothing published on the feed")
	}
	if ev := q.registry.Summary(t0, "q"); ev.HivesOnline != 1 || ev.WorkersOnline != 2 || ev.WorkersAvailable != 0 {
		t.Errorf("queen event %+v, want 1 hive, 2 workers online, none available", ev)
	}

	// The scheduler knows nothing of it: no lease, not even for a model
	// only it reports.
	if _, known := q.sched.WorkerLeases("seed-hive", "llm/8080"); known {
		t.Error("the scheduler knows seed-hive's worker")
	}
	q.handle("e", ask("r1", "llama-3.2-1b"), t0)
	q.schedTick(t0.Add(q.cfg.WarmUpMax))
	for _, s := range peers.take() {
		if g, ok := s.msg.(*wsapi.LeaseGrant); ok {
			t.Fatalf("granted %+v on a heartbeat-only hive", g)
		}
	}
	if qs, _ := q.Queues(t0); len(qs) > 0 && qs[0].Slots != 0 {
		t.Errorf("queues %+v count the heartbeat hive's slots", qs)
	}

	// Online while it posts within the TTL, like any hive.
	if h := q.registry.Hives(t0.Add(q.cfg.HiveTTL + time.Millisecond)); len(h) != 1 || h[0].Online {
		t.Errorf("after the TTL without a post: %+v, want offline", h)
	}
	if err := q.Ingest(report("seed-hive"), t0.Add(q.cfg.HiveTTL)); err != nil {
		t.Fatal(err)
	}
	if h := q.registry.Hives(t0.Add(q.cfg.HiveTTL + time.Millisecond)); len(h) != 1 || !h[0].Online {
		t.Errorf("after another post: %+v, want online", h)
	}
}

// notQueen is a membership in which another node is queen.
type notQueen struct{ fakeMembers }

func (notQueen) WatchQueen() (gossip.Member, bool, <-chan struct{}) {
	return gossip.Member{Name: "other"}, true, nil
}

func TestQueen_IngestRefusesNodesInvalidReportsAndNonQueens(t *testing.T) {
	t0 := time.Date(2026, 1, 1, 0, 0, 0, 0, time.UTC)
	q := testQueen(t, &fakePeers{}, map[string]string{"h": "10.0.0.2:7833"})
	q.startScheduling(t0)
	q.sessions.conns["s"] = conn{} // a node with a session, whatever gossip says
	for _, tc := range []struct {
		name string
		t    *wsapi.HiveTelemetry
		want error
	}{
		{"a live member's name", report("h"), ErrHiveIsNode},
		{"the queen's own name", report("q"), ErrHiveIsNode},
		{"a node with a session", report("s"), ErrHiveIsNode},
		{"a bad name", report("no spaces"), wsapi.ErrInvalid},
		{"a bad worker", report("x", wsapi.ProcessStats{Group: "", Instance: "1"}), wsapi.ErrInvalid},
	} {
		if err := q.Ingest(tc.t, t0); !errors.Is(err, tc.want) {
			t.Errorf("%s: Ingest = %v, want %v", tc.name, err, tc.want)
		}
	}
	if h := q.registry.Hives(t0); len(h) != 0 {
		t.Errorf("refused heartbeats reached the registry: %+v", h)
	}

	q.cfg.Members = notQueen{fakeMembers{self: "q"}}
	if err := q.Ingest(report("x"), t0); !errors.Is(err, ErrNotQueen) {
		t.Errorf("not queen: Ingest = %v, want ErrNotQueen", err)
	}
}
