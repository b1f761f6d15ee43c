package gossip

import (
	"net"
	"time"
)

// confirmedDeath is a member this node found dead itself: its process is gone
// (its ports refuse connections and it answers no ping) while failure
// detection still counts it alive for a second or so.
type confirmedDeath struct {
	m     Member // as last seen: its metadata keeps updating while latched
	until time.Time
}

// confirmFor is how long a death this node confirmed stands without failure
// detection agreeing: memberlist declares a silent member dead within about
// 2 s with LANTiming, so a member it still counts alive after this answers
// its probes, and the confirmation was wrong.
const confirmFor = 10 * time.Second

// confirmHoldOff is how long a member whose confirmed death proved wrong
// cannot be confirmed dead again. Something between the two nodes refuses
// connections (a firewall REJECT rule) while the member is alive: confirming
// and unconfirming it in a loop would make this node claim and drop the
// queen seat over and over, each claim raising the term.
const confirmHoldOff = time.Minute

// confirmPings is how many pings over failure detection's own path (UDP,
// the cluster key) ConfirmDead sends before it believes a refused
// connection: any answer means the member's memberlist runs, so the refusal
// came from something else. Two pings ride out one lost packet; a dead
// process costs two probe timeouts (200 ms with LANTiming), still well
// before failure detection.
const confirmPings = 2

// ConfirmDead takes the member named name out of this node's view at once,
// if it is still the incarnation started at start (a restarted node with the
// same name is not touched): the caller saw its process die, for instance a
// session reset and its port refusing connections. The election runs again
// without it, so a crashed queen is replaced without waiting for failure
// detection. It reports whether the member was taken out.
//
// Failure detection has the last word: a member that answers a ping is
// alive whatever its ports said, and one whose confirmed death was undone
// is not confirmed again for confirmHoldOff. Once confirmed, the death
// stands (latched) until failure detection declares the member dead, a new
// incarnation joins, or confirmFor passes: a metadata update alone does not
// bring it back, or every broadcast would restart the election.
func (g *Gossip) ConfirmDead(name string, start time.Time) bool {
	g.mu.Lock()
	m, ok := g.live[name]
	held := time.Now().Before(g.unconfirmed[name])
	g.mu.Unlock()
	if !ok || name == g.cfg.Name || !m.Start.Equal(start) {
		return false
	}
	if held {
		g.log.Debug("not confirming a death that failure detection contradicted recently", "member", name)
		return false
	}
	if g.answersPing(m) {
		g.log.Debug("member refuses connections but answers pings; not confirming its death", "member", name)
		return false
	}
	g.mu.Lock()
	m, ok = g.live[name]
	if !ok || !m.Start.Equal(start) {
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

// answersPing reports whether m acknowledges a ping sent the way failure
// detection sends them.
func (g *Gossip) answersPing(m Member) bool {
	addr, err := net.ResolveUDPAddr("udp", m.GossipAddr)
	if err != nil {
		return false
	}
	for range confirmPings {
		if _, err := g.ml.Ping(m.Name, addr); err == nil {
			return true
		}
	}
	return false
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
	for name, until := range g.unconfirmed {
		if now.After(until) {
			delete(g.unconfirmed, name)
		}
	}
	changed := false
	for name, c := range g.confirmed {
		if now.After(c.until) {
			delete(g.confirmed, name)
			g.live[name] = c.m
			g.unconfirmed[name] = now.Add(confirmHoldOff)
			changed = true
			g.log.Warn("member confirmed dead still answers failure detection; counting it alive again", "member", name)
		}
	}
	g.mu.Unlock()
	if changed {
		g.poke()
	}
}
