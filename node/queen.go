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
	schedTick := time.NewTicker(schedTickInterval)
	defer schedTick.Stop()
	defer n.stopScheduling()
	wasQueen := false
	for {
		q, ok, changed := n.gossip.WatchQueen()
		isQueen := ok && q.Name == n.cfg.Name
		switch {
		case isQueen && !wasQueen:
			n.log.Info("this node is queen")
			n.startScheduling(time.Now())
		case !isQueen && wasQueen:
			reason := "no longer queen"
			if ok {
				reason += ": queen is " + q.Name + " at " + q.HTTPAddr
			}
			n.log.Info("stepped down as queen", "queen", q.Name)
			n.stopScheduling()
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
					ev := n.registry.Summary(now, n.cfg.Name)
					ev.Queues, ev.RequestsPerS = n.queueStats(now)
					n.publish(ev)
				}
			case now := <-schedTick.C:
				if isQueen {
					n.schedTick(now)
				}
			}
		}
	}
}

func (n *Node) publish(ev any) {
	if !n.hub.Active() {
		return
	}
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
	// A refused dial (421) leaves a keep-alive connection behind; the
	// node's own client lets shutdown close it.
	o.HTTPClient = n.hc
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
	seq := n.sessionSeq.Add(1)
	s, err := wsapi.AcceptHive(w, r, n.sessionOptions())
	if err != nil {
		n.log.Warn("hive session refused", "remote", r.RemoteAddr, "err", err)
		return
	}
	log := n.log.With("hive", s.Peer, "remote", r.RemoteAddr)

	const replaced = "replaced by a newer session from the same hive"
	n.mu.Lock()
	old, had := n.sessions[s.Peer]
	if had && old.seq > seq {
		n.mu.Unlock()
		_ = s.Close(wsapi.CloseReplaced, replaced)
		return
	}
	hs := hiveSession{s: s, seq: seq, out: wsapi.NewOutbox(s, sessionOutQueue)}
	n.sessions[s.Peer] = hs
	n.mu.Unlock()
	wctx, stopWriter := context.WithCancel(r.Context())
	writerDone := make(chan struct{})
	go func() {
		defer close(writerDone)
		if err := hs.out.Run(wctx); err != nil && wctx.Err() == nil {
			s.CloseNow()
		}
	}()
	defer func() {
		stopWriter()
		<-writerDone
		n.entryGone(s.Peer)
	}()
	if had {
		n.closeLater(old.s, wsapi.CloseReplaced, replaced)
	}
	defer func() {
		n.mu.Lock()
		if n.sessions[s.Peer].s == s {
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
	err = s.Serve(r.Context(), func(msg any, raw []byte) error {
		now := time.Now()
		if t, ok := msg.(*wsapi.HiveTelemetry); ok {
			n.registry.Update(t, now)
			// The report was validated (and its hive_id checked
			// against the session); relaying the bytes as received
			// saves a re-encode per report, the queen's largest cost
			// at 1000 hives.
			n.hub.Publish(raw)
		}
		n.schedule(s.Peer, msg, now)
		return nil
	})
	log.Info("hive disconnected", "reason", closeText(err))
}

// sessionOutQueue bounds the lease answers queued for one node: a node that
// lets this many pile up is not reading, and is dropped.
const sessionOutQueue = 4096

// closeSessions closes every hive session the queen holds.
func (n *Node) closeSessions(code websocket.StatusCode, reason string) {
	n.mu.Lock()
	ss := make([]*wsapi.Session, 0, len(n.sessions))
	for _, hs := range n.sessions {
		ss = append(ss, hs.s)
	}
	clear(n.sessions)
	n.mu.Unlock()
	for _, s := range ss {
		n.closeLater(s, code, reason)
	}
}

// closeLater closes s without waiting: Close waits for the hive's close frame,
// and a thousand hives must not take a thousand round trips in a row.
func (n *Node) closeLater(s *wsapi.Session, code websocket.StatusCode, reason string) {
	n.conns.Add(1)
	go func() {
		defer n.conns.Done()
		_ = s.Close(code, reason)
	}()
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
