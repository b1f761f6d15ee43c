package proxy

import (
	"context"
	"errors"
	"fmt"
	"sync/atomic"
	"testing"
	"time"

	"github.com/rbee/rbee/internal/testutil"
	"github.com/rbee/rbee/node/tenants"
	"github.com/rbee/rbee/wsapi"
)

// sent returns the messages of type T sent so far.
func sent[T any](u *fakeUplink) []T {
	var out []T
	for _, m := range u.messages() {
		if v, ok := m.(T); ok {
			out = append(out, v)
		}
	}
	return out
}

func spareGrant(ask *wsapi.LeaseSpareRequest, id, worker string) wsapi.LeaseGrant {
	return wsapi.LeaseGrant{Type: wsapi.TypeLeaseGrant, RequestID: ask.RequestID + ".0", LeaseID: id, Hive: "h", HiveAddr: "127.0.0.1:1",
		Worker: worker, Model: "m", Term: 3, Spare: true}
}

// spareClient is a lease client with spare leases on, attached to a fake
// session, whose pool for model m holds the spare leases ids (on worker
// g/1) after a first request that found it empty and asked the queen.
func spareClient(t *testing.T, ids ...string) (*LeaseClient, *fakeUplink) {
	t.Helper()
	lc := NewLeaseClient("entry", time.Unix(0, 0))
	lc.SetSpares(8)
	t.Cleanup(lc.Close)
	u := &fakeUplink{}
	lc.Attach(u)
	res := acquireAsync(context.Background(), lc, "m", time.Minute)
	r := waitRequests(t, u, 1)[0]
	asks := sent[*wsapi.LeaseSpareRequest](u)
	if len(asks) != 1 || asks[0].Model != "m" || asks[0].Count != 1 {
		t.Fatalf("spare asks %+v, want one for one lease of m", asks)
	}
	lc.OnGrant(&wsapi.LeaseGrant{Type: wsapi.TypeLeaseGrant, RequestID: r.RequestID, LeaseID: "first", Hive: "h", Worker: "g/1", Model: "m"})
	if got := <-res; got.grant == nil || got.grant.LeaseID != "first" {
		t.Fatalf("first request: %+v", got)
	}
	m := &wsapi.LeaseSpares{Type: wsapi.TypeLeaseSpares, RequestID: asks[0].RequestID}
	for _, id := range ids {
		m.Grants = append(m.Grants, spareGrant(asks[0], id, "g/1"))
	}
	lc.OnSpares(m)
	return lc, u
}

func TestSpares_ARequestStartsOnASpareLeaseAndReturnsIt(t *testing.T) {
	lc, u := spareClient(t, "s1")
	before := len(u.messages())
	g, lerr, err := lc.Acquire(context.Background(), "m", time.Minute)
	if err != nil || lerr != nil || g == nil {
		t.Fatalf("acquire: %v %v %v", g, lerr, err)
	}
	base, ok := wsapi.SpareLeaseOf(g.LeaseID)
	if !ok || base != "s1" || g.Worker != "g/1" || g.Term != 3 || g.RequestID == "" {
		t.Fatalf("grant %+v, want a use of spare lease s1 with its own request id", g)
	}
	if ms := u.messages()[before:]; len(ms) != 0 {
		t.Fatalf("sent %v for a request on a spare lease, want nothing", ms)
	}
	// Its end (twice: the hive's and the entry node's) puts it back, and
	// the next request uses it again, under another id.
	lc.Release(g.LeaseID)
	lc.Release(g.LeaseID)
	g2, _, _ := lc.Acquire(context.Background(), "m", time.Minute)
	if b2, _ := wsapi.SpareLeaseOf(g2.LeaseID); b2 != "s1" || g2.LeaseID == g.LeaseID {
		t.Fatalf("second grant %+v, want another use of s1", g2)
	}
	if ms := u.messages()[before:]; len(ms) != 0 {
		t.Fatalf("sent %v for two requests on a spare lease, want nothing", ms)
	}
	// Another entry node's use, which this node served as its hive, is
	// that node's to return: nothing is sent.
	lc.Release("s9/17")
	if ms := u.messages()[before:]; len(ms) != 0 {
		t.Fatalf("sent %v for another node's use", ms)
	}
}

