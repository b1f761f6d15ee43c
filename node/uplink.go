package node

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"sync"
	"syscall"
	"time"

	"github.com/rbee/rbee/gossip"
	"github.com/rbee/rbee/internal/backoff"
	"github.com/rbee/rbee/node/api"
	"github.com/rbee/rbee/node/proxy"
	"github.com/rbee/rbee/wsapi"
)

// redial spaces out the redials of the uplink and the feed relay: the first
// retry is quick (the queen may just be restarting its listener), later ones
// back off so a long outage costs one dial every 5 s per node, not a storm;
// each wait is jittered by ±20% so a new queen is not hit by every node in the
// same millisecond.
var redial = backoff.Policy{First: 100 * time.Millisecond, Max: 5 * time.Second, Jitter: 0.2}

const (
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
	retry := backoff.New(redial)
	failing := false
	st := &stranding{leases: n.proxy.Leases(), log: n.log}
	defer st.reached()
	for {
		q, ok, changed := n.gossip.WatchQueen()
		if !ok {
			st.reached()
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
			retry.Reset()
			failing = false
			st.reached()
		}
		select {
		case <-changed:
			// A new queen: dial it now, not after a backoff.
			retry.Reset()
			st.reached()
			continue
		default:
		}
		began := time.Now()
		if qs, ok := errors.AsType[*queenSilent](err); ok {
			began = qs.since
		}
		st.failed(q.Name, err, began)
		// Log the first failure of a run at WARN, the retries at DEBUG: a
		// dead queen is one event, not one line per retry.
		if !failing {
			n.log.Warn("session to queen failed", "queen", q.Name, "err", err, "retry_in", retry.Delay())
			failing = true
		} else {
			n.log.Debug("session to queen failed", "queen", q.Name, "err", err, "retry_in", retry.Delay())
		}
		if !retry.Wait(ctx, changed) {
			return nil
		}
	}
}

// strandedAfter is how long the session to a queen that gossip still counts
// alive must keep failing before this node counts itself stranded (cut off
// from the queen the others follow). Failure detection replaces a dead or
// frozen queen within about 2 s on a LAN, so a failover rarely reaches it;
// when it does, the peers the requests are offered to are waiting for the
// same new queen, and a request none of them takes waits here as before.
const strandedAfter = 2 * time.Second

// stranding tells the lease client when this node cannot reach the queen
// that the rest of the cluster follows, so its entry requests go through a
// peer instead of waiting out the queue timeout for a session that is not
// coming (a firewall between this node and the queen, a one-way cut). It
// counts from the first failure, on a timer: a dial to a queen behind a
// silent cut takes its whole timeout to fail.
type stranding struct {
	leases *proxy.LeaseClient
	log    *slog.Logger

	mu    sync.Mutex
	timer *time.Timer // running from the first failure of a run
	on    bool
}

// failed starts the count of a run of failures that began at since, unless
// one runs.
func (s *stranding) failed(queen string, err error, since time.Time) {
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.timer != nil || s.on {
		return
	}
	var t *time.Timer
	t = time.AfterFunc(max(strandedAfter-time.Since(since), 0), func() {
		s.mu.Lock()
		defer s.mu.Unlock()
		if s.timer != t || s.on {
			return // reached meanwhile
		}
		s.on = true
		why := fmt.Sprintf("its session to queen %s has failed for %s (%v)", queen, time.Since(since).Round(100*time.Millisecond), err)
		s.log.Warn("cannot reach the queen the cluster follows; entry requests go through peers", "queen", queen, "err", err)
		s.leases.SetStranded(why)
	})
	s.timer = t
}

