package gossip

import (
	"errors"
	"fmt"
	"slices"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/hashicorp/memberlist"

	"github.com/rbee/rbee/internal/testutil"
)

func TestCluster_AgreeOnOldestQueen(t *testing.T) {
	c := newCluster(t)
	nodes := c.startN(3)
	oldest := nodes[0] // "n3": first started, largest name

	waitQueen(t, oldest.name, nodes...)

	for _, n := range nodes {
		q, ok, _ := n.WatchQueen()
		if !ok || q.HTTPAddr != oldest.meta.HTTPAddr || q.GossipAddr != oldest.addr() || !q.Start.Equal(oldest.meta.Start) {
			t.Errorf("%s: queen %+v (ok=%v), want %s at http %s gossip %s", n.name, q, ok, oldest.name, oldest.meta.HTTPAddr, oldest.addr())
		}
		ms := n.Members()
		if got := names(ms); !slices.Equal(got, []string{"n1", "n2", "n3"}) {
			t.Fatalf("%s: Members() = %v, want n1 n2 n3 in name order", n.name, got)
		}
		for _, m := range ms {
			want := byName(nodes, m.Name)
			if m.Status != StatusAlive {
				t.Errorf("%s sees %s %s, want alive", n.name, m.Name, m.Status)
			}
			if m.HTTPAddr != want.meta.HTTPAddr || !slices.Equal(m.Roles, want.meta.Roles) ||
				m.Version != want.meta.Version || m.Priority != want.meta.Priority || !m.Start.Equal(want.meta.Start) {
				t.Errorf("%s sees %s as %+v, want meta %+v", n.name, m.Name, m, want.meta)
			}
			if m.GossipAddr != want.addr() || !strings.HasPrefix(m.GossipAddr, "127.0.0.1:") || strings.HasSuffix(m.GossipAddr, ":0") {
				t.Errorf("%s sees %s at %q, want its bound address %q", n.name, m.Name, m.GossipAddr, want.addr())
			}
			if m.Leaving {
				t.Errorf("%s sees %s leaving", n.name, m.Name)
			}
		}
	}
	// The queen broadcasts its claim; nobody else claims.
	testutil.Eventually(t, waitFor, "everyone sees only the queen's claim", func() error {
		for _, n := range nodes {
			for _, m := range n.Members() {
				if m.Claim != (m.Name == oldest.name) {
					return fmt.Errorf("%s sees %s claim=%v", n.name, m.Name, m.Claim)
				}
			}
		}
		return nil
	})
}

func TestCluster_NewcomerDoesNotUnseatQueen(t *testing.T) {
	c := newCluster(t)
	a := c.start("a", nil)
	b := c.start("b", []string{a.addr()})
	waitQueen(t, "a", a, b)

	// c outranks a on priority: only a's claim keeps a seated.
	nc := c.start("c", []string{a.addr()}, withPriority(10))
	all := []*testNode{a, b, nc}
	waitLive(t, []string{"a", "b", "c"}, all...)
	waitQueen(t, "a", all...)
	testutil.Consistently(t, quiet, "a stays queen after c joined", func() error {
		q, err := agreedQueen(all...)
		if err == nil && q != "a" {
			err = fmt.Errorf("all agree on %s", q)
		}
		return err
	})

	// Once the queen leaves, the claim goes with it and priority decides.
	a.leave()
	waitQueen(t, "c", b, nc)
}