func TestSpares_AnEmptyPoolAsksForMore(t *testing.T) {
	lc, u := spareClient(t, "s1")
	g, _, _ := lc.Acquire(context.Background(), "m", time.Minute)
	if _, ok := wsapi.SpareLeaseOf(g.LeaseID); !ok {
		t.Fatalf("grant %+v, want a spare lease's use", g)
	}
	// s1 is in use: the next request asks the queen, and the pool asks
	// for two now.
	res := acquireAsync(context.Background(), lc, "m", time.Minute)
	rs := waitRequests(t, u, 2)
	asks := sent[*wsapi.LeaseSpareRequest](u)
	if len(asks) != 2 || asks[1].Count != 2 {
		t.Fatalf("spare asks %+v, want a second one for two", asks)
	}
	lc.OnGrant(&wsapi.LeaseGrant{Type: wsapi.TypeLeaseGrant, RequestID: rs[1].RequestID, LeaseID: "l2", Hive: "h", Worker: "g/1", Model: "m"})
	<-res
	// Nobody asked for these any more (an answer to an ask given up):
	// they go back unused.
	lc.OnSpares(&wsapi.LeaseSpares{Type: wsapi.TypeLeaseSpares, RequestID: "nobody", Grants: []wsapi.LeaseGrant{spareGrant(asks[1], "x", "g/1")}})
	rel := sent[*wsapi.LeaseRelease](u)
	if len(rel) != 1 || rel[0].LeaseID != "x" || !rel[0].Unused {
		t.Fatalf("releases %+v, want x given back unused", rel)
	}
}

func TestSpares_RequestsThatMayNotUseThem(t *testing.T) {
	for name, a := range map[string]Ask{
		"one worker":         {On: Placement{Hive: "h", Worker: "g/1"}},
		"places to avoid":    {Avoid: []wsapi.Placement{{Hive: "h2"}}},
		"a hive to shun":     {Elsewhere: []string{"h2"}},
		"a capped tenant":    {Tenant: &tenants.Tenant{Name: "k", MaxConcurrent: 2}},
		"a batch tenant":     {Tenant: &tenants.Tenant{Name: "k", Class: tenants.Batch}},
		"another tenant":     {Tenant: &tenants.Tenant{Name: "k"}},
		"another model name": {Model: "m2"},
	} {
		t.Run(name, func(t *testing.T) {
			lc, u := spareClient(t, "s1")
			if a.Model == "" {
				a.Model = "m"
			}
			a.Wait = time.Minute
			ctx, cancel := context.WithCancel(context.Background())
			done := make(chan struct{})
			go func() {
				defer close(done)
				lc.Ask(ctx, a)
			}()
			waitRequests(t, u, 2) // asked the queen
			cancel()
			<-done
		})
	}
}

func TestSpares_AConversationStaysOnItsWorker(t *testing.T) {
	lc, _ := spareClient(t, "s1")
	// The pool holds a lease on g/1 only; a conversation last served on
	// g/2 asks the queen, one new to this node takes it.
	lc.mu.Lock()
	lc.noteConvLocked("c-old", &wsapi.LeaseGrant{Hive: "h", Worker: "g/2"})
	lc.mu.Unlock()
	if g := lc.takeSpare(&Ask{Model: "m", Conversation: "c-old"}); g != nil {
		t.Fatalf("a turn of a conversation on g/2 took %+v", g)
	}
	// A later turn of a conversation this node never served asks the
	// queen, which knows where the earlier turns went.
	if g := lc.takeSpare(&Ask{Model: "m", Conversation: "c-elsewhere"}); g != nil {
		t.Fatalf("a later turn of a conversation new to this node took %+v", g)
	}
	g := lc.takeSpare(&Ask{Model: "m", Conversation: "c-new", FirstTurn: true})
	if g == nil || g.Worker != "g/1" {
		t.Fatalf("a new conversation got %+v, want the lease on g/1", g)
	}
	lc.Release(g.LeaseID)
	// Its end puts the lease back in the pool, and the conversation's
	// next turn takes it again.
	if g := lc.takeSpare(&Ask{Model: "m", Conversation: "c-new"}); g == nil {
		t.Fatal("the conversation's next turn found no lease on its worker")
	}
}

