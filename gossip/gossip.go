package gossip

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"slices"
	"strconv"
	"strings"
	"sync"
	"time"

	"github.com/hashicorp/memberlist"
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
	settled   bool              // joined (or gave up joining): may claim the queen seat
	leaving   bool
	down      bool // Shutdown was called
	queen     Member
	hasQueen  bool
	queenCh   chan struct{} // closed and replaced on every queen change
}

// New starts memberlist's listeners. seeds are joined by Run; a node without
// seeds starts a new cluster.
func New(cfg Config, seeds []string) (*Gossip, error) {
	cfg = cfg.withDefaults()
	g := &Gossip{
		cfg:      cfg,
		log:      cfg.Logger,
		seeds:    seeds,
		wake:     make(chan struct{}, 1),
		meta:     cfg.Meta,
		live:     make(map[string]Member),
		departed: make(map[string]Member),
		settled:  len(seeds) == 0,
		queenCh:  make(chan struct{}),
	}
	// Claim and Leaving are set later; the metadata must fit with both, or
	// they would silently never be broadcast.
	flagged := g.meta
	flagged.Claim, flagged.Leaving = true, true
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
	// A node restarted on another port under the same name may take its
	// name back once the old incarnation has been dead this long.
	mc.DeadNodeReclaimTime = 10 * time.Second
	mc.Delegate = &delegate{g: g}
	mc.Events = &eventDelegate{g: g}
	mc.Logger = newStdLogger(g.log)

	ml, err := memberlist.Create(mc)
	if err != nil {
		return nil, fmt.Errorf("start gossip on %s: %w", cfg.BindAddr, err)
	}
	g.ml = ml
	return g, nil
}

func splitHostPort(s string) (string, int, error) {
	host, ps, err := net.SplitHostPort(s)
	if err != nil {
		return "", 0, err
	}
	port, err := strconv.Atoi(ps)
	if err != nil || port < 0 || port > 65535 {
		return "", 0, fmt.Errorf("bad port in %q", s)
	}
	if host == "" {
		host = "0.0.0.0"
	}
	return host, port, nil
}

// Run joins the seeds (retrying until they answer) and keeps the queen up to
// date until ctx ends.
func (g *Gossip) Run(ctx context.Context) error {
	var wg sync.WaitGroup
	defer wg.Wait()
	if len(g.seeds) > 0 {
		wg.Add(1)
		go func() {
			defer wg.Done()
			g.joinLoop(ctx)
		}()
	}
	g.poke()
	for {
		select {
		case <-ctx.Done():
			return nil
		case <-g.wake:
			g.recompute()
		}
	}
}

func (g *Gossip) joinLoop(ctx context.Context) {
	deadline := time.NewTimer(g.cfg.JoinTimeout)
	defer deadline.Stop()
	backoff := 200 * time.Millisecond
	for {
		n, err := g.ml.Join(g.seeds)
		if err == nil || n > 0 {
			g.log.Info("joined cluster", "seeds", strings.Join(g.seeds, ","), "contacted", n)
			g.settle()
			return
		}
		g.log.Warn("join failed, retrying", "seeds", strings.Join(g.seeds, ","), "err", oneLine{err}, "retry_in", backoff)
		select {
		case <-ctx.Done():
			return
		case <-deadline.C:
			g.log.Warn("no seed answered; acting alone until one does", "seeds", strings.Join(g.seeds, ","))
			g.settle()
		case <-time.After(backoff):
		}
		backoff = min(backoff*2, 5*time.Second)
	}
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
func (g *Gossip) recompute() {
	q, ok := Elect(g.LiveMembers())
	g.mu.Lock()
	if !g.settled || g.leaving {
		ok = false
	}
	wantClaim := ok && q.Name == g.cfg.Name
	claimChanged := wantClaim != g.meta.Claim
	if claimChanged {
		g.meta.Claim = wantClaim
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
	if claimChanged {
		// Broadcast the claim so a newcomer sees who holds the seat.
		if err := g.ml.UpdateNode(g.cfg.Timing.LeaveTimeout); err != nil {
			g.log.Debug("broadcast queen claim", "err", err)
		}
	}
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

// Self returns this node as the others see it.
func (g *Gossip) Self() Member {
	g.mu.Lock()
	defer g.mu.Unlock()
	return g.live[g.cfg.Name]
}

// Join asks the cluster at addrs to take this node in and returns how many
// answered.
func (g *Gossip) Join(addrs []string) (int, error) {
	n, err := g.ml.Join(addrs)
	if err != nil && n == 0 {
		return 0, fmt.Errorf("join %s: %w", strings.Join(addrs, ","), oneLine{err})
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
