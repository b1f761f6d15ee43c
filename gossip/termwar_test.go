package gossip

import (
	"fmt"
	"testing"
	"time"

	"github.com/rbee/rbee/internal/testutil"
)

// TestConfirmDead_RefusedForMemberThatAnswersPings: a node whose connections
// to the queen are refused (a firewall REJECT rule) while the queen is alive
// must not take it out of the view: it answers pings, so the refusal says
// nothing about its process.
func TestConfirmDead_RefusedForMemberThatAnswersPings(t *testing.T) {
	c := newCluster(t)
	a := c.start("a", nil)
	b := c.start("b", []string{a.addr()})
	d := c.start("d", []string{a.addr()}, withPriority(5))
	all := []*testNode{a, b, d}
	waitLive(t, []string{"a", "b", "d"}, all...)
	waitQueen(t, "a", all...)
	term := a.Term()
	start := a.Self().Start
	for i := range 5 {
		if d.ConfirmDead("a", start) {
			t.Fatalf("try %d: d confirmed the death of a queen that answers its pings", i)
		}
	}
	if q := d.queen(); q != "a" {
		t.Fatalf("d follows %s", q)
	}
	if got := a.Term(); got != term {
		t.Fatalf("a's term moved %d -> %d", term, got)
	}
}

// TestTermWar_MinorityClaimantDoesNotMoveTheQueen: d loses every packet to
// and from the queen a, confirms it dead (its pings go unanswered) and
// claims the seat with a higher term, while b still reaches both and keeps
// following a. The queen must not outbid d's term (each bid would invite a
// counter-bid), b must keep taking a's grants, and d's confirmation must not
// flap with every metadata update that reaches it through b.
func TestTermWar_MinorityClaimantDoesNotMoveTheQueen(t *testing.T) {
	nw := newNetwork()
	c := newCluster(t)
	net := onNetwork(t, nw, 30*time.Second)
	a := c.start("a", nil, net)
	b := c.start("b", []string{a.addr()}, net)
	// d outranks b, so with a gone from its view d elects itself.
	d := c.start("d", []string{a.addr()}, net, withPriority(5))
	all := []*testNode{a, b, d}
	waitLive(t, []string{"a", "b", "d"}, all...)
	waitQueen(t, "a", all...)
	termA := a.Term()

	nw.partition([]*testNode{a}, []*testNode{d})
	if !d.ConfirmDead("a", a.Self().Start) {
		t.Fatal("d could not confirm a dead with every ping to it lost")
	}
	testutil.Eventually(t, waitFor, "d claims the seat in its own view", func() error {
		if m, ok := b.member("d"); !ok || !m.Claim {
			return fmt.Errorf("b does not see d claiming yet")
		}
		return nil
	})
	if d.Term() <= termA {
		t.Fatalf("d claimed with term %d, not above a's %d", d.Term(), termA)
	}
	termD := d.Term()
	testutil.Consistently(t, 3*time.Second, "one queen, terms unmoved", func() error {
		if q := a.queen(); q != "a" {
			return fmt.Errorf("a follows %s", q)
		}
		if q := b.queen(); q != "a" {
			return fmt.Errorf("b follows %s", q)
		}
		if got := a.Term(); got != termA {
			return fmt.Errorf("the queen's term moved %d -> %d", termA, got)
		}
		if got := d.Term(); got != termD {
			return fmt.Errorf("d's term moved %d -> %d: its claim flapped", termD, got)
		}
		if got := b.FenceTerm(); got != termA {
			return fmt.Errorf("b fences at term %d, not its queen's %d", got, termA)
		}
		return nil
	})
	nw.heal([]*testNode{a}, []*testNode{d})
}