func TestSpares_RevokeGivesBackIdleAndSpoilsInUse(t *testing.T) {
	lc, u := spareClient(t, "s1", "s2")
	inUse := lc.takeSpare(&Ask{Model: "m"})
	if inUse == nil {
		t.Fatal("no spare lease")
	}
	base, _ := wsapi.SpareLeaseOf(inUse.LeaseID)
	idle := "s1"
	if base == "s1" {
		idle = "s2"
	}
	lc.OnRevoke(&wsapi.LeaseRevoke{Type: wsapi.TypeLeaseRevoke, LeaseIDs: []string{"s1", "s2"}})
	rel := sent[*wsapi.LeaseRelease](u)
	if len(rel) != 1 || rel[0].LeaseID != idle || !rel[0].Unused {
		t.Fatalf("releases %+v, want %s given back unused", rel, idle)
	}
	// The one in use goes back to the queen when its request ends, with
	// how long it ran.
	lc.Release(inUse.LeaseID)
	rel = sent[*wsapi.LeaseRelease](u)
	if len(rel) != 2 || rel[1].LeaseID != base || rel[1].Unused || rel[1].RanUS <= 0 {
		t.Fatalf("releases %+v, want %s released after its use", rel, base)
	}
	// The pool keeps quiet for a while: a request asks the queen, and
	// no spare ask goes with it.
	asks := len(sent[*wsapi.LeaseSpareRequest](u))
	if g := lc.takeSpare(&Ask{Model: "m"}); g != nil {
		t.Fatalf("took %+v after a revoke", g)
	}
	if n := len(sent[*wsapi.LeaseSpareRequest](u)); n != asks {
		t.Fatalf("%d spare asks right after a revoke, want %d", n, asks)
	}
}

func TestSpares_ASpoiledLeaseIsReleased(t *testing.T) {
	for _, hiveFirst := range []bool{false, true} {
		lc, u := spareClient(t, "s1")
		g := lc.takeSpare(&Ask{Model: "m"})
		if hiveFirst {
			// This node is the lease's hive: it ended the use (the
			// lease went back to the pool) before the entry side
			// learned that the worker failed.
			lc.Release(g.LeaseID)
		}
		lc.Spoil(g.LeaseID)
		lc.Release(g.LeaseID)
		rel := sent[*wsapi.LeaseRelease](u)
		if len(rel) != 1 || rel[0].LeaseID != "s1" {
			t.Fatalf("hive first %v: releases %+v, want s1 released", hiveFirst, rel)
		}
		if g := lc.takeSpare(&Ask{Model: "m"}); g != nil {
			t.Fatalf("hive first %v: took %+v, a spoiled lease", hiveFirst, g)
		}
	}
}

func TestSpares_UnusedLeasesGoBack(t *testing.T) {
	lc := NewLeaseClient("entry", time.Unix(0, 0))
	lc.spareTTL = 20 * time.Millisecond
	lc.SetSpares(8)
	t.Cleanup(lc.Close)
	u := &fakeUplink{}
	lc.Attach(u)
	if g := lc.takeSpare(&Ask{Model: "m"}); g != nil {
		t.Fatalf("took %+v from an empty pool", g)
	}
	ask := sent[*wsapi.LeaseSpareRequest](u)[0]
	lc.OnSpares(&wsapi.LeaseSpares{Type: wsapi.TypeLeaseSpares, RequestID: ask.RequestID, Grants: []wsapi.LeaseGrant{spareGrant(ask, "s1", "g/1")}})
	testutil.Eventually(t, 5*time.Second, "the unused spare lease given back", func() error {
		rel := sent[*wsapi.LeaseRelease](u)
		if len(rel) != 1 || rel[0].LeaseID != "s1" || !rel[0].Unused {
			return errors.New("not yet")
		}
		return nil
	})
	if g := lc.takeSpare(&Ask{Model: "m"}); g != nil {
		t.Fatalf("took %+v, given back", g)
	}
}

func TestSpares_ANewSessionDropsThePool(t *testing.T) {
	lc, _ := spareClient(t, "s1", "s2")
	inUse := lc.takeSpare(&Ask{Model: "m"})
	second := &fakeUplink{}
	lc.Attach(second)
	if g := lc.takeSpare(&Ask{Model: "m"}); g != nil {
		t.Fatalf("took %+v, a lease of the last session", g)
	}
	// The lease in use is not used again: its end releases it on the
	// new session (the queen there ignores what it does not know).
	lc.Release(inUse.LeaseID)
	for _, r := range sent[*wsapi.LeaseRelease](second) {
		if b, _ := wsapi.SpareLeaseOf(inUse.LeaseID); r.LeaseID == b {
			return
		}
	}
	t.Fatalf("the old session's lease was not released: %v", second.messages())
}

