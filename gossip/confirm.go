package gossip

import "time"

// confirmedDeath is a member this node found dead itself: its process is gone
// (its ports refuse connections) while failure detection still counts it
// alive for a second or so.
type confirmedDeath struct {
	m     Member // as last seen when confirmed
	until time.Time
}

// confirmFor is how long a death this node confirmed stands without failure
// detection agreeing: memberlist declares a silent member dead within about
// 2 s with LANTiming, so a member it still counts alive after this answers
// its probes, and the confirmation was wrong.
const confirmFor = 10 * time.Second

// ConfirmDead takes the member named name out of this node's view at once,
// if it is still the incarnation started at start (a restarted node with the
// same name is not touched): the caller saw its process die, for instance a
// session reset and its port refusing connections. The election runs again
// without it, so a crashed queen is replaced without waiting for failure
// detection. It reports whether the member was taken out.
func (g *Gossip) ConfirmDead(name string, start time.Time) bool {
	g.mu.Lock()
	m, ok := g.live[name]
	if !ok || name == g.cfg.Name || !m.Start.Equal(start) {
		g.mu.Unlock()
		return false
	}
	delete(g.live, name)
	g.departedLocked(name, true)
	g.confirmed[name] = confirmedDeath{m: m, until: time.Now().Add(max(confirmFor, g.cfg.Timing.deadWithin()))}
	g.mu.Unlock()
	g.log.Info("member confirmed dead before failure detection", "member", name)
	g.poke()
	return true
}

// expireConfirmed puts back members whose confirmed death failure detection
// never followed (they are alive after all), and forgets members that failed
// longer ago than this node redials them.
func (g *Gossip) expireConfirmed(now time.Time) {
	g.mu.Lock()
	for name, at := range g.departedAt {
		if now.Sub(at) > g.cfg.ReconnectFor {
			delete(g.departed, name)
			delete(g.departedAt, name)
			g.snapDirty = true
		}
	}
	changed := false
	for name, c := range g.confirmed {
		if now.After(c.until) {
			delete(g.confirmed, name)
			g.live[name] = c.m
			changed = true
			g.log.Warn("member confirmed dead still answers failure detection; counting it alive again", "member", name)
		}
	}
	g.mu.Unlock()
	if changed {
		g.poke()
	}
}
