package node

import (
	"context"
	"errors"
	"net/http"
	"time"

	"github.com/coder/websocket"

	"github.com/rbee/rbee/wsapi"
)

// runQueen follows the election: while this node is queen it publishes the
// queen event every QueenEventInterval; when it stops being queen it drops its
// sessions (naming the new queen) and its registry, which would go stale.
func (n *Node) runQueen(ctx context.Context) error {
	tick := time.NewTicker(n.cfg.QueenEventInterval)
	defer tick.Stop()
	wasQueen := false
	for {
		q, ok, changed := n.gossip.WatchQueen()
		isQueen := ok && q.Name == n.cfg.Name
		switch {
		case isQueen && !wasQueen:
			n.log.Info("this node is queen")
		case !isQueen && wasQueen:
			reason := "no longer queen"
			if ok {
				reason += ": queen is " + q.Name + " at " + q.HTTPAddr
			}
			n.log.Info("stepped down as queen", "queen", q.Name)
			n.closeSessions(wsapi.CloseNotQueen, reason)
			n.registry.Reset()
		}
		wasQueen = isQueen
	wait:
		for {
			select {
			case <-ctx.Done():
				return nil
			case <-changed:
				break wait
			case now := <-tick.C:
				if isQueen {
					n.publish(n.registry.Summary(now, n.cfg.Name))
				}
			}
		}
	}
}

func (n *Node) publish(ev any) {
	b, err := wsapi.Encode(ev)
	if err != nil {
		n.log.Error("encode feed event", "err", err)
		return
	}
	n.hub.Publish(b)
}

func (n *Node) sessionOptions() *wsapi.SessionOptions {
	o := n.cfg.Session
	o.Key, o.Name, o.Version = n.cfg.Key, n.cfg.Name, Version
	o.Interval = n.cfg.TelemetryInterval
	return &o
}

// handleSession is the queen's end of a hive session.
func (n *Node) handleSession(w http.ResponseWriter, r *http.Request) {
	if !n.isQueen() {
		q, _ := n.Queen()
		wsapi.WriteNotQueen(w, q.Name, q.HTTPAddr)
		return
	}
	n.conns.Add(1)
	defer n.conns.Done()
	s, err := wsapi.AcceptHive(w, r, n.sessionOptions())
	if err != nil {
		n.log.Warn("hive session refused", "remote", r.RemoteAddr, "err", err)
		return
	}
	log := n.log.With("hive", s.Peer, "remote", r.RemoteAddr)

	n.mu.Lock()
	if old := n.sessions[s.Peer]; old != nil {
		_ = old.Close(wsapi.CloseReplaced, "replaced by a newer session from the same hive")
	}
	n.sessions[s.Peer] = s
	n.mu.Unlock()
	defer func() {
		n.mu.Lock()
		if n.sessions[s.Peer] == s {
			delete(n.sessions, s.Peer)
		}
		n.mu.Unlock()
	}()
	// The election may have moved between the check above and the
	// registration; runQueen only closes registered sessions.
	if !n.isQueen() {
		_ = s.Close(wsapi.CloseNotQueen, "no longer queen")
		return
	}
	log.Info("hive connected", "version", s.PeerVersion)
	err = s.ServeTelemetry(r.Context(), func(t *wsapi.HiveTelemetry) {
		n.registry.Update(t, time.Now())
		n.publish(t)
	})
	log.Info("hive disconnected", "reason", closeText(err))
}

// closeSessions closes every hive session the queen holds.
func (n *Node) closeSessions(code websocket.StatusCode, reason string) {
	n.mu.Lock()
	ss := make([]*wsapi.Session, 0, len(n.sessions))
	for _, s := range n.sessions {
		ss = append(ss, s)
	}
	clear(n.sessions)
	n.mu.Unlock()
	for _, s := range ss {
		// Close waits for the hive's close frame; do them in parallel so a
		// thousand hives do not take a thousand round trips.
		n.conns.Add(1)
		go func() {
			defer n.conns.Done()
			_ = s.Close(code, reason)
		}()
	}
}

// closeText renders why a session ended for a log line.
func closeText(err error) string {
	if err == nil {
		return "closed"
	}
	var ce websocket.CloseError
	if errors.As(err, &ce) {
		if ce.Reason != "" {
			return ce.Code.String() + ": " + ce.Reason
		}
		return ce.Code.String()
	}
	return err.Error()
}
