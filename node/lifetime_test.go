package node_test

import (
	"context"
	"errors"
	"net"
	"testing"
	"time"

	"github.com/rbee/rbee/internal/testutil"
	"github.com/rbee/rbee/node"
	"github.com/rbee/rbee/node/api"
	"github.com/rbee/rbee/node/nodetest"
)

// A node that never ran frees its sockets on Close, and cannot run after.
func TestNode_CloseWithoutRunFreesListeners(t *testing.T) {
	cfg := nodetest.Config(t, "a")
	n, err := node.New(cfg)
	if err != nil {
		t.Fatal(err)
	}
	httpAddr, gossipAddr := n.HTTPAddr(), n.GossipAddr()
	if err := n.Close(); err != nil {
		t.Fatal(err)
	}
	if err := n.Close(); err != nil {
		t.Fatalf("second Close: %v", err)
	}
	if err := n.Run(context.Background()); !errors.Is(err, node.ErrClosed) {
		t.Fatalf("Run after Close = %v, want ErrClosed", err)
	}
	// Both ports are free again: a new node binds them.
	cfg.HTTPAddr, cfg.GossipAddr = httpAddr, gossipAddr
	n2, err := node.New(cfg)
	if err != nil {
		t.Fatalf("bind the closed node's ports again: %v", err)
	}
	if err := n2.Close(); err != nil {
		t.Fatal(err)
	}
}

// heldWorkerNode is a one-node cluster whose one worker (one slot) holds
// every request until told to let go.
func heldWorkerNode(t *testing.T) (*fakeWorker, *nodetest.Node) {
	t.Helper()
	fw := newFakeWorker(t, "w1")
	fw.setHold(true)
	a := nodetest.Start(t, "a", nodetest.WithCollector(workersOf("m", 1, fw)))
	testutil.Eventually(t, 10*time.Second, "a serves m", func() error {
		if len(mustQueues(a)) == 0 {
			return errors.New("no queue yet")
		}
		return nil
	})
	return fw, a
}

// Leave lets a request in flight finish within its context, and refuses new
// ones meanwhile.
func TestNode_LeaveDrainsRequestsInFlight(t *testing.T) {
	fw, a := heldWorkerNode(t)
	addr := a.HTTPAddr()
	res := make(chan apiResult, 1)
	go func() {
		r, _ := post(context.Background(), addr, api.PathChat, chat("m", false))
		res <- r
	}()
	fw.waitInFlight(t, 1)
	left := make(chan error, 1)
	go func() { left <- a.Leave(30 * time.Second) }()
	testutil.Eventually(t, 5*time.Second, "listener closed for new requests", func() error {
		c, err := net.DialTimeout("tcp", addr, time.Second)
		if err == nil {
			c.Close()
			return errors.New("still accepting")
		}
		return nil
	})
	select {
	case err := <-left:
		t.Fatalf("Leave returned (%v) with a request in flight", err)
	default:
	}
	fw.setHold(false)
	if r := <-res; r.status != 200 {
		t.Fatalf("request in flight during the drain: %d %q, want 200", r.status, r.body)
	}
	if err := <-left; err != nil {
		t.Fatalf("Leave: %v", err)
	}
}

// Leave with a context that ends cuts what is still in flight.
func TestNode_LeaveCutsRequestsWhenItsContextEnds(t *testing.T) {
	fw, a := heldWorkerNode(t)
	res := make(chan error, 1)
	go func() {
		_, err := post(context.Background(), a.HTTPAddr(), api.PathChat, chat("m", false))
		res <- err
	}()
	fw.waitInFlight(t, 1)
	if err := a.Leave(100 * time.Millisecond); err != nil {
		t.Fatalf("Leave: %v", err)
	}
	if err := <-res; err == nil {
		t.Fatal("the held request got an answer; want its connection cut when the drain ended")
	}
	testutil.Eventually(t, 5*time.Second, "worker saw the cancel", func() error {
		if fw.canceled.Load() != 1 {
			return errors.New("not yet")
		}
		return nil
	})
}
