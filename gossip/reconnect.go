package gossip

import (
	"context"
	"math/rand/v2"
	"net"
	"slices"
	"sync"
	"time"
)

// reconnectLoop redials, every ReconnectInterval, the members failure
// detection declared dead (for ReconnectFor after they failed) and the seeds
// and snapshot addresses no live member answers at. memberlist gossips to the
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

// reconnectTargets lists the addresses to redial now: failed (not left)
// members within ReconnectFor, and known addresses (seeds, snapshot) that no
// live member has.
func (g *Gossip) reconnectTargets(now time.Time) []string {
	g.mu.Lock()
	defer g.mu.Unlock()
	if g.leaving || g.down || !g.settled {
		return nil // the join loop is still at it
	}
	liveAddrs := make(map[string]bool, len(g.live))
	for _, m := range g.live {
		liveAddrs[m.GossipAddr] = true
	}
	self := g.live[g.cfg.Name].GossipAddr
	var out []string
	for name, m := range g.departed {
		if m.Status == StatusFailed && now.Sub(g.departedAt[name]) < g.cfg.ReconnectFor && !liveAddrs[m.GossipAddr] && m.GossipAddr != "" {
			out = append(out, m.GossipAddr)
		}
	}
	for _, a := range g.known {
		if !liveAddrs[a] && !slices.Contains(out, a) && !resolvesToLive(a, self, liveAddrs) {
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
