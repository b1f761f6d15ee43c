package node_test

import (
	"context"
	"errors"
	"net"
	"strings"
	"testing"

	"github.com/rbee/rbee/gossip"
	"github.com/rbee/rbee/node"
	"github.com/rbee/rbee/node/api"
	"github.com/rbee/rbee/node/nodetest"
	"github.com/rbee/rbee/wsapi"
)

// The join mistakes that used to split a cluster quietly get a clear error.
func TestJoin_MistakesAreNamed(t *testing.T) {
	a := nodetest.Start(t, "a")
	cl := api.NewClient(a.HTTPAddr(), wsapi.Key{})
	defer cl.Close()

	// Its own address: memberlist calls that a success.
	if _, err := cl.Join(context.Background(), []string{a.GossipAddr()}); err == nil || !strings.Contains(err.Error(), "own gossip address") {
		t.Errorf("join to itself: %v, want a refusal", err)
	}
	// Another node's HTTP port where its gossip port belongs.
	b := nodetest.Start(t, "b")
	_, err := cl.Join(context.Background(), []string{b.HTTPAddr()})
	if err == nil || !strings.Contains(err.Error(), `HTTP API of rbee node "b"`) || !strings.Contains(err.Error(), b.GossipAddr()) {
		t.Errorf("join to an HTTP port: %v, want the error to name b's gossip address %s", err, b.GossipAddr())
	}
	// And the right one works.
	if n, err := cl.Join(context.Background(), []string{b.GossipAddr()}); err != nil || n != 1 {
		t.Errorf("join b: %d, %v", n, err)
	}
}

// A node started with its own address as seed refuses to start.
func TestNew_RefusesToJoinItself(t *testing.T) {
	// A port nothing else uses, for the seed to name before the node
	// binds it.
	l, lerr := net.Listen("tcp", "127.0.0.1:0")
	if lerr != nil {
		t.Fatal(lerr)
	}
	addr := l.Addr().String()
	l.Close()
	cfg := nodetest.Config(t, "a")
	cfg.GossipAddr = addr
	cfg.Join = []string{addr}
	n, err := node.New(cfg)
	if err == nil {
		n.Close()
		t.Fatal("a node whose seed is itself started")
	}
	if !errors.Is(err, gossip.ErrJoinSelf) {
		t.Fatalf("err = %v, want ErrJoinSelf", err)
	}
}
