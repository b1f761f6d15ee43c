package gossip

// The test harness: in-process clusters over loopback sockets, each node with
// its own Run goroutine, and polling waits instead of sleeps.

import (
	"bytes"
	"context"
	"crypto/rand"
	"fmt"
	"log/slog"
	"net"
	"slices"
	"strconv"
	"sync"
	"testing"
	"time"

	"github.com/rbee/rbee/internal/testutil"
)

// waitFor bounds every testutil.Eventually: far above what a 2-core machine under
// -race needs (failure detection takes 1 to 2 s with LANTiming), so reaching
// it means the behaviour is wrong, not slow.
const waitFor = 10 * time.Second

// quiet is how long a "nothing changes" check watches: several probe and
// gossip rounds of LANTiming (200 ms and 50 ms).
const quiet = 600 * time.Millisecond

// testNode is one Gossip with its Run goroutine.
type testNode struct {
	*Gossip
	t      *testing.T
	name   string
	meta   Meta
	cancel context.CancelFunc
	done   chan error
	ran    bool

	stopOnce sync.Once
}

type nodeOption func(*Config)

func withPriority(p int) nodeOption  { return func(c *Config) { c.Meta.Priority = p } }
func withSecret(s []byte) nodeOption { return func(c *Config) { c.Secret = s } }
func withJoinTimeout(d time.Duration) nodeOption {
	return func(c *Config) { c.JoinTimeout = d }
}

// testCluster is the shared secret and log of one test's nodes.
type testCluster struct {
	t      *testing.T
	secret []byte
	log    *slog.Logger
	nodes  []*testNode
}

// newCluster returns an empty cluster with a fresh 32-byte secret. The nodes'
// logs (memberlist's included, at debug) are printed only if the test fails,
// after every node has stopped, so nothing logs to a finished test.
func newCluster(t *testing.T) *testCluster {
	t.Helper()
	buf := &lockedBuffer{}
	t.Cleanup(func() {
		if t.Failed() {
			t.Logf("node logs:\n%s", buf.String())
		}
	})
	return &testCluster{
		t:      t,
		secret: newSecret(t),
		log:    slog.New(slog.NewTextHandler(buf, &slog.HandlerOptions{Level: slog.LevelDebug})),
	}
}

func newSecret(t *testing.T) []byte {
	t.Helper()
	s := make([]byte, 32)
	if _, err := rand.Read(s); err != nil {
		t.Fatal(err)
	}
	return s
}

// create makes a node without running it. With no seeds it starts a new
// cluster. It is stopped (Run cancelled and returned, then Shutdown) when the
// test ends.
func (c *testCluster) create(name string, seeds []string, opts ...nodeOption) *testNode {
	c.t.Helper()
	cfg := Config{
		Name:     name,
		BindAddr: "127.0.0.1:0",
		Secret:   c.secret,
		Meta: Meta{
			HTTPAddr: "127.0.0.1:" + strconv.Itoa(8000+len(c.nodes)),
			Roles:    []string{RoleQueen, RoleHive},
			Start:    time.Now(),
			Version:  "test-" + name,
		},
		Logger: c.log.With("node", name),
	}
	for _, o := range opts {
		o(&cfg)
	}
	g, err := New(cfg, seeds)
	if err != nil {
		c.t.Fatalf("new node %s: %v", name, err)
	}
	n := &testNode{Gossip: g, t: c.t, name: name, meta: cfg.Meta, done: make(chan error, 1)}
	c.t.Cleanup(n.stop)
	c.nodes = append(c.nodes, n)
	return n
}

// start creates a node and runs it.
func (c *testCluster) start(name string, seeds []string, opts ...nodeOption) *testNode {
	c.t.Helper()
	n := c.create(name, seeds, opts...)
	n.run()
	return n
}

// startN starts n nodes, the first alone and the others seeded with its
// address, and waits until every node sees every other alive. Their names run
// backwards ("n3", "n2", "n1" for n = 3) so that the oldest node never wins on
// name alone.
//
// The wait matters: the later nodes learn of each other only through the
// first, so a test that stops it before that gossip went out splits the rest
// into clusters of one.
func (c *testCluster) startN(n int, opts ...nodeOption) []*testNode {
	c.t.Helper()
	var nodes []*testNode
	var seeds, all []string
	for i := range n {
		nd := c.start("n"+strconv.Itoa(n-i), seeds, opts...)
		if i == 0 {
			seeds = []string{nd.addr()}
		}
		nodes = append(nodes, nd)
		all = append(all, nd.name)
	}
	slices.Sort(all)
	waitLive(c.t, all, nodes...)
	return nodes
}

