package gossip

import (
	"errors"
	"fmt"
	"net"
	"os"
	"path/filepath"
	"sync"
	"testing"
	"time"

	"github.com/hashicorp/memberlist"

	"github.com/rbee/rbee/internal/testutil"
)

// network is a switchboard between in-process nodes: each node's memberlist
// transport goes through it, and a cut link drops packets and lets dials time
// out, as a pulled cable does (no reset, no error, just silence).
type network struct {
	mu  sync.Mutex
	cut map[[2]string]bool // gossip address pairs, both orders
}

func newNetwork() *network { return &network{cut: map[[2]string]bool{}} }

func (nw *network) isCut(a, b string) bool {
	nw.mu.Lock()
	defer nw.mu.Unlock()
	return nw.cut[[2]string{a, b}]
}

// partition cuts every link between the two groups.
func (nw *network) partition(left, right []*testNode) {
	nw.set(left, right, true)
}

// heal joins the two groups again.
func (nw *network) heal(left, right []*testNode) {
	nw.set(left, right, false)
}

func (nw *network) set(left, right []*testNode, cut bool) {
	nw.mu.Lock()
	defer nw.mu.Unlock()
	for _, l := range left {
		for _, r := range right {
			a, b := l.addr(), r.addr()
			nw.cut[[2]string{a, b}], nw.cut[[2]string{b, a}] = cut, cut
		}
	}
}

// cutTransport is a memberlist transport whose links the network can cut.
type cutTransport struct {
	*memberlist.NetTransport
	self    string
	nw      *network
	packets chan *memberlist.Packet
	streams chan net.Conn
	done    chan struct{}
	wg      sync.WaitGroup
}

func (nw *network) transport(t *testing.T, mc *memberlist.Config) (*cutTransport, string) {
	t.Helper()
	nt, err := memberlist.NewNetTransport(&memberlist.NetTransportConfig{BindAddrs: []string{mc.BindAddr}, BindPort: mc.BindPort})
	if err != nil {
		t.Fatal(err)
	}
	self := net.JoinHostPort(mc.BindAddr, fmt.Sprint(nt.GetAutoBindPort()))
	ct := &cutTransport{NetTransport: nt, self: self, nw: nw, packets: make(chan *memberlist.Packet),
		streams: make(chan net.Conn), done: make(chan struct{})}
	ct.wg.Go(func() {
		for {
			select {
			case p := <-nt.PacketCh():
				if nw.isCut(p.From.String(), self) {
					continue
				}
				select {
				case ct.packets <- p:
				case <-ct.done:
					return
				}
			case <-ct.done:
				return
			}
		}
	})
	ct.wg.Go(func() {
		for {
			select {
			case c := <-nt.StreamCh():
				// No stream crosses a cut: both ends' dials time
				// out (links are cut both ways).
				select {
				case ct.streams <- c:
				case <-ct.done:
					c.Close()
					return
				}
			case <-ct.done:
				return
			}
		}
	})
	return ct, self
}

func (ct *cutTransport) PacketCh() <-chan *memberlist.Packet { return ct.packets }
func (ct *cutTransport) StreamCh() <-chan net.Conn           { return ct.streams }

func (ct *cutTransport) WriteTo(b []byte, addr string) (time.Time, error) {
	if ct.nw.isCut(ct.self, addr) {
		return time.Now(), nil // sent, and lost on the way
	}
	return ct.NetTransport.WriteTo(b, addr)
}

func (ct *cutTransport) DialTimeout(addr string, timeout time.Duration) (net.Conn, error) {
	if ct.nw.isCut(ct.self, addr) {
		t := time.NewTimer(timeout)
		defer t.Stop()
		select {
		case <-t.C:
		case <-ct.done:
		}
		return nil, fmt.Errorf("dial %s: i/o timeout (link cut)", addr)
	}
	return ct.NetTransport.DialTimeout(addr, timeout)
}

// The node-aware variants memberlist prefers (NetTransport has them, and
// embedding would let them bypass the cut).
func (ct *cutTransport) WriteToAddress(b []byte, a memberlist.Address) (time.Time, error) {
	return ct.WriteTo(b, a.Addr)
}

func (ct *cutTransport) DialAddressTimeout(a memberlist.Address, timeout time.Duration) (net.Conn, error) {
	return ct.DialTimeout(a.Addr, timeout)
}

func (ct *cutTransport) Shutdown() error {
	close(ct.done)
	err := shutdownDraining(ct.NetTransport)
	ct.wg.Wait()
	return err
}

// onNetwork puts a node's gossip on nw. gossipToTheDead shortens how long
// memberlist itself keeps gossiping to members it declared dead (30 s by
// default), so a test partition outlasts it in seconds: merging after that
// is the reconnect loop's work alone.
func onNetwork(t *testing.T, nw *network, gossipToTheDead time.Duration) nodeOption {
	return func(c *Config) {
		c.tweak = func(mc *memberlist.Config) {
			ct, _ := nw.transport(t, mc)
			mc.Transport = ct
			mc.GossipToTheDeadTime = gossipToTheDead
		}
	}
}

