package node

import (
	"context"
	"fmt"
	"math/rand/v2"
	"time"

	"github.com/coder/websocket"

	"github.com/rbee/rbee/gossip"
	"github.com/rbee/rbee/wsapi"
)

// Redial backoff for hive sessions: the first retry is quick (the queen may
// just be restarting its listener), later ones back off so a long outage costs
// one dial every 5 s per hive, not a storm.
const (
	redialMin = 100 * time.Millisecond
	redialMax = 5 * time.Second
	// hivePingInterval: the queen sends a hive nothing in steady state, so
	// the hive's keepalive pings on every interval. Gossip already replaces
	// a dead queen within seconds; the ping only covers a broken path
	// between two live nodes, and at 1000 hives a 5 s ping would cost the
	// queen 200 pongs a second.
	hivePingInterval = 15 * time.Second
)

// runHive keeps one session open to the current queen and pushes telemetry on
// it. When the queen changes it hangs up and dials the new one at once; when
// a dial fails it retries with capped exponential backoff.
func (n *Node) runHive(ctx context.Context) error {
	var backoff retry
	failing := false
	for {
		q, ok, changed := n.gossip.WatchQueen()
		if !ok {
			select {
			case <-ctx.Done():
				return nil
			case <-changed:
				continue
			}
		}
		opened, err := n.hiveSession(ctx, q, changed)
		if ctx.Err() != nil {
			return nil
		}
		if opened {
			backoff.reset()
			failing = false
		}
		select {
		case <-changed:
			// A new queen: dial it now, not after a backoff.
			backoff.reset()
			continue
		default:
		}
		// Log the first failure of a run at WARN, the retries at DEBUG: a
		// dead queen is one event, not one line per retry.
		if !failing {
			n.log.Warn("hive session to queen failed", "queen", q.Name, "err", err, "retry_in", backoff.next())
			failing = true
		} else {
			n.log.Debug("hive session to queen failed", "queen", q.Name, "err", err, "retry_in", backoff.next())
		}
		if !backoff.wait(ctx, changed) {
			return nil
		}
	}
}

// retry is a capped exponential backoff for redials; the zero value starts at
// redialMin.
type retry struct{ cur time.Duration }

func (r *retry) next() time.Duration { return max(r.cur, redialMin) }
func (r *retry) reset()              { r.cur = redialMin }

// wait sleeps the next backoff (jittered by +-20% so a new queen is not hit by
// every hive in the same millisecond), then doubles it. A change on changed
// cuts the wait short and resets the backoff: there is somewhere new to dial.
// It returns false when ctx ended.
func (r *retry) wait(ctx context.Context, changed <-chan struct{}) bool {
	d := r.next()
	d = d - d/5 + time.Duration(rand.Int64N(int64(d/5*2+1)))
	t := time.NewTimer(d)
	defer t.Stop()
	select {
	case <-ctx.Done():
		return false
	case <-changed:
		r.reset()
	case <-t.C:
		r.cur = min(r.next()*2, redialMax)
	}
	return true
}

// hiveSession runs one session to queen q until it breaks, ctx ends, or the
// queen changes. opened reports whether the handshake succeeded.
func (n *Node) hiveSession(ctx context.Context, q gossip.Member, changed <-chan struct{}) (opened bool, err error) {
	url := "ws://" + q.HTTPAddr + wsapi.SessionPath
	opts := n.sessionOptions()
	if n.cfg.Session.PingInterval == 0 {
		opts.PingInterval = hivePingInterval
	}
	s, err := wsapi.DialHive(ctx, url, opts)
	if err != nil {
		return false, err
	}
	log := n.log.With("queen", q.Name)
	log.Info("hive session open", "queen_http", q.HTTPAddr)

	sctx, cancel := context.WithCancel(ctx)
	defer cancel()
	errc := make(chan error, 2)
	go func() {
		// The queen sends lease answers; reading also keeps pongs and
		// its close frame flowing.
		for {
			msg, err := s.Read(sctx)
			if err != nil {
				errc <- err
				return
			}
			switch m := msg.(type) {
			case *wsapi.LeaseGrant:
				n.lc.onGrant(m)
			case *wsapi.LeaseError:
				n.lc.onError(m)
			}
		}
	}()
	go func() { errc <- s.Keepalive(sctx) }()
	// Lease requests and releases go out batched (see wsapi.Outbox);
	// telemetry is written directly, once a second.
	out := wsapi.NewOutbox(s, sessionOutQueue)
	go func() { errc <- out.Run(sctx) }()
	defer func() {
		n.lc.detach(s)
		cancel()
		s.CloseNow()
		<-errc
		<-errc
		<-errc
	}()
	n.lc.attach(s, out)

	tick := time.NewTicker(s.Interval)
	defer tick.Stop()
	var lastErr string
	hive := n.cfg.hasRole(gossip.RoleHive)
	for {
		if hive {
			t := n.collect(sctx, &lastErr)
			if err := s.Write(sctx, t); err != nil {
				return true, fmt.Errorf("send telemetry: %w", err)
			}
		}
		select {
		case <-ctx.Done():
			_ = s.Close(websocket.StatusGoingAway, "hive shutting down")
			return true, nil
		case <-changed:
			_ = s.Close(websocket.StatusNormalClosure, "queen changed")
			log.Info("hive session closed: queen changed")
			return true, nil
		case err := <-errc:
			errc <- err // for the deferred drain
			log.Info("hive session closed", "reason", closeText(err))
			return true, err
		case <-tick.C:
		}
	}
}

// collect asks the collector for this tick's workers. A collector error is
// logged when it first appears or changes, not every second.
func (n *Node) collect(ctx context.Context, lastErr *string) *wsapi.HiveTelemetry {
	cctx, cancel := context.WithTimeout(ctx, n.cfg.TelemetryInterval)
	defer cancel()
	workers, err := n.cfg.Collector.Collect(cctx)
	switch {
	case err != nil && err.Error() != *lastErr:
		*lastErr = err.Error()
		n.log.Warn("collect telemetry", "err", err, "workers", len(workers))
	case err == nil && *lastErr != "":
		*lastErr = ""
		n.log.Info("collect telemetry recovered")
	}
	if workers == nil {
		workers = []wsapi.ProcessStats{}
	}
	now := time.Now()
	leases := n.active.report(workers, now)
	return &wsapi.HiveTelemetry{Type: wsapi.TypeHiveTelemetry, HiveID: n.cfg.Name, Timestamp: now.UTC(), Workers: workers, Leases: leases}
}