func (n *testNode) run() {
	ctx, cancel := context.WithCancel(context.Background())
	n.cancel, n.ran = cancel, true
	go func() { n.done <- n.Run(ctx) }()
}

// addr is the node's gossip address as the others see it.
func (n *testNode) addr() string { return n.Self().GossipAddr }

// stop cancels Run, waits for it to return and shuts memberlist down, without
// telling anyone: on its own it is an abrupt death. Later calls do nothing.
func (n *testNode) stop() {
	n.stopOnce.Do(func() {
		if n.ran {
			n.cancel()
			select {
			case err := <-n.done:
				if err != nil {
					n.t.Errorf("%s: Run: %v", n.name, err)
				}
			case <-time.After(waitFor):
				n.t.Errorf("%s: Run did not return %v after its context ended", n.name, waitFor)
			}
		}
		if err := n.Shutdown(); err != nil {
			n.t.Errorf("%s: Shutdown: %v", n.name, err)
		}
	})
}

// leave is a graceful exit: Leave, then stop.
func (n *testNode) leave() {
	n.t.Helper()
	if err := n.Leave(); err != nil {
		n.t.Fatalf("%s: Leave: %v", n.name, err)
	}
	n.stop()
}

// queen is the node's current queen name, "" for none.
func (n *testNode) queen() string {
	q, ok, _ := n.WatchQueen()
	if !ok {
		return ""
	}
	return q.Name
}

func (n *testNode) member(name string) (Member, bool) {
	for _, m := range n.Members() {
		if m.Name == name {
			return m, true
		}
	}
	return Member{}, false
}

// agreedQueen returns the queen all nodes report, or an error naming the
// disagreement.
func agreedQueen(nodes ...*testNode) (string, error) {
	var views []string
	for _, n := range nodes {
		views = append(views, n.name+"→"+n.queen())
	}
	q := nodes[0].queen()
	if q == "" {
		return "", fmt.Errorf("no queen: %v", views)
	}
	for _, n := range nodes[1:] {
		if n.queen() != q {
			return "", fmt.Errorf("disagree: %v", views)
		}
	}
	return q, nil
}

// waitQueen waits until all nodes agree that want is queen.
func waitQueen(t *testing.T, want string, nodes ...*testNode) {
	t.Helper()
	testutil.Eventually(t, waitFor, "all agree "+want+" is queen", func() error {
		q, err := agreedQueen(nodes...)
		if err != nil {
			return err
		}
		if q != want {
			return fmt.Errorf("all agree on %s", q)
		}
		return nil
	})
}

// waitLive waits until every node's LiveMembers is exactly want.
func waitLive(t *testing.T, want []string, nodes ...*testNode) {
	t.Helper()
	testutil.Eventually(t, waitFor, fmt.Sprintf("all see live members %v", want), func() error {
		for _, n := range nodes {
			if got := liveNames(n); !slices.Equal(got, want) {
				return fmt.Errorf("%s sees %v", n.name, got)
			}
		}
		return nil
	})
}

func liveNames(n *testNode) []string {
	var out []string
	for _, m := range n.LiveMembers() {
		out = append(out, m.Name)
	}
	slices.Sort(out)
	return out
}

func closed(ch <-chan struct{}) bool {
	select {
	case <-ch:
		return true
	default:
		return false
	}
}

// deadAddr is a loopback address where nothing listens.
func deadAddr(t *testing.T) string {
	t.Helper()
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	addr := l.Addr().String()
	if err := l.Close(); err != nil {
		t.Fatal(err)
	}
	return addr
}

func byName(nodes []*testNode, name string) *testNode {
	for _, n := range nodes {
		if n.name == name {
			return n
		}
	}
	panic("no node " + name)
}

// lockedBuffer is a bytes.Buffer safe for concurrent writers.
type lockedBuffer struct {
	mu  sync.Mutex
	buf bytes.Buffer
}

func (b *lockedBuffer) Write(p []byte) (int, error) {
	b.mu.Lock()
	defer b.mu.Unlock()
	return b.buf.Write(p)
}

func (b *lockedBuffer) String() string {
	b.mu.Lock()
	defer b.mu.Unlock()
	return b.buf.String()
}
