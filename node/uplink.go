package node

import (
	"context"
	"errors"
	"fmt"
	"math/rand/v2"
	"net"
	"slices"
	"syscall"
	"time"

	"github.com/rbee/rbee/gossip"
	"github.com/rbee/rbee/wsapi"
)

// Redial backoff for the uplink: the first retry is quick (the queen may just
// be restarting its listener), later ones back off so a long outage costs one
// dial every 5 s per node, not a storm.
const (
	redialMin = 100 * time.Millisecond
	redialMax = 5 * time.Second
	// uplinkPingInterval: the queen sends a node nothing in steady state,
	// so the node's keepalive pings on every interval. Gossip already
	// replaces a dead queen within seconds; the ping only covers a broken
	// path between two live nodes, and at 1000 hives a 5 s ping would
	// cost the queen 200 pongs a second.
	uplinkPingInterval = 15 * time.Second
)

// runUplink keeps this node's one session to the current queen: every node
// asks for leases on it, and a hive also reports its telemetry there. When the
// queen changes it hangs up and dials the new one at once; when a dial fails
// it retries with capped exponential backoff.
func (n *Node) runUplink(ctx context.Context) error {
	var retry backoff
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
		opened, err := n.uplinkOnce(ctx, q, changed)
		if ctx.Err() != nil {
			return nil
		}
		if err != nil && n.confirmDeath(ctx, q) {
			continue // the election moves on without it: dial the next queen now
		}
		if opened {
			retry.reset()
			failing = false
		}
		select {
		case <-changed:
			// A new queen: dial it now, not after a backoff.
			retry.reset()
			continue
		default:
		}
		// Log the first failure of a run at WARN, the retries at DEBUG: a
		// dead queen is one event, not one line per retry.
		if !failing {
			n.log.Warn("session to queen failed", "queen", q.Name, "err", err, "retry_in", retry.next())
			failing = true
		} else {
			n.log.Debug("session to queen failed", "queen", q.Name, "err", err, "retry_in", retry.next())
		}
		if !retry.wait(ctx, changed) {
			return nil
		}
	}
}

// probeTimeout bounds each dial of confirmDeath: a refused connection comes
// back in well under a millisecond on a LAN, and anything slower is not the
// quick answer this shortcut is for.
const probeTimeout = 300 * time.Millisecond

// confirmDeath checks whether queen q's process is gone, after its session
// broke or could not be opened: when both its API and its gossip port refuse
// connections (its machine answers for it), nothing listens there any more,
// and the node tells its gossip layer at once instead of waiting about a
// second for failure detection. A queen behind a cut link or frozen answers
// nothing, which proves nothing; failure detection handles those.
func (n *Node) confirmDeath(ctx context.Context, q gossip.Member) bool {
	for _, addr := range []string{q.HTTPAddr, q.GossipAddr} {
		if addr == "" || !refused(ctx, addr) {
			return false
		}
	}
	return n.gossip.ConfirmDead(q.Name, q.Start)
}

// refused reports whether a TCP connection to addr is actively refused.
func refused(ctx context.Context, addr string) bool {
	d := net.Dialer{Timeout: probeTimeout}
	c, err := d.DialContext(ctx, "tcp", addr)
	if err == nil {
		c.Close()
		return false
	}
	return errors.Is(err, syscall.ECONNREFUSED)
}

// backoff is a capped exponential backoff for redials; the zero value starts
// at redialMin.
type backoff struct{ cur time.Duration }

func (b *backoff) next() time.Duration { return max(b.cur, redialMin) }
func (b *backoff) reset()              { b.cur = redialMin }

// wait sleeps the next backoff (jittered by +-20% so a new queen is not hit by
// every node in the same millisecond), then doubles it. A change on changed
// cuts the wait short and resets the backoff: there is somewhere new to dial.
// It returns false when ctx ended.
func (b *backoff) wait(ctx context.Context, changed <-chan struct{}) bool {
	d := b.next()
	d = d - d/5 + time.Duration(rand.Int64N(int64(d/5*2+1)))
	t := time.NewTimer(d)
	defer t.Stop()
	select {
	case <-ctx.Done():
		return false
	case <-changed:
		b.reset()
	case <-t.C:
		b.cur = min(b.next()*2, redialMax)
	}
	return true
}

// uplink is the session as the lease client sees it.
type uplink struct {
	s   *wsapi.Session
	out *wsapi.Outbox
}

func (u *uplink) Send(msg []byte) error { return u.out.Send(context.Background(), msg) }
func (u *uplink) Break()                { u.s.CloseNow() }

