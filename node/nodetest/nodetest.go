// Package nodetest starts rbee nodes inside a test process, on loopback with
// port 0 and timings shrunk for tests, as net/http/httptest starts servers.
// The node package's own tests, the dashboard's and the CLI's use it; it is
// the one way to start an in-process node.
package nodetest

import (
	"context"
	"log/slog"
	"os"
	"sync"
	"testing"
	"time"

	"github.com/rbee/rbee/node"
	"github.com/rbee/rbee/node/hive"
	"github.com/rbee/rbee/wsapi"
)

// Node is a node running in this test process. It is stopped when the test
// ends, if the test did not stop it.
type Node struct {
	*node.Node
	cancel context.CancelFunc
	done   chan error
	once   sync.Once
	err    error
}

// Option changes a test node's configuration.
type Option func(*node.Config)

// WithCollector makes the node a hive reporting c's workers.
func WithCollector(c hive.Collector) Option { return func(cfg *node.Config) { cfg.Collector = c } }

// WithKey gives the node a cluster key.
func WithKey(k wsapi.Key) Option { return func(cfg *node.Config) { cfg.Key = k } }

// WithRoles sets the node's roles; none makes an entry-only node.
func WithRoles(r ...string) Option { return func(cfg *node.Config) { cfg.Roles = r } }

// WithJoin makes the node join the members at addrs.
func WithJoin(addrs ...string) Option { return func(cfg *node.Config) { cfg.Join = addrs } }

// WithQueue sets each model's queue limit and how long a request waits.
func WithQueue(limit int, timeout time.Duration) Option {
	return func(cfg *node.Config) { cfg.QueueLimit, cfg.QueueTimeout = limit, timeout }
}

// Logger is a test's logger: silent, unless RBEE_TEST_LOG is set, then every
// line at DEBUG on stderr.
func Logger(tb testing.TB) *slog.Logger {
	if os.Getenv("RBEE_TEST_LOG") != "" {
		return slog.New(slog.NewTextHandler(os.Stderr, &slog.HandlerOptions{Level: slog.LevelDebug})).With("test", tb.Name())
	}
	return slog.New(slog.DiscardHandler)
}

// Config is the configuration Start begins from: node name on 127.0.0.1
// port 0 for both gossip and HTTP, telemetry and queen events every 100 ms,
// a hive online for 1 s after its last report.
func Config(tb testing.TB, name string) node.Config {
	cfg := node.DefaultConfig()
	cfg.Name = name
	cfg.GossipAddr = "127.0.0.1:0"
	cfg.HTTPAddr = "127.0.0.1:0"
	// Faster than production so tests finish quickly; still well above
	// what a loaded race-enabled run needs.
	cfg.TelemetryInterval = 100 * time.Millisecond
	cfg.QueenEventInterval = 100 * time.Millisecond
	cfg.HiveTTL = time.Second
	cfg.Logger = Logger(tb)
	return cfg
}

// Start starts node name with Config's settings changed by opts, and runs it
// until the test ends or Stop.
func Start(tb testing.TB, name string, opts ...Option) *Node {
	tb.Helper()
	cfg := Config(tb, name)
	for _, o := range opts {
		o(&cfg)
	}
	return Run(tb, cfg)
}

// Run starts a node with exactly cfg and runs it until the test ends or
// Stop.
func Run(tb testing.TB, cfg node.Config) *Node {
	tb.Helper()
	n, err := node.New(cfg)
	if err != nil {
		tb.Fatalf("start node %s: %v", cfg.Name, err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	tn := &Node{Node: n, cancel: cancel, done: make(chan error, 1)}
	go func() { tn.done <- n.Run(ctx) }()
	tb.Cleanup(func() {
		if err := tn.Stop(); err != nil {
			tb.Errorf("node %s: %v", cfg.Name, err)
		}
	})
	return tn
}

// Stop ends the node's Run (at once, as a cancelled context does) and
// returns Run's error. Safe to call again.
func (n *Node) Stop() error {
	n.once.Do(func() {
		n.cancel()
		n.err = <-n.done
	})
	return n.err
}

// Leave stops the node gracefully (node.Node.Leave, giving requests in
// flight up to drain) and returns Run's error. Safe to call again, and with
// Stop.
func (n *Node) Leave(drain time.Duration) error {
	n.once.Do(func() {
		ctx, cancel := context.WithTimeout(context.Background(), drain)
		defer cancel()
		_ = n.Node.Leave(ctx)
		n.err = <-n.done
		n.cancel()
	})
	return n.err
}

// Exited waits up to within for the node's Run to return by itself (it was
// told to leave over its API): it reports whether it did, and Run's error.
func (n *Node) Exited(within time.Duration) (bool, error) {
	t := time.NewTimer(within)
	defer t.Stop()
	select {
	case err := <-n.done:
		n.once.Do(func() { n.err = err; n.cancel() })
		return true, err
	case <-t.C:
		return false, nil
	}
}