func TestCluster_GracefulLeaveOfQueen(t *testing.T) {
	c := newCluster(t)
	nodes := c.startN(3)
	queen, survivors := nodes[0], nodes[1:]
	waitQueen(t, queen.name, nodes...)

	var watches []<-chan struct{}
	for _, n := range survivors {
		_, _, ch := n.WatchQueen()
		watches = append(watches, ch)
	}
	if err := queen.Leave(); err != nil {
		t.Fatalf("Leave: %v", err)
	}
	if err := queen.Leave(); !errors.Is(err, ErrLeft) {
		t.Errorf("second Leave: %v, want ErrLeft", err)
	}
	testutil.Eventually(t, waitFor, "the leaver gives up the seat", func() error {
		if q := queen.queen(); q != "" {
			return fmt.Errorf("%s still sees queen %s", queen.name, q)
		}
		return nil
	})
	queen.stop()

	// The next oldest, n2, takes over.
	waitQueen(t, nodes[1].name, survivors...)
	for i, n := range survivors {
		if !closed(watches[i]) {
			t.Errorf("%s: WatchQueen channel not closed though the queen changed", n.name)
		}
	}
	testutil.Eventually(t, waitFor, "survivors list the leaver as left", func() error {
		for _, n := range survivors {
			m, ok := n.member(queen.name)
			if !ok {
				return fmt.Errorf("%s does not list %s", n.name, queen.name)
			}
			if m.Status != StatusLeft {
				return fmt.Errorf("%s lists %s as %s", n.name, queen.name, m.Status)
			}
		}
		return nil
	})
	for _, n := range survivors {
		if got := liveNames(n); slices.Contains(got, queen.name) {
			t.Errorf("%s: LiveMembers %v still has %s", n.name, got, queen.name)
		}
		if got := names(n.Members()); len(got) != 3 {
			t.Errorf("%s: Members() = %v, want all 3", n.name, got)
		}
	}
}

func TestCluster_QueenDeathFailsOver(t *testing.T) {
	c := newCluster(t)
	nodes := c.startN(3)
	queen, survivors := nodes[0], nodes[1:]
	waitQueen(t, queen.name, nodes...)

	queen.stop() // no Leave: the others learn of it by failure detection

	waitQueen(t, nodes[1].name, survivors...)
	testutil.Eventually(t, waitFor, "survivors list the dead queen as failed", func() error {
		for _, n := range survivors {
			m, ok := n.member(queen.name)
			if !ok {
				return fmt.Errorf("%s does not list %s", n.name, queen.name)
			}
			if m.Status != StatusFailed {
				return fmt.Errorf("%s lists %s as %s", n.name, queen.name, m.Status)
			}
		}
		return nil
	})
	for _, n := range survivors {
		if m, _ := n.member(nodes[2].name); m.Status != StatusAlive {
			t.Errorf("%s lists %s as %s, want alive", n.name, nodes[2].name, m.Status)
		}
	}
}

func TestCluster_RejectsForeignSecret(t *testing.T) {
	c := newCluster(t)
	nodes := c.startN(3)
	members := []string{"n1", "n2", "n3"}

	for _, tc := range []struct {
		name   string
		secret []byte
	}{
		{"wrong secret", newSecret(t)},
		{"wrong secret of another size", newSecret(t)[:16]},
		{"no secret", nil},
	} {
		x := c.start("intruder-"+strings.ReplaceAll(tc.name, " ", "-"), nil, withSecret(tc.secret))
		n, err := x.Join([]string{nodes[0].addr(), nodes[1].addr()})
		if err == nil || n != 0 {
			t.Fatalf("%s: Join = %d, %v; want 0 and an error", tc.name, n, err)
		}
		testutil.Consistently(t, quiet, tc.name+": the cluster ignores the intruder", func() error {
			for _, n := range nodes {
				if got := names(n.Members()); !slices.Equal(got, members) {
					return fmt.Errorf("%s: Members() = %v", n.name, got)
				}
			}
			if got := liveNames(x); !slices.Equal(got, []string{x.name}) {
				return fmt.Errorf("intruder sees %v", got)
			}
			return nil
		})
		x.stop()
	}
}

