package queen

import (
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/rbee/rbee/gossip"
	"github.com/rbee/rbee/scheduler"
	"github.com/rbee/rbee/wsapi"
)

// fakePeers stands in for the session table: nodes with a session get what
// is sent to them, recorded decoded, with whether it was written inline.
type fakePeers struct {
	mu      sync.Mutex
	present map[string]bool
	got     []sent
}

type sent struct {
	peer   string
	msg    any
	inline bool
}

func (f *fakePeers) send(peer string, b []byte, inline bool) bool {
	f.mu.Lock()
	defer f.mu.Unlock()
	if !f.present[peer] {
		return false
	}
	msg, err := wsapi.Decode(b)
	if err != nil {
		panic(err)
	}
	f.got = append(f.got, sent{peer, msg, inline})
	return true
}

func (f *fakePeers) take() []sent {
	f.mu.Lock()
	defer f.mu.Unlock()
	out := f.got
	f.got = nil
	return out
}

// fakeMembers: this node is queen; addrs are the members' API addresses.
type fakeMembers struct {
	self  string
	addrs map[string]string
	// gone: departed members and their status; Members lists them,
	// LiveMembers and Member do not.
	gone map[string]gossip.Status
}

func (f fakeMembers) WatchQueen() (gossip.Member, bool, <-chan struct{}) {
	return gossip.Member{Name: f.self}, true, nil
}

func (f fakeMembers) LiveMembers() []gossip.Member {
	out := []gossip.Member{{Name: f.self, Roles: []string{gossip.RoleQueen}}}
	for name := range f.addrs {
		if _, gone := f.gone[name]; !gone {
			out = append(out, gossip.Member{Name: name, Roles: []string{gossip.RoleHive}, Status: gossip.StatusAlive})
		}
	}
	return out
}

func (f fakeMembers) Term() uint64 { return 7 }

func (f fakeMembers) Members() []gossip.Member {
	out := f.LiveMembers()
	for name, st := range f.gone {
		out = append(out, gossip.Member{Name: name, Roles: []string{gossip.RoleHive}, Status: st})
	}
	return out
}

func (f fakeMembers) Member(name string) (gossip.Member, bool) {
	if _, gone := f.gone[name]; gone {
		return gossip.Member{}, false
	}
	a, ok := f.addrs[name]
	return gossip.Member{Name: name, HTTPAddr: a}, ok
}

func testQueen(t *testing.T, peers *fakePeers, addrs map[string]string) *Queen {
	t.Helper()
	q, err := New(Config{Name: "q", HTTPAddr: "127.0.0.1:1", Members: fakeMembers{self: "q", addrs: addrs, gone: map[string]gossip.Status{}},
		Feed: wsapi.NewHub(0), HiveTTL: 3 * time.Second, ForgetAfter: time.Minute, EventInterval: time.Second})
	if err != nil {
		t.Fatal(err)
	}
	q.out = peers
	return q
}

func report(hive string, ws ...wsapi.ProcessStats) *wsapi.HiveTelemetry {
	return &wsapi.HiveTelemetry{Type: wsapi.TypeHiveTelemetry, HiveID: hive, Workers: ws}
}

func ask(id, model string) *wsapi.LeaseRequest {
	return &wsapi.LeaseRequest{Type: wsapi.TypeLeaseRequest, RequestID: id, Model: model, WaitMS: 60_000}
}

// A grant for a node whose session is gone is released at once and goes to
// the next request waiting; answers to the asker are written inline, answers
// to others through their writers.
func TestQueen_DeliverPassesUndeliverableGrantsOn(t *testing.T) {
	t0 := time.Date(2026, 1, 1, 0, 0, 0, 0, time.UTC)
	peers := &fakePeers{present: map[string]bool{"e1": true, "e2": true, "e3": true}}
	q := testQueen(t, peers, map[string]string{"h": "10.0.0.2:7833"})
	q.startScheduling(t0)
	q.handle("h", report("h", wsapi.ProcessStats{Group: "g", Instance: "1", Model: ptr("m"), Slots: 1}), t0)

	q.handle("e1", ask("r1", "m"), t0)
	got := peers.take()
	if len(got) != 1 || got[0].peer != "e1" || !got[0].inline {
		t.Fatalf("first ask: sent %+v, want a grant to e1 written inline", got)
	}
	g1 := got[0].msg.(*wsapi.LeaseGrant)
	if g1.RequestID != "r1" || g1.Hive != "h" || g1.HiveAddr != "10.0.0.2:7833" || g1.Worker != "g/1" {
		t.Fatalf("grant %+v", g1)
	}
	q.handle("e2", ask("r2", "m"), t0)
	q.handle("e3", ask("r3", "m"), t0)
	if got := peers.take(); len(got) != 0 {
		t.Fatalf("sent %+v while the only slot is leased", got)
	}
	peers.mu.Lock()
	peers.present["e2"] = false // e2's session broke before its handler noticed
	peers.mu.Unlock()
	q.handle("e1", &wsapi.LeaseRelease{Type: wsapi.TypeLeaseRelease, LeaseID: g1.LeaseID}, t0)
	got = peers.take()
	if len(got) != 1 || got[0].peer != "e3" || got[0].inline {
		t.Fatalf("after the release: sent %+v, want one grant to e3 through its writer", got)
	}
	if g := got[0].msg.(*wsapi.LeaseGrant); g.RequestID != "r3" {
		t.Fatalf("grant %+v, want r3's", g)
	}
	if ls := q.sched.Leases(); len(ls) != 1 || ls[0].RequestID != "r3" {
		t.Fatalf("leases %+v, want only r3's (e2's undeliverable grant released)", ls)
	}
}