// reached ends a run of failures: the session opened, or the queen changed
// (the new one has not failed yet).
func (s *stranding) reached() {
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.timer != nil {
		s.timer.Stop()
		s.timer = nil
	}
	if s.on {
		s.on = false
		s.leases.SetStranded("")
		s.log.Info("queen reachable again; entry requests lease directly")
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

// uplink is the session as the lease client sees it.
type uplink struct {
	s   *wsapi.Session
	out *wsapi.Outbox
}

func (u *uplink) Send(msg []byte) error  { return u.out.Send(context.Background(), msg) }
func (u *uplink) Queue(msg []byte) error { return u.out.Put(msg) }
func (u *uplink) Break()                 { u.s.CloseNow() }
func (u *uplink) Knows(typ string) bool  { return u.s.PeerKnows(typ) }

// uplinkOnce runs one session to queen q until it breaks, ctx ends, or the
// queen changes. opened reports whether the handshake succeeded. Three
// goroutines serve the session while it lasts (dispatch of what the queen
// sends, the keepalive pings, the outbox of lease messages); this one sends
// the reports.
func (n *Node) uplinkOnce(ctx context.Context, q gossip.Member, changed <-chan struct{}) (opened bool, err error) {
	opts := n.sessionOptions()
	if n.cfg.Session.PingInterval == 0 {
		opts.PingInterval = uplinkPingInterval
	}
	s, err := wsapi.DialHive(ctx, n.url(q.HTTPAddr, api.PathSession, true), opts)
	if err != nil {
		return false, err
	}
	log := n.log.With("queen", q.Name)
	log.Info("session to queen open", "queen_http", q.HTTPAddr, "queen_version", s.PeerVersion, "queen_revision", s.PeerRevision)
	leases := n.proxy.Leases()

	sctx, cancel := context.WithCancel(ctx)
	defer cancel()
	errc := make(chan error, 4)
	go func() { errc <- s.Keepalive(sctx) }()
	go func() { errc <- watchAnswers(sctx, s, leases) }()
	// Lease requests and releases go out batched (see wsapi.Outbox);
	// reports are written directly.
	up := &uplink{s: s, out: wsapi.NewOutbox(s, wsapi.DefaultOutboxQueue)}
	go func() { errc <- up.out.Run(sctx) }()
	defer func() {
		leases.Detach(up)
		cancel()
		s.CloseNow()
		<-errc
		<-errc
		<-errc
		<-errc
	}()
	leases.Attach(up)
	// Only now what the queen sends is read: an answer to this node
	// that it no longer waits for (spare leases an earlier session
	// asked for, say) is given back on this session, not dropped.
	go func() { errc <- n.dispatch(sctx, s, q.Name, log) }()

	broke, err := n.report(ctx, sctx, s, changed, errc)
	switch {
	case broke:
		log.Info("session to queen closed", "reason", wsapi.CloseText(err))
	case err == nil && ctx.Err() == nil:
		log.Info("session to queen closed: queen changed")
	}
	return true, err
}

// answerQuiet is how long lease requests may wait with the queen silent
// before the session is checked with a ping: a queen answers a request
// within milliseconds, with a grant or by queueing it, but a queued request
// hears nothing until its grant, so silence alone proves nothing.
const answerQuiet = time.Second

// watchAnswers pings the queen when lease requests have waited answerQuiet
// and it has said nothing for as long, and ends the session when the ping
// goes unanswered. A link that goes silent (a one-way cut, a firewall that
// drops) sends no reset: without this, the requests would wait on a dead
// session until the 15 s keepalive, and the node would not look for another
// way to the queen before then.
func watchAnswers(ctx context.Context, s *wsapi.Session, leases *proxy.LeaseClient) error {
	t := time.NewTicker(answerQuiet / 2)
	defer t.Stop()
	for {
		select {
		case <-ctx.Done():
			return nil
		case now := <-t.C:
			if leases.OldestWaiting(now) < answerQuiet {
				continue
			}
			if err := s.Check(ctx, answerQuiet, answerQuiet); err != nil {
				return &queenSilent{since: now.Add(-answerQuiet), err: err}
			}
		}
	}
}

// queenSilent ends a session whose queen stopped answering while lease
// requests waited; since is when it last spoke, about.
type queenSilent struct {
	since time.Time
	err   error
}

func (e *queenSilent) Error() string {
	return fmt.Sprintf("lease requests waiting, queen silent since %s: %v", e.since.Format(time.TimeOnly), e.err)
}

func (e *queenSilent) Unwrap() error { return e.err }

// dispatch reads what the queen sends on s until the session breaks, and
// hands each message to whom it is for: lease answers to the lease client,
// model starts to the hive. Reading also keeps pongs and the queen's close
// frame flowing.
func (n *Node) dispatch(ctx context.Context, s *wsapi.Session, queen string, log *slog.Logger) error {
	leases := n.proxy.Leases()
	for {
		msg, err := s.Read(ctx)
		if err != nil {
			return err
		}
		switch m := msg.(type) {
		case *wsapi.LeaseGrant:
			leases.OnGrant(m)
		case *wsapi.LeaseError:
			leases.OnError(m)
		case *wsapi.LeaseWait:
			leases.OnWait(m)
		case *wsapi.LeaseSpares: // spare leases
			leases.OnSpares(m)
		case *wsapi.LeaseRevoke:
			leases.OnRevoke(m)
		case *wsapi.ModelStart:
			if n.hive == nil {
				log.Warn("queen asked to start a model, but this node is no hive", "model", m.Model)
			} else if err := n.hive.StartModel(m, queen); err != nil {
				log.Warn("model_start from queen refused", "err", err)
			}
		}
	}
}

// report sends, on s, the hive's telemetry every tick (and at once when the
// hive asks), this node's usage when it is due and its migrations as they
// come (reportMigration queues them), until a write fails, the session
// breaks (broke: its reading, keepalive or outbox ended with err, on errc),
// the queen changes or ctx ends (nil). sctx is the session's own context,
// which writes use.
func (n *Node) report(ctx, sctx context.Context, s *wsapi.Session, changed <-chan struct{}, errc chan error) (broke bool, err error) {
	// Periodic reports go out in phase with every other hive's
	// (wsapi.NextReport): the queen reads a burst for less than it pays
	// for the same reports one at a time.
	next := func() time.Duration { return time.Until(wsapi.NextReport(time.Now(), s.Interval, n.cfg.Name)) }
	tick := time.NewTimer(next())
	defer tick.Stop()
	var usageAt time.Time // zero: the first report sends every bucket
	var reportNow <-chan struct{}
	if n.hive != nil {
		reportNow = n.hive.ReportNow()
	}
	fresh := true // collect anew; a lifecycle change reports the last collection
	for {
		if n.hive != nil {
			if err := s.Write(sctx, n.hive.Report(sctx, fresh)); err != nil {
				return false, fmt.Errorf("send telemetry: %w", err)
			}
			n.reported.Store(true) // readiness (ready.go)
		}
		if err := n.sendUsage(sctx, s, &usageAt); err != nil {
			return false, err
		}
		// Migrations go out as they come, between the ticks: the
		// dashboard shows them within a queen event, and a wake-up for
		// one must not collect the telemetry again.
		for waiting := true; waiting; {
			if err := n.sendMigrations(sctx, s); err != nil {
				return false, err
			}
			// Leaving, the session is dropped without a close
			// handshake: the old queen is often dead or unreachable
			// (a cut link, a frozen process), and the library waits
			// 5 s for an answer that never comes, which kept every
			// node from the new queen that long. A live queen sees
			// the connection end at once all the same.
			select {
			case <-ctx.Done():
				return false, nil
			case <-changed:
				return false, nil
			case err := <-errc:
				errc <- err // for the deferred drain
				return true, err
			case <-n.migrations.ready:
			case <-tick.C:
				tick.Reset(next())
				fresh, waiting = true, false
			case <-reportNow:
				// A worker got ready (or stopped, or failed): the
				// queen hears now, from the last collection and the
				// lifecycle's state, rather than after a full
				// collection (which asks every simulated or
				// --worker server over HTTP).
				fresh, waiting = false, false
			}
		}
	}
}

// usageInterval is how often a node sends the queen its changed buckets:
// often enough that `rbee usage` is seconds behind, and a queen that dies
// loses no more than that of what it was not sent again anyway.
const usageInterval = 2 * time.Second

// sendUsage sends the queen this node's usage on session s: every bucket
// when *at is zero (a new session, so a new queen rebuilds the cluster's
// usage), then the changed ones every usageInterval. A queen of an earlier
// revision gets none: builds before usage accounting close the session on
// usage_report. Nothing is lost by waiting; the buckets stay here, and the
// first session to a queen that reads them sends every one.
func (n *Node) sendUsage(ctx context.Context, s *wsapi.Session, at *time.Time) error {
	if !s.PeerKnows(wsapi.TypeUsageReport) {
		return nil
	}
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

// reportMigration is the proxy's OnMigration: it hands migration m to the
// queen, this node's own control plane directly and another's through the
// uplink. It must not block the stream that migrated, so the uplink takes it
// from a queue.
func (n *Node) reportMigration(m wsapi.Migration) {
	// The queen closes a session over a message that does not validate,
	// taking every lease of this node with it: one report is not worth
	// that.
	if err := m.Validate(); err != nil {
		n.log.Debug("migration not reported to the queen", "err", err)
		return
	}
	if n.queen.IsQueen() {
		n.queen.AddMigration(m)
		return
	}
	n.migrations.put(m)
}

// sendMigrations sends the queen, on session s, the migrations queued for it.
// A queen of an earlier revision gets none (it would skip them unread, or
// close the session); they are dropped, not kept for a later queen, which
// lists only what is recent.
func (n *Node) sendMigrations(ctx context.Context, s *wsapi.Session) error {
	ms := n.migrations.take()
	if len(ms) == 0 {
		return nil
	}
	if !s.PeerKnows(wsapi.TypeMigration) {
		n.log.Debug("migrations not reported: the queen's revision does not read them", "dropped", len(ms),
			"queen_revision", s.PeerRevision)
		return nil
	}
	for i := range ms {
		if err := s.Write(ctx, &ms[i]); err != nil {
			return fmt.Errorf("send migration: %w", err)
		}
	}
	return nil
}

// migrationQueueLen bounds the migrations waiting for the uplink: the queen
// lists no more than that, so older ones would only be pushed out of its list
// on arrival.
const migrationQueueLen = wsapi.MaxMigrations

// migrationQueue holds the migrations the uplink has yet to send: the proxy
// puts them in from its streams' goroutines, which must not wait for a
// session (there may be none, between queens), and the uplink's reporting
// goroutine takes them out. When full it drops the oldest. Its zero value is
// not ready: use newMigrationQueue.
type migrationQueue struct {
	log *slog.Logger
	// ready has a token while the queue is not empty, for the uplink to
	// wait on.
	ready chan struct{}

	mu   sync.Mutex
	list []wsapi.Migration
}

func newMigrationQueue(log *slog.Logger) *migrationQueue {
	return &migrationQueue{log: log, ready: make(chan struct{}, 1)}
}

func (q *migrationQueue) put(m wsapi.Migration) {
	q.mu.Lock()
	if len(q.list) == migrationQueueLen {
		old := q.list[0]
		q.log.Debug("migration report dropped: the queue to the queen is full", "at", old.At, "model", old.Model,
			"from", old.From)
		q.list = append(q.list[:0], q.list[1:]...)
	}
	q.list = append(q.list, m)
	q.mu.Unlock()
	select {
	case q.ready <- struct{}{}:
	default: // a wake-up is pending already
	}
}

// take empties the queue, oldest first.
func (q *migrationQueue) take() []wsapi.Migration {
	q.mu.Lock()
	defer q.mu.Unlock()
	ms := q.list
	q.list = nil
	return ms
}

func (n *Node) sessionOptions() *wsapi.SessionOptions {
	o := n.cfg.Session
	o.Key, o.Name, o.Version = n.cfg.Key, n.cfg.Name, Version
	o.Logger = n.log
	o.Interval = n.cfg.TelemetryInterval
	// A refused dial (421) leaves a keep-alive connection behind; the
	// node's own client lets shutdown close it.
	o.HTTPClient = n.hc
	return &o
}