func TestWatchQueen_ClosedOnChangeOnly(t *testing.T) {
	c := newCluster(t)
	a := c.create("a", nil)

	q, ok, ch := a.WatchQueen()
	if ok {
		t.Fatalf("queen %s before Run", q.Name)
	}
	if closed(ch) {
		t.Fatal("channel closed before Run")
	}

	a.run()
	testutil.Eventually(t, waitFor, "a elects itself", func() error {
		if !closed(ch) {
			return errors.New("channel still open")
		}
		return nil
	})
	q, ok, ch = a.WatchQueen()
	if !ok || q.Name != "a" {
		t.Fatalf("after the first change: queen %q (ok=%v), want a", q.Name, ok)
	}
	if closed(ch) {
		t.Fatal("the fresh channel is already closed")
	}

	// A member joining without becoming queen is no change.
	b := c.start("b", []string{a.addr()})
	waitLive(t, []string{"a", "b"}, a, b)
	waitQueen(t, "a", a, b)
	_, _, chB := b.WatchQueen()
	testutil.Consistently(t, quiet, "no queen change while b joins", func() error {
		if closed(ch) {
			return errors.New("a's channel closed")
		}
		if closed(chB) {
			return errors.New("b's channel closed")
		}
		return nil
	})

	// The queen leaving is a change, on both sides.
	if err := a.Leave(); err != nil {
		t.Fatalf("Leave: %v", err)
	}
	testutil.Eventually(t, waitFor, "both channels close", func() error {
		if !closed(ch) {
			return errors.New("a's channel still open")
		}
		if !closed(chB) {
			return errors.New("b's channel still open")
		}
		return nil
	})
	if q, ok, _ := a.WatchQueen(); ok {
		t.Errorf("a, having left, still sees queen %s", q.Name)
	}
	a.stop()
	testutil.Eventually(t, waitFor, "b takes over", func() error {
		if q := b.queen(); q != "b" {
			return fmt.Errorf("b sees queen %q", q)
		}
		return nil
	})
}

func TestNew_Errors(t *testing.T) {
	for _, tc := range []struct {
		name string
		cfg  Config
		want []string // substrings of the error
	}{
		{
			name: "metadata over memberlist's limit",
			cfg: Config{
				Name:     "big",
				BindAddr: "127.0.0.1:0",
				Meta:     Meta{HTTPAddr: strings.Repeat("x", memberlist.MetaMaxSize), Roles: []string{RoleQueen}},
			},
			want: []string{"metadata", strconv.Itoa(memberlist.MetaMaxSize)},
		},
		{
			name: "bind address without a port",
			cfg:  Config{Name: "x", BindAddr: "127.0.0.1"},
			want: []string{"bind address"},
		},
		{
			name: "bind port out of range",
			cfg:  Config{Name: "x", BindAddr: "127.0.0.1:70000"},
			want: []string{"bind address", "70000"},
		},
		{
			name: "bad advertise address",
			cfg:  Config{Name: "x", BindAddr: "127.0.0.1:0", AdvertiseAddr: "nope"},
			want: []string{"advertise address"},
		},
	} {
		t.Run(tc.name, func(t *testing.T) {
			g, err := New(tc.cfg, nil)
			if err == nil {
				_ = g.Shutdown()
				t.Fatal("New succeeded")
			}
			for _, w := range tc.want {
				if !strings.Contains(err.Error(), w) {
					t.Errorf("error %q does not mention %q", err, w)
				}
			}
		})
	}
}

// TestNew_MetaLeavesRoomForClaim: a node whose metadata fits only without the
// claim and leave flags could never broadcast them (the queen's claim would
// silently not go out, so a newcomer could unseat it), so New must either
// refuse it or still get the claim out.
func TestNew_MetaLeavesRoomForClaim(t *testing.T) {
	meta := Meta{Roles: []string{RoleQueen}, Start: t0, Version: "v"}
	b, err := meta.encode()
	if err != nil {
		t.Fatal(err)
	}
	meta.HTTPAddr = strings.Repeat("x", memberlist.MetaMaxSize-len(b))
	if b, err := meta.encode(); err != nil || len(b) != memberlist.MetaMaxSize {
		t.Fatalf("test metadata is %d bytes (%v), want exactly %d", len(b), err, memberlist.MetaMaxSize)
	}

	c := newCluster(t)
	cfg := Config{Name: "a", BindAddr: "127.0.0.1:0", Secret: c.secret, Meta: meta, Logger: c.log}
	g, err := New(cfg, nil)
	if err != nil {
		if !strings.Contains(err.Error(), "metadata") {
			t.Fatalf("New refused the metadata with an unclear error: %v", err)
		}
		return
	}
	n := &testNode{Gossip: g, t: t, name: "a", meta: meta, done: make(chan error, 1)}
	t.Cleanup(n.stop)
	n.run()
	testutil.Eventually(t, waitFor, "a elects itself and broadcasts its claim", func() error {
		if q := n.queen(); q != "a" {
			return fmt.Errorf("queen %q", q)
		}
		if !n.Self().Claim {
			return errors.New("a's own metadata carries no claim")
		}
		return nil
	})
}