func TestQueen_DeliverRefusalsAndGrantsOnUnknownHives(t *testing.T) {
	t0 := time.Date(2026, 1, 1, 0, 0, 0, 0, time.UTC)
	peers := &fakePeers{present: map[string]bool{"e": true}}
	q := testQueen(t, peers, map[string]string{"h": "10.0.0.2:7833"})
	members := q.cfg.Members.(fakeMembers)
	q.startScheduling(t0)
	q.handle("h", report("h", wsapi.ProcessStats{Group: "g", Instance: "1", Model: ptr("m"), Slots: 1}), t0)
	q.schedTick(t0.Add(4 * time.Second)) // warm: unknown models fail at once
	now := t0.Add(4 * time.Second)
	q.handle("h", report("h", wsapi.ProcessStats{Group: "g", Instance: "1", Model: ptr("m"), Slots: 1}), now)
	q.handle("e", ask("r1", "nope"), now)
	got := peers.take()
	if len(got) != 1 || !got[0].inline {
		t.Fatalf("sent %+v, want one refusal inline", got)
	}
	if e, ok := got[0].msg.(*wsapi.LeaseError); !ok || e.Status != 404 || e.RequestID != "r1" || e.ErrorType != "model_not_found" || e.Model != "" {
		t.Fatalf("refusal %+v", got[0].msg)
	}
	// A grant on a hive that left since it reported is not sent: the
	// hive is taken out, and the request, which only it could serve,
	// fails saying so.
	members.gone["h"] = gossip.StatusLeft
	q.handle("e", ask("r2", " M"), now)
	got = peers.take()
	if len(got) != 1 {
		t.Fatalf("sent %+v for a departed hive, want one refusal", got)
	}
	if e, ok := got[0].msg.(*wsapi.LeaseError); !ok || e.Status != 503 || !strings.Contains(e.Message, "its only hive, h, left") || e.Model != "m" {
		t.Fatalf("answer %+v, want a 503 naming the departed hive, labelled by the model as served", got[0].msg)
	}
	if ls := q.sched.Leases(); len(ls) != 0 {
		t.Fatalf("leases %+v, want none", ls)
	}
}

// A hive gossip has not told the queen of yet gets no grants: entry nodes
// could not reach it. Its next report, once gossip knows it, counts.
func TestQueen_IgnoresReportsFromHivesGossipDoesNotKnow(t *testing.T) {
	t0 := time.Date(2026, 1, 1, 0, 0, 0, 0, time.UTC)
	peers := &fakePeers{present: map[string]bool{"e": true}}
	q := testQueen(t, peers, map[string]string{})
	members := q.cfg.Members.(fakeMembers)
	q.startScheduling(t0)
	q.handle("h", report("h", wsapi.ProcessStats{Group: "g", Instance: "1", Model: ptr("m"), Slots: 1}), t0)
	q.handle("e", ask("r1", "m"), t0)
	if got := peers.take(); len(got) != 0 {
		t.Fatalf("sent %+v for a hive gossip does not know, want the request to wait", got)
	}
	members.addrs["h"] = "10.0.0.2:7833"
	q.handle("h", report("h", wsapi.ProcessStats{Group: "g", Instance: "1", Model: ptr("m"), Slots: 1}), t0.Add(time.Second))
	got := peers.take()
	if len(got) != 1 {
		t.Fatalf("sent %+v once gossip knows the hive, want one grant", got)
	}
	if g, ok := got[0].msg.(*wsapi.LeaseGrant); !ok || g.RequestID != "r1" || g.HiveAddr != "10.0.0.2:7833" {
		t.Fatalf("answer %+v, want r1's grant on h", got[0].msg)
	}
}

