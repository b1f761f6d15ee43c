package gossip

import (
	"context"
	"crypto/hmac"
	"crypto/sha256"
	"encoding/hex"
	"slices"
	"time"

	"github.com/rbee/rbee/internal/backoff"
)

// Discovery finds the other members of this node's cluster on the network,
// so that nodes need no --join: Config.Discovery. The gossip layer only
// needs addresses; how they are announced and heard (multicast DNS in MDNS,
// an in-memory table in tests) is the implementation's business, and so is
// telling this cluster's members from another's.
type Discovery interface {
	// Announce makes this node, reachable for gossip at addr
	// (host:port), known to the others until Close. It is called again
	// after it failed (the network may not be up yet at boot).
	Announce(addr string) error
	// Browse listens for one round and returns the gossip addresses of
	// the members of this cluster it heard, this node's own included
	// when it hears itself.
	Browse(ctx context.Context) ([]string, error)
	// Close stops announcing; it is called when the node leaves and when
	// Run ends, and may be called twice.
	Close() error
}

// ClusterID is what a node announces of its cluster: an HMAC of a fixed
// label under the gossip secret, truncated to 128 bits. It is the same for
// every node holding the key and tells nothing of the key (HMAC is
// one-way, and the secret is itself derived from the key by HKDF); a
// listener can only tell that two announcements belong to one cluster.
func ClusterID(secret []byte) string {
	if len(secret) == 0 {
		return ""
	}
	m := hmac.New(sha256.New, secret)
	m.Write([]byte("rbee discovery cluster id v1"))
	return hex.EncodeToString(m.Sum(nil)[:16])
}

// discoverFirst is the pause after the first discovery round; the pause
// doubles after each round up to Config.DiscoverInterval. A node that starts
// with its peers finds most of them in the first round and the latecomers
// (whose announcement came up after its query) in the next few; after that,
// rounds only find machines that come back and partitions that heal.
const discoverFirst = time.Second

// discoverLoop announces this node and joins every member of the cluster it
// hears that it does not see alive. It settles a node started without seeds
// after the first round: a node that hears its peers joins them before it
// may claim the queen seat, and one that hears no one starts the cluster.
func (g *Gossip) discoverLoop(ctx context.Context) {
	d := g.cfg.Discovery
	defer func() {
		if err := d.Close(); err != nil {
			g.log.Debug("stop discovery", "err", err)
		}
	}()
	self := g.Self().GossipAddr
	announced, warned := false, false
	retry := backoff.New(backoff.Policy{First: discoverFirst, Max: g.cfg.DiscoverInterval, Jitter: 0.2})
	for first := true; ; first = false {
		g.mu.Lock()
		gone := g.leaving || g.down
		g.mu.Unlock()
		if gone {
			return // Leave closed the discovery: announce nothing more
		}
		if !announced {
			if err := d.Announce(self); err != nil {
				// Kept up: an interface that is down at boot
				// comes up later; said once, not every round.
				if !warned {
					g.log.Warn("discovery: cannot announce this node; still trying", "addr", self, "err", oneLine{err})
					warned = true
				}
			} else {
				announced = true
				g.log.Info("discovery: announcing this node", "addr", self)
			}
		}
		addrs, err := d.Browse(ctx)
		if ctx.Err() != nil {
			return
		}
		if err != nil {
			g.log.Debug("discovery: browse", "err", oneLine{err})
		}
		if targets := g.discoveredTargets(addrs, self); len(targets) > 0 {
			n, err := g.joinEach(ctx, targets)
			if n > 0 {
				g.log.Info("discovery: joined members heard on the network", "addrs", targets, "contacted", n)
			} else {
				g.log.Debug("discovery: join", "addrs", targets, "err", oneLine{err})
			}
		}
		if first && len(g.seeds) == 0 {
			g.settle()
		}
		if !retry.Wait(ctx, nil) {
			return
		}
	}
}

// discoveredTargets is what to join of the addresses heard: neither this
// node nor a live member.
func (g *Gossip) discoveredTargets(addrs []string, self string) []string {
	g.mu.Lock()
	defer g.mu.Unlock()
	if g.leaving || g.down {
		return nil
	}
	var out []string
	for _, a := range addrs {
		if a == self || slices.Contains(out, a) {
			continue
		}
		live := false
		for _, m := range g.live {
			if m.GossipAddr == a {
				live = true
				break
			}
		}
		if !live {
			out = append(out, a)
		}
	}
	slices.Sort(out)
	return out
}
