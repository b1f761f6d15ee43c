package queen

import (
	"context"
	"errors"
	"log/slog"
	"net/http"
	"sync"
	"sync/atomic"
	"time"

	"github.com/coder/websocket"

	"github.com/rbee/rbee/wsapi"
)

// peers delivers an encoded message to a node's session: now, in the
// caller's goroutine (inline), or queued for the session's writer. It
// reports false when the node has no session or cannot keep up.
type peers interface {
	send(peer string, msg []byte, inline bool) bool
}

// conn is the queen's end of one node's session.
type conn struct {
	s *wsapi.Session
	// seq orders sessions by when their handshake began.
	seq uint64
	// out feeds the session's writer: lease answers are queued here so
	// that one slow node cannot stall the scheduler.
	out *wsapi.Outbox
}

// sessions is the queen's table of sessions, one per node.
type sessions struct {
	log *slog.Logger
	// seq orders sessions by when their handshake began: a node that
	// redials quickly may finish registering its new session before the
	// old handler registers the old one.
	seq atomic.Uint64
	// closing counts the goroutines closing sessions in the background.
	closing sync.WaitGroup

	mu    sync.Mutex
	conns map[string]conn // node name -> session
}

func newSessions(log *slog.Logger) *sessions {
	return &sessions{log: log, conns: make(map[string]conn)}
}

// register makes c the session of peer, unless a newer one already is; the
// session it replaces, if any, is returned to be closed.
func (t *sessions) register(peer string, c conn) (old conn, replaced, ok bool) {
	t.mu.Lock()
	defer t.mu.Unlock()
	old, had := t.conns[peer]
	if had && old.seq > c.seq {
		return conn{}, false, false
	}
	t.conns[peer] = c
	return old, had, true
}

// unregister forgets s, and reports whether it was still peer's session
// (not one a newer session has replaced).
func (t *sessions) unregister(peer string, s *wsapi.Session) bool {
	t.mu.Lock()
	defer t.mu.Unlock()
	if t.conns[peer].s == s {
		delete(t.conns, peer)
		return true
	}
	return false
}

// closeAll closes every session.
func (t *sessions) closeAll(code websocket.StatusCode, reason string) {
	t.mu.Lock()
	ss := make([]*wsapi.Session, 0, len(t.conns))
	for _, c := range t.conns {
		ss = append(ss, c.s)
	}
	clear(t.conns)
	t.mu.Unlock()
	for _, s := range ss {
		t.closeLater(s, code, reason)
	}
}

// closeLater closes s without waiting: Close waits for the node's close
// frame, and a thousand nodes must not take a thousand round trips in a row.
func (t *sessions) closeLater(s *wsapi.Session, code websocket.StatusCode, reason string) {
	t.closing.Go(func() { _ = s.Close(code, reason) })
}

func (t *sessions) wait() { t.closing.Wait() }

// send implements peers.
func (t *sessions) send(peer string, msg []byte, inline bool) bool {
	t.mu.Lock()
	c, ok := t.conns[peer]
	t.mu.Unlock()
	if !ok {
		return false
	}
	if typ := wsapi.TypeOf(msg); !c.s.PeerKnows(typ) {
		// A node of an earlier revision would close its session on a
		// type it cannot read, taking its leases with it; a sender of
		// a newer type checks first, so this only catches a mistake.
		t.log.Warn("message type unknown to the node's revision not sent", "peer", peer, "type", typ,
			"peer_revision", c.s.PeerRevision)
		return false
	}
	var err error
	if inline {
		err = c.out.Send(context.Background(), msg)
	} else {
		err = c.out.Put(msg)
	}
	if errors.Is(err, wsapi.ErrOutboxFull) {
		t.log.Warn("session cannot keep up with lease messages; closing it", "peer", peer)
		t.closeLater(c.s, wsapi.CloseTooSlow, "too slow to read lease messages")
		return false
	}
	return err == nil // else the session is breaking
}

// HandleSession is the queen's end of a node's session: it authenticates the
// node, takes its telemetry and lease messages, and writes the answers.
func (q *Queen) HandleSession(w http.ResponseWriter, r *http.Request) {
	if !q.IsQueen() || q.closed() {
		m, _, _ := q.cfg.Members.WatchQueen()
		wsapi.WriteNotQueen(w, m.Name, m.HTTPAddr)
		return
	}
	seq := q.sessions.seq.Add(1)
	opts := q.cfg.Session
	opts.Logger = q.log
	s, err := wsapi.AcceptHive(w, r, &opts)
	if err != nil {
		q.log.Warn("hive session refused", "remote", r.RemoteAddr, "err", err)
		return
	}
	log := q.log.With("hive", s.Peer, "remote", r.RemoteAddr)

	const replaced = "replaced by a newer session from the same hive"
	c := conn{s: s, seq: seq, out: wsapi.NewOutbox(s, wsapi.DefaultOutboxQueue)}
	old, had, ok := q.sessions.register(s.Peer, c)
	if !ok {
		_ = s.Close(wsapi.CloseReplaced, replaced)
		return
	}
	if had {
		// The node dropped the spare leases of the session this one
		// replaces; the old session's end will not say so (it is no
		// longer the node's current one).
		q.dropSpares(s.Peer)
	}
	wctx, stopWriter := context.WithCancel(r.Context())
	writerDone := make(chan struct{})
	go func() {
		defer close(writerDone)
		if err := c.out.Run(wctx); err != nil && wctx.Err() == nil {
			s.CloseNow()
		}
	}()
	defer func() {
		current := q.sessions.unregister(s.Peer, s)
		stopWriter()
		<-writerDone
		// A node whose newer session replaced this one has asked its
		// waiting requests again on the new one: they stay.
		if current {
			q.entryGone(s.Peer)
		}
	}()
	if had {
		q.sessions.closeLater(old.s, wsapi.CloseReplaced, replaced)
	}
	// The election may have moved between the check above and the
	// registration (Run only closes registered sessions), and Run may not
	// have started scheduling yet: nothing is read before it has.
	if !q.awaitScheduling(r.Context()) {
		_ = s.Close(wsapi.CloseNotQueen, "no longer queen")
		return
	}
	log.Info("hive connected", "version", s.PeerVersion, "revision", s.PeerRevision)
	err = s.Serve(r.Context(), func(msg any, raw []byte) error {
		now := time.Now()
		q.handle(s.Peer, msg, now)
		if t, ok := msg.(*wsapi.HiveTelemetry); ok {
			// handle set each worker's state: the report is
			// re-encoded for the feed with them.
			q.registry.Update(t, now)
			q.publishTelemetry(t, len(raw))
		}
		return nil
	})
	log.Info("hive disconnected", "reason", wsapi.CloseText(err), "skipped_unknown", s.Ignored())
}