// uplinkOnce runs one session to queen q until it breaks, ctx ends, or the
// queen changes. opened reports whether the handshake succeeded.
func (n *Node) uplinkOnce(ctx context.Context, q gossip.Member, changed <-chan struct{}) (opened bool, err error) {
	url := n.url(q.HTTPAddr, wsapi.SessionPath, true)
	opts := n.sessionOptions()
	if n.cfg.Session.PingInterval == 0 {
		opts.PingInterval = uplinkPingInterval
	}
	s, err := wsapi.DialHive(ctx, url, opts)
	if err != nil {
		return false, err
	}
	log := n.log.With("queen", q.Name)
	log.Info("session to queen open", "queen_http", q.HTTPAddr)
	leases := n.proxy.Leases()

	sctx, cancel := context.WithCancel(ctx)
	defer cancel()
	errc := make(chan error, 3)
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
				leases.OnGrant(m)
			case *wsapi.LeaseError:
				leases.OnError(m)
			case *wsapi.LeaseWait:
				leases.OnWait(m)
			case *wsapi.ModelStart:
				if n.models == nil {
					log.Warn("queen asked to start a model, but this node has no catalog", "model", m.Model)
				} else if err := m.Validate(); err != nil {
					log.Warn("bad model_start from queen", "err", err)
				} else {
					n.models.Start(m, q.Name)
				}
			}
		}
	}()
	go func() { errc <- s.Keepalive(sctx) }()
	// Lease requests and releases go out batched (see wsapi.Outbox);
	// telemetry is written directly, once a second.
	up := &uplink{s: s, out: wsapi.NewOutbox(s, sessionOutQueue)}
	go func() { errc <- up.out.Run(sctx) }()
	defer func() {
		leases.Detach(up)
		cancel()
		s.CloseNow()
		<-errc
		<-errc
		<-errc
	}()
	leases.Attach(up)

	tick := time.NewTicker(s.Interval)
	defer tick.Stop()
	var lastErr string
	var usageAt time.Time // usage accounting (usage.go): zero sends all
	hive := n.cfg.hasRole(gossip.RoleHive)
	fresh := true // collect anew; a lifecycle change reports the last collection
	for {
		if hive {
			t := n.collect(sctx, &lastErr, fresh)
			if err := s.Write(sctx, t); err != nil {
				return true, fmt.Errorf("send telemetry: %w", err)
			}
		}
		if err := n.sendUsage(sctx, s, &usageAt); err != nil { // usage accounting (usage.go)
			return true, err
		}
		// Leaving, the session is dropped without a close handshake: the
		// old queen is often dead or unreachable (a cut link, a frozen
		// process), and the library waits 5 s for an answer that never
		// comes, which kept every node from the new queen that long. A
		// live queen sees the connection end at once all the same.
		select {
		case <-ctx.Done():
			return true, nil
		case <-changed:
			log.Info("session to queen closed: queen changed")
			return true, nil
		case err := <-errc:
			errc <- err // for the deferred drain
			log.Info("session to queen closed", "reason", wsapi.CloseText(err))
			return true, err
		case <-tick.C:
			fresh = true
		case <-n.reportNow:
			// A worker got ready (or stopped, or failed): the queen
			// hears now, from the last collection and the lifecycle's
			// state, rather than after a full collection (which asks
			// every simulated or --worker server over HTTP).
			fresh = false
		}
	}
}

// usageInterval is how often a node sends the queen its changed buckets:
// often enough that `rbee usage` is seconds behind, and a queen that dies
// loses no more than that of what it was not sent again anyway.
const usageInterval = 2 * time.Second

// sendUsage sends the queen this node's usage on session s: every bucket
// when *at is zero (a new session, so a new queen rebuilds the cluster's
// usage), then the changed ones every usageInterval.
func (n *Node) sendUsage(ctx context.Context, s *wsapi.Session, at *time.Time) error {
	now := time.Now()
	full := at.IsZero()
	if !full && now.Sub(*at) < usageInterval {
		return nil
	}
	*at = now
	for _, m := range n.usage.Report(n.start, full, now) {
		if err := s.Write(ctx, m); err != nil {
			return fmt.Errorf("send usage: %w", err)
		}
	}
	return nil
}

// sessionOutQueue bounds the lease messages queued for the queen: a queen
// that lets this many pile up is not reading, and the session is dropped.
const sessionOutQueue = 4096

// collect asks the collector for this tick's workers. A collector error is
// logged when it first appears or changes, not every second.
func (n *Node) collect(ctx context.Context, lastErr *string, fresh bool) *wsapi.HiveTelemetry {
	if !fresh && n.lastWorkers != nil {
		return n.report(slices.Clone(n.lastWorkers))
	}
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
	n.lastWorkers = slices.Clone(workers)
	return n.report(workers)
}

// report is this hive's telemetry with workers: the lifecycle's state and
// the leases it serves added.
func (n *Node) report(workers []wsapi.ProcessStats) *wsapi.HiveTelemetry {
	t := &wsapi.HiveTelemetry{Type: wsapi.TypeHiveTelemetry, HiveID: n.cfg.Name}
	if n.models != nil {
		workers, t.Catalog, t.GPUs, t.Managed = n.models.Report(workers)
	}
	now := time.Now()
	t.Timestamp, t.Workers = now.UTC(), workers
	t.Leases = n.proxy.ReportLeases(workers, now)
	return t
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
