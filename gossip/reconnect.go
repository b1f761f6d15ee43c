package gossip

import (
	"context"
	"math/rand/v2"
	"net"
	"slices"
	"sync"
	"time"
)

// reconnectLoop redials, every ReconnectInterval, a member failure detection
// declared dead (for ReconnectFor after it failed), and the seeds and
// snapshot addresses while this node is alone. memberlist gossips to the
// dead only briefly, so without this two sides of a partition longer than a
// few seconds never merge again; serf does the same.
func (g *Gossip) reconnectLoop(ctx context.Context) {
	t := time.NewTimer(jitter(g.cfg.Timing.ReconnectInterval))
	defer t.Stop()
	for {
		select {
		case <-ctx.Done():
			return
		case <-t.C:
		}
		if addrs := g.reconnectTargets(time.Now()); len(addrs) > 0 {
			g.redial(ctx, addrs)
		}
		t.Reset(jitter(g.cfg.Timing.ReconnectInterval))
	}
}

// jitter spreads d by +-20%, so that nodes do not redial in step.
func jitter(d time.Duration) time.Duration {
	return d - d/5 + time.Duration(rand.Int64N(int64(d/5*2+1)))
}

// reconnectTargets lists the addresses to redial now: one failed (not left)
// member within ReconnectFor, picked at random as serf does (one member of
// the other side of a partition is enough to merge the two), and, while this
// node has no live peer, the known addresses (seeds, snapshot). Host names
// are resolved outside the lock: a slow DNS server must not hold up
// memberlist's callbacks, which take the same lock.
func (g *Gossip) reconnectTargets(now time.Time) []string {
	g.mu.Lock()
	if g.leaving || g.down || !g.settled {
		g.mu.Unlock()
		return nil // the join loop is still at it
	}
	liveAddrs := make(map[string]bool, len(g.live))
	for _, m := range g.live {
		liveAddrs[m.GossipAddr] = true
	}
	self := g.live[g.cfg.Name].GossipAddr
	alone := len(g.live) <= 1
	var failed []string
	for name, m := range g.departed {
		if m.Status == StatusFailed && now.Sub(g.departedAt[name]) < g.cfg.ReconnectFor && !liveAddrs[m.GossipAddr] && m.GossipAddr != "" {
			failed = append(failed, m.GossipAddr)
		}
	}
	var known []string
	if alone {
		known = slices.Clone(g.known)
	}
	g.mu.Unlock()

	var out []string
	if len(failed) > 0 {
		out = append(out, failed[rand.IntN(len(failed))])
	}
	for _, a := range known {
		if !liveAddrs[a] && a != self && !slices.Contains(out, a) && !resolvesToLive(a, self, liveAddrs) {
			out = append(out, a)
		}
	}
	slices.Sort(out)
	return out
}

// resolvesToLive reports whether a seed given by host name is already
// answered for: every address it resolves to, this node's own aside, is a
// live member. A name with one address no live member has (a pod that
// started since, the other side of a partition) is redialled, and
// memberlist's join dials every address the name has. Only literal addresses
// are compared without a lookup; a name that does not resolve is redialled,
// which is what the join does with it too.
func resolvesToLive(addr, self string, live map[string]bool) bool {
	host, port, err := net.SplitHostPort(addr)
	if err != nil || net.ParseIP(host) != nil {
		return false
	}
	ips, err := net.LookupHost(host)
	if err != nil || len(ips) == 0 {
		return false
	}
	for _, ip := range ips {
		a := net.JoinHostPort(ip, port)
		if a != self && !live[a] {
			return false
		}
	}
	return true
}

// redial joins each address at once, in parallel (an unreachable one costs a
// TCP timeout, which must not hold up the others), and logs what answered.
func (g *Gossip) redial(ctx context.Context, addrs []string) {
	var wg sync.WaitGroup
	for _, a := range addrs {
		wg.Go(func() {
			if ctx.Err() != nil {
				return
			}
			g.mu.Lock()
			down := g.down || g.leaving
			g.mu.Unlock()
			if down {
				return
			}
			if n, err := g.ml.Join([]string{a}); err == nil && n > 0 {
				g.log.Info("reconnected to a member that was unreachable", "addr", a)
			} else {
				g.log.Debug("reconnect", "addr", a, "err", oneLine{err})
			}
		})
	}
	wg.Wait()
}