func TestSpares_TheQueenLearnsWhereConversationsWent(t *testing.T) {
	lc, u := spareClient(t, "s1")
	lc.spareTTL = 20 * time.Millisecond
	g := lc.takeSpare(&Ask{Model: "m", Conversation: "c1", FirstTurn: true})
	if g == nil {
		t.Fatal("no spare lease")
	}
	lc.Release(g.LeaseID)
	testutil.Eventually(t, 5*time.Second, "the queen told where c1 went", func() error {
		for _, m := range sent[*wsapi.Conversations](u) {
			for _, c := range m.Turns {
				if c.Conversation == "c1" && c.Hive == "h" && c.Worker == "g/1" {
					return nil
				}
			}
		}
		return errors.New("not yet")
	})
}

func TestSpares_TheQueenCountsRequestsOnThem(t *testing.T) {
	lc, u := spareClient(t, "s1")
	lc.spareTTL = 40 * time.Millisecond
	for range 3 {
		g := lc.takeSpare(&Ask{Model: "m"})
		if g == nil {
			t.Fatal("no spare lease")
		}
		lc.Release(g.LeaseID)
	}
	testutil.Eventually(t, 5*time.Second, "the queen told of 3 uses", func() error {
		var n, ended int64
		for _, m := range sent[*wsapi.LeaseUses](u) {
			n += m.Uses
			for _, mu := range m.Models {
				if mu.Model != "m" || mu.RanUS <= 0 {
					return fmt.Errorf("model figures %+v", mu)
				}
				ended += mu.Ended
			}
		}
		if n != 3 || ended != 3 {
			return fmt.Errorf("told of %d uses, %d ended", n, ended)
		}
		return nil
	})
}

// TestSpares_ARevokeThatOvertakesItsLeases: the queen sends a revoke while
// the answer that grants those leases is still on its way; they go back the
// moment they come.
func TestSpares_ARevokeThatOvertakesItsLeases(t *testing.T) {
	lc, u := spareClient(t)
	lc.mu.Lock()
	pool := lc.pools[spareClass{model: "m"}]
	pool.quiet = time.Time{}
	ask := lc.askSparesLocked(spareClass{model: "m"}, pool, time.Now())
	lc.mu.Unlock()
	lc.OnRevoke(&wsapi.LeaseRevoke{Type: wsapi.TypeLeaseRevoke, LeaseIDs: []string{"s1"}})
	lc.OnSpares(&wsapi.LeaseSpares{Type: wsapi.TypeLeaseSpares, RequestID: ask.RequestID,
		Grants: []wsapi.LeaseGrant{spareGrant(ask, "s1", "g/1"), spareGrant(ask, "s2", "g/1")}})
	rel := sent[*wsapi.LeaseRelease](u)
	if len(rel) != 1 || rel[0].LeaseID != "s1" || !rel[0].Unused {
		t.Fatalf("releases %+v, want s1 given back unused", rel)
	}
	g := lc.takeSpare(&Ask{Model: "m"})
	if b, _ := wsapi.SpareLeaseOf(g.LeaseID); b != "s2" {
		t.Fatalf("took %+v, want s2 (s1 was revoked)", g)
	}
}

// TestSpares_ALeaseOfAReplacedQueenIsNotUsed: once gossip has elected
// another queen (the fence term rose), the spare leases of the last one
// are left, though its session has not ended here yet: every hive would
// refuse them, and this node's own hive does so without the request
// leaving the node, so that each retry took the next one. Three such
// refusals in a row failed a request of TestFault_QueenCutOffUnderLoad.
func TestSpares_ALeaseOfAReplacedQueenIsNotUsed(t *testing.T) {
	lc, _ := spareClient(t, "s1", "s2")
	var fence atomic.Uint64
	fence.Store(3) // the term the leases were lent under
	lc.fence = fence.Load
	if g := lc.takeSpare(&Ask{Model: "m"}); g == nil {
		t.Fatal("no spare lease under the term it was lent in")
	} else {
		lc.Release(g.LeaseID)
	}
	fence.Store(4)
	if g := lc.takeSpare(&Ask{Model: "m"}); g != nil {
		t.Fatalf("took %+v, lent by a replaced queen", g)
	}
	if n := lc.stats.revoked.Load(); n != 2 {
		t.Fatalf("%d spare leases counted revoked, want 2", n)
	}
}
