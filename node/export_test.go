package node

import (
	"context"
	"time"

	"github.com/rbee/rbee/gossip"

	"github.com/rbee/rbee/wsapi"
)

// What the external tests of this package (package node_test) may reach of
// its insides.

// ValidateConfig is what New checks of cfg.
func ValidateConfig(cfg Config) error { return cfg.withDefaults().validate() }

// GossipTimingOf is the gossip timing New runs cfg with.
func GossipTimingOf(cfg Config) gossip.Timing { return cfg.withDefaults().GossipTiming }

// QueenQueues is the queen's queues, empty on a node that is not queen.
func QueenQueues(n *Node) []wsapi.QueueStats {
	qs, _ := n.queen.Queues(time.Now())
	return qs
}

// Crash stops n as a killed process stops: its sockets close and it tells
// nobody it is going.
func Crash(n *Node) {
	ctx, cancel := context.WithCancel(context.Background())
	cancel()
	n.stop(ctx, false)
}

// ReportMigration is the proxy's OnMigration of n.
func ReportMigration(n *Node, m wsapi.Migration)        { n.reportMigration(m) }
func CORSAllowed(patterns []string, origin string) bool { return corsAllowed(patterns, origin) }
