package gossip

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"math"
	"net"
	"slices"
	"strconv"
	"strings"
	"sync"
	"time"

	"github.com/hashicorp/memberlist"

	"github.com/rbee/rbee/internal/backoff"
)

// Gossip is one node's membership: memberlist plus the queen watcher. Create it
// with New, drive it with Run, end it with Leave (graceful) and Shutdown.
type Gossip struct {
	cfg   Config
	log   *slog.Logger
	ml    *memberlist.Memberlist
	seeds []string

	wake chan struct{} // coalesced "membership changed" signal for Run

	mu        sync.Mutex
	meta      Meta
	metaBytes []byte
	live      map[string]Member // alive members, this node included
	departed  map[string]Member // left or failed members
	// departedAt is when each departed member went: failed members are
	// redialled for Config.ReconnectFor after that.
	departedAt map[string]time.Time
	// confirmed holds members this node found dead itself (ConfirmDead)
	// before failure detection did, with when to stop believing it.
	confirmed map[string]confirmedDeath
	// unconfirmed holds members whose confirmed death proved wrong, with
	// until when they may not be confirmed dead again.
	unconfirmed map[string]time.Time
	// known are addresses to rejoin besides failed members: the seeds and
	// the members of the last snapshot.
	known     []string
	snapDirty bool
	// fromSnapshot are the addresses the last snapshot named, added to the
	// seeds once the node knows its own address.
	fromSnapshot []string
	// gone holds, per live member someone watches, a channel closed when
	// it departs (WatchMember).
	gone     map[string]chan struct{}
	settled  bool // joined (or gave up joining): may claim the queen seat
	leaving  bool
	down     bool // Shutdown was called
	queen    Member
	hasQueen bool
	queenCh  chan struct{} // closed and replaced on every queen change
}

// New starts memberlist's listeners. seeds are joined by Run; a node without
// seeds starts a new cluster.
func New(cfg Config, seeds []string) (*Gossip, error) {
	cfg = cfg.withDefaults()
	g := &Gossip{
		cfg:         cfg,
		log:         cfg.Logger,
		seeds:       seeds,
		wake:        make(chan struct{}, 1),
		meta:        cfg.Meta,
		live:        make(map[string]Member),
		departed:    make(map[string]Member),
		departedAt:  make(map[string]time.Time),
		confirmed:   make(map[string]confirmedDeath),
		unconfirmed: make(map[string]time.Time),
		gone:        make(map[string]chan struct{}),
		queenCh:     make(chan struct{}),
	}
	if cfg.SnapshotPath != "" {
		prev, err := readSnapshot(cfg.SnapshotPath)
		if err != nil {
			g.log.Warn("read member snapshot; starting without it", "path", cfg.SnapshotPath, "err", err)
		}
		// A restarted node rejoins what it knew, as if those members
		// were seeds: it also waits to join before claiming the seat.
		g.fromSnapshot = prev
	}

	// Claim, Leaving, a term and the queen followed are set later; the
	// metadata must fit with all of them at their largest, or they would
	// silently never be broadcast.
	flagged := g.meta
	flagged.Claim, flagged.Leaving = true, true
	flagged.Term, flagged.Follows = math.MaxUint64, strings.Repeat("x", maxFollowsName)
	if _, err := flagged.encode(); err != nil {
		return nil, err
	}
	b, err := g.meta.encode()
	if err != nil {
		return nil, err
	}
	g.metaBytes = b

	mc := memberlist.DefaultLANConfig()
	mc.Name = cfg.Name
	host, port, err := splitHostPort(cfg.BindAddr)
	if err != nil {
		return nil, fmt.Errorf("gossip bind address: %w", err)
	}
	mc.BindAddr, mc.BindPort = host, port
	mc.AdvertisePort = port
	if cfg.AdvertiseAddr != "" {
		ah, ap, err := splitHostPort(cfg.AdvertiseAddr)
		if err != nil {
			return nil, fmt.Errorf("gossip advertise address: %w", err)
		}
		mc.AdvertiseAddr, mc.AdvertisePort = ah, ap
	}
	if cfg.Secret != nil {
		mc.SecretKey = cfg.Secret
	}
	t := cfg.Timing
	mc.ProbeInterval = t.ProbeInterval
	mc.ProbeTimeout = t.ProbeTimeout
	mc.SuspicionMult = t.SuspicionMult
	mc.SuspicionMaxTimeoutMult = t.SuspicionMaxTimeoutMult
	mc.GossipInterval = t.GossipInterval
	mc.GossipNodes = t.GossipNodes
	mc.PushPullInterval = t.PushPullInterval
	mc.TCPTimeout = t.TCPTimeout
	// A node restarted on another port under the same name may take its
	// name back once the old incarnation has been dead this long.
	mc.DeadNodeReclaimTime = 10 * time.Second
	mc.Delegate = &delegate{g: g}
	mc.Events = &eventDelegate{g: g}
	mc.Logger = newStdLogger(g.log)
	if cfg.tweak != nil {
		cfg.tweak(mc)
	}

	ml, err := memberlist.Create(mc)
	if err != nil {
		return nil, fmt.Errorf("start gossip on %s: %w", cfg.BindAddr, err)
	}
	g.ml = ml
	if err := g.checkSeeds(g.seeds); err != nil {
		_ = ml.Shutdown()
		return nil, err
	}
	// A snapshot address that is now this node's own (an address reused
	// by another machine, say) is dropped, not fatal.
	for _, a := range g.fromSnapshot {
		if !slices.Contains(g.seeds, a) && g.checkSeeds([]string{a}) == nil {
			g.seeds = append(g.seeds, a)
		}
	}
	// With discovery, a node without seeds settles after its first
	// round: one that hears its peers joins them first.
	g.settled = len(g.seeds) == 0 && cfg.Discovery == nil
	g.known = slices.Clone(g.seeds)
	return g, nil
}