// TestCluster_PartitionLongerThanGossipToTheDeadHeals: the queen is cut off
// from the two others for longer than memberlist gossips to the dead; the two
// elect a new queen with a higher term; once the links are back the cluster
// is one again, and the side more members followed keeps its queen.
func TestCluster_PartitionLongerThanGossipToTheDeadHeals(t *testing.T) {
	nw := newNetwork()
	c := newCluster(t)
	opt := onNetwork(t, nw, 500*time.Millisecond)
	a := c.start("a", nil, opt)
	b := c.start("b", []string{a.addr()}, opt)
	d := c.start("d", []string{a.addr()}, opt)
	all := []*testNode{a, b, d}
	waitLive(t, []string{"a", "b", "d"}, all...)
	waitQueen(t, "a", all...)
	termA := a.Term()

	nw.partition([]*testNode{a}, []*testNode{b, d})
	waitQueen(t, "b", b, d)
	waitQueen(t, "a", a)
	if got := b.Term(); got <= termA {
		t.Fatalf("b took the seat with term %d, not above a's %d", got, termA)
	}
	// Outlast memberlist's own gossip to the dead several times over.
	testutil.Consistently(t, 2*time.Second, "the sides stay apart while cut", func() error {
		if q := a.queen(); q != "a" {
			return fmt.Errorf("a follows %s across a cut link", q)
		}
		return nil
	})

	nw.heal([]*testNode{a}, []*testNode{b, d})
	waitLive(t, []string{"a", "b", "d"}, all...)
	waitQueen(t, "b", all...)
	testutil.Eventually(t, waitFor, "a dropped its claim", func() error {
		if m, ok := b.member("a"); !ok || m.Claim {
			return errors.New("b still sees a claiming the seat")
		}
		return nil
	})
	if mt := a.MaxTerm(); mt != b.Term() {
		t.Errorf("a's highest term seen %d, want b's %d", mt, b.Term())
	}
}

// TestConfirmDead_ElectsWithoutWaitingForFailureDetection: with failure
// detection slowed to half a minute, only ConfirmDead can replace the dead
// queen within the test.
func TestConfirmDead_ElectsWithoutWaitingForFailureDetection(t *testing.T) {
	c := newCluster(t)
	slow := func(cfg *Config) { cfg.Timing.SuspicionMult, cfg.Timing.SuspicionMaxTimeoutMult = 50, 3 }
	a := c.start("a", nil, slow)
	b := c.start("b", []string{a.addr()}, slow)
	d := c.start("d", []string{a.addr()}, slow)
	waitLive(t, []string{"a", "b", "d"}, a, b, d)
	waitQueen(t, "a", a, b, d)
	self := a.Self()
	a.stop() // dies without a word

	for _, n := range []*testNode{b, d} {
		if n.ConfirmDead("nobody", self.Start) || n.ConfirmDead("a", self.Start.Add(time.Second)) {
			t.Fatalf("%s confirmed a death that does not match a live incarnation", n.name)
		}
		if !n.ConfirmDead("a", self.Start) {
			t.Fatalf("%s: ConfirmDead(a) = false", n.name)
		}
	}
	waitQueen(t, "b", b, d)
	if m, ok := b.member("a"); ok && m.Status == StatusAlive {
		t.Errorf("b lists a as %s after confirming its death", m.Status)
	}
}

// TestSnapshot_RestartedNodeRejoinsWithoutSeeds: a node that kept a snapshot
// finds its cluster again after a restart with no --join.
func TestSnapshot_RestartedNodeRejoinsWithoutSeeds(t *testing.T) {
	dir := t.TempDir()
	path := filepath.Join(dir, "members.json")
	c := newCluster(t)
	a := c.start("a", nil)
	withSnap := func(cfg *Config) { cfg.SnapshotPath = path }
	b := c.start("b", []string{a.addr()}, withSnap)
	waitLive(t, []string{"a", "b"}, a, b)
	testutil.Eventually(t, waitFor, "b wrote its snapshot", func() error {
		addrs, err := readSnapshot(path)
		if err != nil || len(addrs) != 1 || addrs[0] != a.addr() {
			return fmt.Errorf("snapshot %v (%v)", addrs, err)
		}
		return nil
	})
	b.leave()

	b2 := c.start("b", nil, withSnap) // no seeds
	waitLive(t, []string{"a", "b"}, a, b2)
	waitQueen(t, "a", a, b2)
}

func TestSnapshot_UnreadableFileIsNotFatal(t *testing.T) {
	path := filepath.Join(t.TempDir(), "members.json")
	if err := os.WriteFile(path, []byte("{not json"), 0o600); err != nil {
		t.Fatal(err)
	}
	c := newCluster(t)
	a := c.start("a", nil, func(cfg *Config) { cfg.SnapshotPath = path })
	waitQueen(t, "a", a)
}

// TestCluster_RestartedSeedIsRejoined: b joined through a, then a died; a
// comes back on its address as a new cluster of one, and b finds it again
// (it redials members that failed). Today's main joined once, at start, and
// the two stayed apart.
func TestCluster_RestartedSeedIsRejoined(t *testing.T) {
	c := newCluster(t)
	a := c.start("a", nil)
	addr := a.addr()
	// memberlist keeps gossiping to a member it declared dead for a while
	// (30 s by default), which would find a again by itself; shortened,
	// what rejoins is b's redialling alone.
	const toTheDead = 200 * time.Millisecond
	b := c.start("b", []string{addr}, func(cfg *Config) {
		cfg.tweak = func(mc *memberlist.Config) { mc.GossipToTheDeadTime = toTheDead }
	})
	waitLive(t, []string{"a", "b"}, a, b)
	a.stop()
	testutil.Eventually(t, waitFor, "b declares a dead", func() error {
		if m, ok := b.member("a"); ok && m.Status == StatusAlive {
			return errors.New("a still alive")
		}
		return nil
	})
	time.Sleep(3 * toTheDead) // a stays dead past memberlist's gossip to the dead
	a2 := c.start("a", nil, func(cfg *Config) { cfg.BindAddr = addr })
	waitLive(t, []string{"a", "b"}, a2, b)
	testutil.Eventually(t, waitFor, "one queen", func() error { _, err := agreedQueen(a2, b); return err })
}