// The queen writes its verdict on every worker it relays: the state rule
// over the leases it holds.
func TestQueen_SetsEachWorkersState(t *testing.T) {
	t0 := time.Date(2026, 1, 1, 0, 0, 0, 0, time.UTC)
	peers := &fakePeers{present: map[string]bool{"e": true}}
	q := testQueen(t, peers, map[string]string{"h": "10.0.0.2:7833"})
	q.startScheduling(t0)
	ws := func() *wsapi.HiveTelemetry {
		return report("h",
			wsapi.ProcessStats{Group: "g", Instance: "1", Model: ptr("m"), Slots: 2},
			wsapi.ProcessStats{Group: "g", Instance: "2", Model: ptr("x"), GPUUtilPct: 95},
			wsapi.ProcessStats{Group: "g", Instance: "3", Model: ptr("y"), Health: "failing", State: "idle"})
	}
	q.handle("h", ws(), t0)
	q.handle("e", ask("r1", "m"), t0)
	tel := ws()
	q.handle("h", tel, t0)
	for i, want := range []string{scheduler.StateBusy, scheduler.StateSaturated, scheduler.StateFailing} {
		if w := tel.Workers[i]; w.State != want || w.StateReason == "" {
			t.Errorf("worker %s: state %q (%q), want %q", w.ID(), w.State, w.StateReason, want)
		}
	}
	// Without a scheduler (not queen yet) the hive's own list counts.
	q.stopScheduling()
	tel = ws()
	tel.Leases = []wsapi.LeaseInfo{{LeaseID: "l", Worker: "g/1", Model: "m", Entry: "e"}}
	q.handle("h", tel, t0)
	if w := tel.Workers[0]; w.State != scheduler.StateBusy {
		t.Errorf("without a scheduler: state %q, want busy from the hive's leases", w.State)
	}
}

func ptr[T any](v T) *T { return &v }

// A new queen answers "unknown model" once every live hive has reported to
// it, not after a fixed delay: hives slow to reach it (their sessions stuck on
// the old queen) must not turn waiting requests into 404s; and it does not
// wait past WarmUpMax for a hive that never comes.
func TestQueen_WarmsUpWhenEveryLiveHiveReported(t *testing.T) {
	t0 := time.Date(2026, 1, 1, 0, 0, 0, 0, time.UTC)
	peers := &fakePeers{present: map[string]bool{"e": true}}
	q := testQueen(t, peers, map[string]string{"h1": "10.0.0.1:7833", "h2": "10.0.0.2:7833"})
	q.startScheduling(t0)
	q.handle("h1", report("h1", wsapi.ProcessStats{Group: "g", Instance: "1", Model: ptr("m"), Slots: 1}), t0)
	q.handle("e", ask("r1", "only-on-h2"), t0)
	q.schedTick(t0.Add(5 * time.Second))
	if got := peers.take(); len(got) != 0 {
		t.Fatalf("sent %+v before h2 reported; want the request to wait", got)
	}
	q.handle("h2", report("h2", wsapi.ProcessStats{Group: "g", Instance: "1", Model: ptr("only-on-h2"), Slots: 1}), t0.Add(5*time.Second))
	got := peers.take()
	if len(got) != 1 {
		t.Fatalf("after h2 reported: sent %+v, want the grant", got)
	}
	g, ok := got[0].msg.(*wsapi.LeaseGrant)
	if !ok || g.Hive != "h2" || g.Term != 7 {
		t.Fatalf("answer %+v, want a grant on h2 carrying the queen's term 7", got[0].msg)
	}

	// Another new queen whose hive h2 never reports: warm at the bound.
	q2 := testQueen(t, peers, map[string]string{"h1": "10.0.0.1:7833", "h2": "10.0.0.2:7833"})
	q2.startScheduling(t0)
	q2.handle("h1", report("h1", wsapi.ProcessStats{Group: "g", Instance: "1", Model: ptr("m"), Slots: 1}), t0)
	q2.handle("e", ask("r2", "nope"), t0)
	q2.schedTick(t0.Add(q2.cfg.WarmUpMax - time.Millisecond))
	if got := peers.take(); len(got) != 0 {
		t.Fatalf("sent %+v before the bound", got)
	}
	q2.schedTick(t0.Add(q2.cfg.WarmUpMax))
	if got := peers.take(); len(got) != 1 || got[0].msg.(*wsapi.LeaseError).Status != 404 {
		t.Fatalf("at the bound: sent %+v, want a 404", got)
	}
}