// splitHostPort splits a bind or advertise address for memberlist, which
// wants an IP: a host name is resolved here (memberlist would read
// "localhost" as no address and bind every interface).
func splitHostPort(s string) (string, int, error) {
	host, ps, err := net.SplitHostPort(s)
	if err != nil {
		return "", 0, err
	}
	port, err := strconv.Atoi(ps)
	if err != nil || port < 0 || port > 65535 {
		return "", 0, fmt.Errorf("bad port in %q", s)
	}
	switch {
	case host == "":
		host = "0.0.0.0"
	case net.ParseIP(host) == nil:
		ips, err := net.LookupIP(host)
		if err != nil || len(ips) == 0 {
			return "", 0, fmt.Errorf("resolve %q: %w", host, err)
		}
		ip := ips[0]
		for _, c := range ips {
			if c.To4() != nil { // memberlist's peers mostly speak IPv4
				ip = c
				break
			}
		}
		host = ip.String()
	}
	return host, port, nil
}

// Run joins the seeds (retrying until they answer) and keeps the queen up to
// date until ctx ends.
func (g *Gossip) Run(ctx context.Context) error {
	var wg sync.WaitGroup
	defer wg.Wait()
	if len(g.seeds) > 0 {
		wg.Go(func() { g.joinLoop(ctx) })
	}
	// Partitions heal: failed members and the seeds are redialled, as
	// serf does, since memberlist stops gossiping to the dead.
	wg.Go(func() { g.reconnectLoop(ctx) })
	if g.cfg.Discovery != nil {
		wg.Go(func() { g.discoverLoop(ctx) })
	}
	house := time.NewTicker(housekeepingInterval)
	defer house.Stop()
	g.poke()
	for {
		select {
		case <-ctx.Done():
			g.writeSnapshot()
			return nil
		case <-g.wake:
			g.recompute()
		case now := <-house.C:
			g.expireConfirmed(now)
			g.writeSnapshot()
		}
	}
}

// maxFollowsName is the longest queen name Follows must have room for: node
// names are at most 64 bytes (wsapi.MaxNameLen).
const maxFollowsName = 64

// housekeepingInterval is how often Run writes a changed snapshot and
// forgets deaths it confirmed that failure detection never did.
const housekeepingInterval = time.Second

// joinRetry spaces out the join loop's attempts: quick while the seeds may be
// starting with this node, then every 5 s for as long as none answers.
var joinRetry = backoff.Policy{First: 200 * time.Millisecond, Max: 5 * time.Second}

func (g *Gossip) joinLoop(ctx context.Context) {
	deadline := time.NewTimer(g.cfg.JoinTimeout)
	defer deadline.Stop()
	retry := backoff.New(joinRetry)
	for attempt := 1; ; attempt++ {
		n, err := g.joinEach(ctx, g.seeds)
		if err == nil || n > 0 {
			g.log.Info("joined cluster", "seeds", strings.Join(g.seeds, ","), "contacted", n, "attempts", attempt)
			g.settle()
			return
		}
		// The first failure is news, with what may explain it (an API
		// port given for a gossip port); retries are not.
		if attempt == 1 {
			g.log.Warn("join failed; retrying in the background", "seeds", strings.Join(g.seeds, ","), "err", g.explainJoin(g.seeds, err))
		} else {
			g.log.Debug("join failed, retrying", "seeds", strings.Join(g.seeds, ","), "err", oneLine{err}, "retry_in", retry.Delay())
		}
		select {
		case <-ctx.Done():
			return
		case <-deadline.C:
			g.log.Warn("no seed answered; acting alone, and still trying them", "seeds", strings.Join(g.seeds, ","), "after", g.cfg.JoinTimeout)
			g.settle()
		case <-time.After(retry.Delay()):
		}
		retry.Advance()
	}
}