func TestRun_NoClaimBeforeJoin(t *testing.T) {
	c := newCluster(t)
	a := c.start("a", nil)
	waitQueen(t, "a", a)

	// b's seed does not answer, and b outranks a: were b to claim the seat
	// while still booting, it would keep it after joining.
	b := c.start("b", []string{deadAddr(t)}, withPriority(10), withJoinTimeout(time.Minute))
	testutil.Consistently(t, quiet, "b claims nothing before it joins", func() error {
		if q := b.queen(); q != "" {
			return fmt.Errorf("b elected %s", q)
		}
		return nil
	})
	if n, err := b.Join([]string{a.addr()}); err != nil || n != 1 {
		t.Fatalf("Join = %d, %v; want 1, nil", n, err)
	}
	waitLive(t, []string{"a", "b"}, a, b)
	waitQueen(t, "a", a, b)
}

func TestRun_ActsAloneAfterJoinTimeout(t *testing.T) {
	c := newCluster(t)
	b := c.start("b", []string{deadAddr(t)}, withJoinTimeout(100*time.Millisecond))
	waitQueen(t, "b", b)
}

func TestLeave_AfterShutdownIsAnErrorNotAPanic(t *testing.T) {
	g, err := New(Config{Name: "solo", BindAddr: "127.0.0.1:0"}, nil)
	if err != nil {
		t.Fatal(err)
	}
	if err := g.Shutdown(); err != nil {
		t.Fatal(err)
	}
	if err := g.Leave(); !errors.Is(err, ErrShutdown) {
		t.Fatalf("Leave after Shutdown = %v, want ErrShutdown", err)
	}
}

func TestJoin_ErrorIsOneLineAndWrapped(t *testing.T) {
	g, err := New(Config{Name: "solo", BindAddr: "127.0.0.1:0"}, nil)
	if err != nil {
		t.Fatal(err)
	}
	defer g.Shutdown()
	_, err = g.Join([]string{"127.0.0.1:1"})
	if err == nil {
		t.Fatal("join of a closed port succeeded")
	}
	if strings.Contains(err.Error(), "\n") {
		t.Errorf("join error spans lines: %q", err)
	}
	var ol oneLine
	if !errors.As(err, &ol) || ol.err == nil {
		t.Errorf("join error does not wrap memberlist's error: %v", err)
	}
}

// memberlist reads a host name as no address and binds every interface:
// names are resolved before it sees them.
func TestNew_HostNameBindsWhatItResolvesTo(t *testing.T) {
	g, err := New(Config{Name: "solo", BindAddr: "localhost:0"}, nil)
	if err != nil {
		t.Fatal(err)
	}
	defer g.Shutdown()
	if addr := g.Self().GossipAddr; !strings.HasPrefix(addr, "127.0.0.1:") {
		t.Fatalf("bound %q, want loopback", addr)
	}
}

// WatchMember fires when a member fails, at once for one that already did,
// and never for one that left gracefully (it drains its requests first) or
// that this node has not heard of (the queen may know it first).
func TestWatchMember(t *testing.T) {
	c := newCluster(t)
	a := c.start("a", nil)
	b := c.start("b", []string{a.addr()})
	d := c.start("d", []string{a.addr()})
	waitLive(t, []string{"a", "b", "d"}, a, b, d)
	if ch := a.WatchMember("nobody"); ch != nil {
		t.Fatal("a member never heard of gave a channel that may fire")
	}
	gone := a.WatchMember("b")
	if closed(gone) {
		t.Fatal("fired for a live member")
	}
	left := a.WatchMember("d")
	d.leave()
	waitLive(t, []string{"a", "b"}, a)
	if closed(left) || a.WatchMember("d") != nil {
		t.Fatal("fired for a member that left gracefully")
	}
	bStart := b.Self().Start
	if a.ConfirmDead("b", bStart) {
		t.Fatal("confirmed the death of a member that answers pings")
	}
	b.stop()
	if !a.ConfirmDead("b", bStart) {
		t.Fatal("ConfirmDead(b) did nothing")
	}
	if !closed(gone) {
		t.Fatal("the watch did not fire when b was confirmed dead")
	}
	if !closed(a.WatchMember("b")) {
		t.Fatal("a dead member's watch is not closed")
	}
}
