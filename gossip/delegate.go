package gossip

import (
	"time"

	"github.com/hashicorp/memberlist"
)

var (
	_ memberlist.Delegate      = (*delegate)(nil)
	_ memberlist.EventDelegate = (*eventDelegate)(nil)
)

// delegate hands memberlist this node's metadata. rbee sends no user messages
// over gossip (the control plane is the WebSocket), so the rest is empty.
type delegate struct{ g *Gossip }

func (d *delegate) NodeMeta(limit int) []byte {
	d.g.mu.Lock()
	defer d.g.mu.Unlock()
	if len(d.g.metaBytes) > limit {
		return nil
	}
	return d.g.metaBytes
}

func (d *delegate) NotifyMsg([]byte)                           {}
func (d *delegate) GetBroadcasts(overhead, limit int) [][]byte { return nil }
func (d *delegate) LocalState(join bool) []byte                { return nil }
func (d *delegate) MergeRemoteState(buf []byte, join bool)     {}

// eventDelegate keeps this package's own copy of the member list and wakes
// the queen watcher. The copy is needed because memberlist's Members() and
// LocalNode() return pointers into state that it rewrites (Meta, Addr) under
// its own lock, which callers cannot take; the callbacks here run with that
// lock held, so copying in them is race-free (serf does the same). They only
// copy and signal.
type eventDelegate struct{ g *Gossip }

func (e *eventDelegate) NotifyJoin(n *memberlist.Node) {
	m := memberFrom(n, StatusAlive)
	e.g.mu.Lock()
	delete(e.g.departed, n.Name)
	delete(e.g.departedAt, n.Name)
	// memberlist brings a member back only when it proved itself alive
	// (a new incarnation): a death this node confirmed is over.
	delete(e.g.confirmed, n.Name)
	e.g.live[n.Name] = m
	e.g.snapDirty = true
	e.g.mu.Unlock()
	if n.Name != e.g.cfg.Name {
		e.g.log.Info("member joined", "member", m.Name, "addr", m.GossipAddr, "roles", m.Roles)
	}
	e.g.poke()
}

func (e *eventDelegate) NotifyLeave(n *memberlist.Node) {
	m := memberFrom(n, StatusFailed)
	e.g.mu.Lock()
	delete(e.g.live, n.Name)
	delete(e.g.confirmed, n.Name)
	e.g.departedLocked(n.Name, m.Status == StatusFailed)
	e.g.departed[n.Name] = m
	e.g.departedAt[n.Name] = time.Now()
	e.g.snapDirty = true
	e.g.mu.Unlock()
	switch {
	case n.Name == e.g.cfg.Name:
		// Our own leave; the node logs its shutdown itself.
	case m.Status == StatusLeft:
		e.g.log.Info("member left", "member", m.Name, "addr", m.GossipAddr)
	default:
		e.g.log.Warn("member failed", "member", m.Name, "addr", m.GossipAddr)
	}
	e.g.poke()
}

func (e *eventDelegate) NotifyUpdate(n *memberlist.Node) {
	m := memberFrom(n, StatusAlive)
	e.g.mu.Lock()
	// A death this node confirmed stays latched through metadata
	// updates (ConfirmDead says why); the latest metadata is kept for
	// when it ends, and its term still binds the next claim.
	if c, ok := e.g.confirmed[n.Name]; ok && c.m.Start.Equal(m.Start) {
		c.m = m
		e.g.confirmed[n.Name] = c
		e.g.mu.Unlock()
		return
	}
	delete(e.g.confirmed, n.Name) // a new incarnation ends the latch
	e.g.live[n.Name] = m
	e.g.mu.Unlock()
	e.g.poke()
}