// joinEach joins every address at once (memberlist's Join dials them one
// after another, each up to the TCP timeout, and a snapshot may hold many
// that are gone) and reports how many answered, with the errors of those
// that did not.
func (g *Gossip) joinEach(ctx context.Context, addrs []string) (int, error) {
	var mu sync.Mutex
	var n int
	var errs []error
	var wg sync.WaitGroup
	for _, a := range addrs {
		wg.Go(func() {
			if ctx.Err() != nil {
				return
			}
			k, err := g.ml.Join([]string{a})
			mu.Lock()
			n += k
			if err != nil {
				errs = append(errs, err)
			}
			mu.Unlock()
		})
	}
	wg.Wait()
	return n, errors.Join(errs...)
}

// explainJoin is a failed join's error with what the node can say about each
// address that did not answer (Config.ExplainJoin).
func (g *Gossip) explainJoin(addrs []string, err error) error {
	if g.cfg.ExplainJoin == nil {
		return oneLine{err}
	}
	var hints []string
	for _, a := range addrs {
		if h := g.cfg.ExplainJoin(a); h != "" {
			hints = append(hints, h)
		}
	}
	if len(hints) == 0 {
		return oneLine{err}
	}
	return fmt.Errorf("%w (%s)", oneLine{err}, strings.Join(hints, "; "))
}

// ErrJoinSelf refuses a join to this node's own gossip address: memberlist
// would report success, and the node would still be alone.
var ErrJoinSelf = errors.New("that is this node's own gossip address")

// checkSeeds refuses a seed that is this node itself, written as an IP
// address. A host name is left to the join: it may resolve to several
// members, this one among them (a Kubernetes headless Service), or to
// nothing yet while its pods start, and memberlist's join copes with both.
func (g *Gossip) checkSeeds(addrs []string) error {
	// Our own copy of this node: memberlist's LocalNode points into state
	// it rewrites under its own lock.
	selfHost, selfPort, err := net.SplitHostPort(g.Self().GossipAddr)
	if err != nil {
		return nil // not known yet: nothing to compare with
	}
	selfIP := net.ParseIP(selfHost)
	for _, a := range addrs {
		host, ps, err := net.SplitHostPort(a)
		if err != nil {
			return fmt.Errorf("join %q: %w", a, err)
		}
		if ps != selfPort {
			continue
		}
		ip := net.ParseIP(host)
		if ip == nil || selfIP == nil {
			continue
		}
		if ip.Equal(selfIP) || (ip.IsLoopback() && selfIP.IsLoopback()) || ip.IsUnspecified() {
			return fmt.Errorf("join %s: %w", a, ErrJoinSelf)
		}
	}
	return nil
}

func (g *Gossip) settle() {
	g.mu.Lock()
	g.settled = true
	g.mu.Unlock()
	g.poke()
}

// poke wakes the watcher without blocking; several pokes coalesce.
func (g *Gossip) poke() {
	select {
	case g.wake <- struct{}{}:
	default:
	}
}

// recompute runs the election on the current view and publishes a change.
// Taking the seat, this node claims it with a term above every term it has
// seen.
func (g *Gossip) recompute() {
	q, ok := Elect(g.LiveMembers())
	g.mu.Lock()
	if !g.settled || g.leaving {
		ok = false
	}
	wantClaim := ok && q.Name == g.cfg.Name
	follows := ""
	if ok {
		follows = q.Name
	}
	claimChanged := wantClaim != g.meta.Claim
	metaChanged := claimChanged || follows != g.meta.Follows
	if g.leaving {
		// Leave already broadcast the last metadata; one more update
		// would announce this node alive again after its leave.
		wantClaim, follows, claimChanged, metaChanged = false, g.meta.Follows, false, false
	}
	g.meta.Claim, g.meta.Follows = wantClaim, follows
	// A claim goes above every term seen. A held seat does not move when
	// a higher term shows up: hives fence grants by the term of the queen
	// they elect (FenceTerm), and the election already prefers the claim
	// more members follow, so a claimant the majority ignores (a node that
	// wrongly thought this queen dead) costs nothing. Outbidding it would
	// invite it to outbid back: a term war.
	if wantClaim && claimChanged {
		g.meta.Term = max(g.othersMaxTermLocked(), g.meta.Term) + 1
		metaChanged = true
	}
	if metaChanged {
		if b, err := g.meta.encode(); err == nil {
			g.metaBytes = b
		}
	}
	changed := ok != g.hasQueen || q.Name != g.queen.Name || q.HTTPAddr != g.queen.HTTPAddr || !q.Start.Equal(g.queen.Start)
	if changed {
		g.queen, g.hasQueen = q, ok
		close(g.queenCh)
		g.queenCh = make(chan struct{})
	}
	g.mu.Unlock()

	if changed {
		if ok {
			g.log.Info("queen elected", "queen", q.Name, "http", q.HTTPAddr, "self", q.Name == g.cfg.Name)
		} else {
			g.log.Info("no queen")
		}
	}
	if metaChanged {
		// Broadcast the claim (so a newcomer sees who holds the seat),
		// its term and whom this node follows. Queued, not waited for:
		// memberlist's wait (up to a gossip round) would hold this loop,
		// and a leave arriving meanwhile would be seen that much later.
		if err := g.ml.UpdateNode(time.Nanosecond); err != nil && !strings.Contains(err.Error(), "timeout") {
			g.log.Debug("broadcast queen claim", "err", err)
		}
	}
}

// othersMaxTermLocked is the highest term any other member, live or gone,
// has claimed with.
func (g *Gossip) othersMaxTermLocked() uint64 {
	var t uint64
	for _, set := range []map[string]Member{g.live, g.departed} {
		for name, m := range set {
			if name != g.cfg.Name {
				t = max(t, m.Term)
			}
		}
	}
	// A queen this node confirmed dead is in neither map until failure
	// detection agrees, yet its term still binds: a successor must claim
	// above it or hives that saw its last grants would refuse the new queen.
	for _, c := range g.confirmed {
		t = max(t, c.m.Term)
	}
	return t
}

// Term is this node's election term: the term of its claim while it is
// queen, which its grants carry.
func (g *Gossip) Term() uint64 {
	g.mu.Lock()
	defer g.mu.Unlock()
	return g.meta.Term
}

// FenceTerm is the lowest term a grant may carry: the term of the queen this
// node elects, whose claim the most members follow. A grant below it comes
// from a queen that has been replaced. A higher term held by a claimant the
// others do not follow (a node cut off from the queen that took the seat for
// itself) does not fence the queen everyone else follows. With no queen it
// is MaxTerm.
func (g *Gossip) FenceTerm() uint64 {
	g.mu.Lock()
	q, ok := g.queen, g.hasQueen
	g.mu.Unlock()
	if !ok {
		return g.MaxTerm()
	}
	if q.Name == g.cfg.Name {
		return g.Term()
	}
	// The queen as last heard: its term may have risen since the
	// election that made it queen.
	if m, live := g.Member(q.Name); live && m.Start.Equal(q.Start) {
		return m.Term
	}
	return q.Term
}

// MaxTerm is the highest term a live member holds. Departed members do not
// count: a new queen that never saw them may claim below their terms, and
// its grants must still be taken.
func (g *Gossip) MaxTerm() uint64 {
	g.mu.Lock()
	defer g.mu.Unlock()
	t := g.meta.Term
	for name, m := range g.live {
		if name != g.cfg.Name {
			t = max(t, m.Term)
		}
	}
	return t
}

// WatchQueen returns the current queen, whether there is one, and a channel
// closed at the next change.
func (g *Gossip) WatchQueen() (Member, bool, <-chan struct{}) {
	g.mu.Lock()
	defer g.mu.Unlock()
	return g.queen, g.hasQueen, g.queenCh
}

// LiveMembers returns the alive and suspect members, this node included.
func (g *Gossip) LiveMembers() []Member {
	g.mu.Lock()
	defer g.mu.Unlock()
	out := make([]Member, 0, len(g.live))
	for _, m := range g.live {
		out = append(out, m)
	}
	return out
}

// Member returns the live member named name.
func (g *Gossip) Member(name string) (Member, bool) {
	g.mu.Lock()
	defer g.mu.Unlock()
	m, ok := g.live[name]
	return m, ok
}

// Members returns every member this node knows, departed ones included
// (status left or failed), sorted by name.
func (g *Gossip) Members() []Member {
	out := g.LiveMembers()
	seen := make(map[string]bool, len(out))
	for _, m := range out {
		seen[m.Name] = true
	}
	g.mu.Lock()
	for name, m := range g.departed {
		if !seen[name] {
			out = append(out, m)
		}
	}
	g.mu.Unlock()
	slices.SortFunc(out, func(a, b Member) int { return strings.Compare(a.Name, b.Name) })
	return out
}

// WatchMember returns a channel closed when the member named name fails:
// failure detection declared it dead, or ConfirmDead took it out. A member
// that leaves gracefully does not fire it: it finishes the requests it
// serves before it goes, and cutting them would lose their answers. A member
// that already failed gives a closed channel; one that left, or that this
// node has not heard of yet (the queen may know it first), a nil one, which
// never fires.
func (g *Gossip) WatchMember(name string) <-chan struct{} {
	g.mu.Lock()
	defer g.mu.Unlock()
	if _, ok := g.live[name]; !ok {
		d, gone := g.departed[name]
		_, dead := g.confirmed[name]
		if !dead && (!gone || d.Status != StatusFailed) {
			return nil
		}
		ch := make(chan struct{})
		close(ch)
		return ch
	}
	ch := g.gone[name]
	if ch == nil {
		ch = make(chan struct{})
		g.gone[name] = ch
	}
	return ch
}

// departedLocked ends the watch on a member that is no longer live, firing
// it if the member failed.
func (g *Gossip) departedLocked(name string, failed bool) {
	if ch := g.gone[name]; ch != nil {
		if failed {
			close(ch)
		}
		delete(g.gone, name)
	}
}

// Self returns this node as the others see it.
func (g *Gossip) Self() Member {
	g.mu.Lock()
	defer g.mu.Unlock()
	return g.live[g.cfg.Name]
}

// Join asks the cluster at addrs to take this node in and returns how many
// answered.
func (g *Gossip) Join(addrs []string) (int, error) {
	if err := g.checkSeeds(addrs); err != nil {
		return 0, err
	}
	n, err := g.ml.Join(addrs)
	if err != nil && n == 0 {
		return 0, fmt.Errorf("join %s: %w", strings.Join(addrs, ","), g.explainJoin(addrs, err))
	}
	g.settle()
	return n, nil
}

// oneLine prints memberlist's multi-line multierror on one line, for CLI
// messages and log lines, and still unwraps to it.
type oneLine struct{ err error }

func (e oneLine) Error() string { return strings.Join(strings.Fields(e.err.Error()), " ") }
func (e oneLine) Unwrap() error { return e.err }

// ErrLeft is returned by Leave when the node already left; ErrShutdown when
// it was shut down (memberlist panics on a leave after shutdown).
var (
	ErrLeft     = errors.New("already left")
	ErrShutdown = errors.New("gossip shut down")
)

// Leave tells the cluster this node is going, so the others drop it (and elect
// a new queen if it was one) at once instead of waiting for failure detection.
func (g *Gossip) Leave() error {
	g.mu.Lock()
	if g.down {
		g.mu.Unlock()
		return ErrShutdown
	}
	if g.leaving {
		g.mu.Unlock()
		return ErrLeft
	}
	g.leaving = true
	g.meta.Leaving = true
	g.meta.Claim = false
	if b, err := g.meta.encode(); err == nil {
		g.metaBytes = b
	}
	g.mu.Unlock()
	// Stop announcing: heard after this, the node would be joined again
	// by the members that dropped it.
	if g.cfg.Discovery != nil {
		if err := g.cfg.Discovery.Close(); err != nil {
			g.log.Debug("stop discovery", "err", err)
		}
	}
	// The metadata update goes out before the leave on the same broadcast
	// queue; waiting one gossip round for it costs ~50 ms of the leave.
	if err := g.ml.UpdateNode(g.cfg.Timing.GossipInterval * 2); err != nil {
		g.log.Debug("announce leave", "err", err)
	}
	if err := g.ml.Leave(g.cfg.Timing.LeaveTimeout); err != nil {
		return fmt.Errorf("leave: %w", err)
	}
	g.poke()
	return nil
}

// Shutdown stops the listeners without telling anyone; call Leave first for a
// graceful exit.
func (g *Gossip) Shutdown() error {
	g.mu.Lock()
	g.down = true
	g.mu.Unlock()
	if err := g.ml.Shutdown(); err != nil {
		return fmt.Errorf("shutdown gossip: %w", err)
	}
	return nil
}
