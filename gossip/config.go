package gossip

import (
	"log/slog"
	"time"

	"github.com/hashicorp/memberlist"
)

// Config configures a Gossip. Zero values mean the defaults of DefaultConfig.
type Config struct {
	Name string
	// BindAddr is host:port for memberlist's UDP and TCP listeners; port 0
	// picks a free port (tests).
	BindAddr string
	// AdvertiseAddr is host:port the others reach this node at; empty means
	// the bind address (or memberlist's guess when binding 0.0.0.0).
	AdvertiseAddr string
	// Secret encrypts gossip (AES-GCM); nil disables encryption (insecure).
	Secret []byte
	Meta   Meta
	// JoinTimeout bounds how long a node with seeds waits to join before it
	// acts alone; until then it claims no queen seat, so a booting node
	// cannot unseat the cluster's queen.
	JoinTimeout time.Duration
	// ReconnectFor is how long a failed member is redialled (default 24 h,
	// as serf): a partition of any length up to it heals by itself.
	ReconnectFor time.Duration
	// SnapshotPath, when set, is a file where the node keeps the members it
	// knows, so that after a restart it rejoins them without --join.
	SnapshotPath string
	// ExplainJoin, when set, says what it can about an address a join
	// failed at ("that is rbee node b's API port; its gossip address is
	// ..."), or "": the node can look further than memberlist's error.
	ExplainJoin func(addr string) string
	// Discovery, when set, announces this node and joins the members of
	// its cluster it hears, for as long as the node runs; a node with
	// no seeds then waits for its first round before it may claim the
	// queen seat.
	Discovery Discovery
	// DiscoverInterval is the longest pause between discovery rounds
	// (default 10 s): how long a machine that comes back may go unheard
	// when the reconnect loop no longer dials it.
	DiscoverInterval time.Duration
	Timing           Timing
	Logger           *slog.Logger

	// tweak lets this package's tests change memberlist's configuration
	// last (a transport that cuts links, shorter timings).
	tweak func(*memberlist.Config)
}

// Timing is memberlist's failure detection and dissemination tuning.
type Timing struct {
	ProbeInterval           time.Duration
	ProbeTimeout            time.Duration
	SuspicionMult           int
	SuspicionMaxTimeoutMult int
	GossipInterval          time.Duration
	GossipNodes             int
	PushPullInterval        time.Duration
	// LeaveTimeout bounds how long a graceful leave waits for its
	// announcement to go out.
	LeaveTimeout time.Duration
	// TCPTimeout bounds a TCP dial or exchange with one member: a join,
	// a push-pull, a probe's TCP fallback.
	TCPTimeout time.Duration
	// ReconnectInterval is how often failed members and the seeds are
	// redialled, which bounds how long after a partition heals the two
	// sides merge.
	ReconnectInterval time.Duration
}

// LANTiming is tuned so a SIGKILLed queen is declared dead about 1 s after it
// dies on a LAN (memberlist's DefaultLANConfig takes 5 to 8 s), without
// declaring live nodes dead on a busy 2-core machine.
//
// How a death is found: every ProbeInterval each node pings one member in
// round robin; with no ack within ProbeTimeout it asks IndirectChecks others
// to ping for it and tries TCP, all within the same ProbeInterval; then the
// member is suspect for SuspicionMult*ProbeInterval (scaled by log10 of the
// cluster size, and up to SuspicionMaxTimeoutMult times that until other
// nodes confirm the suspicion); a live member that hears it is suspected
// refutes at once, so only a member that stays silent for the whole window
// is declared dead. Lifeguard (memberlist's awareness) stretches the probe
// timeout of a node that is itself slow, which is what keeps an overloaded
// node from accusing healthy ones.
func LANTiming() Timing {
	return Timing{
		// 200 ms: in a 3-node cluster a dead node is probed within 200 to
		// 400 ms by one of the two survivors. Each probe is one ~100-byte
		// UDP packet, so even 100 nodes cost 500 packets/s in all.
		ProbeInterval: 200 * time.Millisecond,
		// 100 ms: a LAN round trip is well under 1 ms; the rest is slack for
		// a scheduler stall or GC pause on a loaded machine. The indirect
		// probes and TCP fallback still get the other 100 ms.
		ProbeTimeout: 100 * time.Millisecond,
		// 3 x 200 ms = 600 ms of suspicion once a second node confirms (1.8 s
		// unconfirmed, SuspicionMaxTimeoutMult 3): three full probe rounds in
		// which a live but stalled node can refute, which is what keeps false
		// deaths at zero under load.
		SuspicionMult:           3,
		SuspicionMaxTimeoutMult: 3,
		// 50 ms: suspicion, death and leave messages reach everyone within a
		// few gossip rounds; at 3 peers per round that is ~60 small packets/s
		// per node, negligible on a LAN.
		GossipInterval: 50 * time.Millisecond,
		GossipNodes:    3,
		// Full state sync repairs anything gossip missed; 15 s (memberlist
		// uses 30 s) keeps metadata changes converging even when a broadcast
		// was lost.
		PushPullInterval: 15 * time.Second,
		// A leave needs one gossip round to go out; 1 s is many rounds.
		LeaveTimeout: time.Second,
		// 2 s: a LAN connect takes a millisecond, and a push-pull of a
		// few hundred members a few more; memberlist's 10 s would let
		// one unreachable member hold up a reconnect round that long.
		TCPTimeout: 2 * time.Second,
		// 1 s: after a partition heals the sides find each other
		// within about a second, plus one push-pull. A failed member
		// costs one TCP dial a second, nothing next to the probes.
		ReconnectInterval: time.Second,
	}
}

// WANTiming is for members whose round trip is up to a few hundred
// milliseconds (machines in different sites): memberlist's DefaultWANConfig
// for failure detection and dissemination, which at a 400 ms round trip
// declares no live member dead, where LANTiming's 100 ms probe timeout
// fails every direct probe and declares members, the queen among them, dead
// many times a minute. The price is time: a member whose machine vanishes
// is declared dead after about 40 s instead of 1 s (Detection has the
// figures). A crashed process is still replaced at once: its ports refuse
// connections, and ConfirmDead takes it out without failure detection.
func WANTiming() Timing {
	// Failure detection and gossip as memberlist's DefaultWANConfig.
	w := memberlist.DefaultWANConfig()
	return Timing{
		// 5 s probes with a 3 s timeout: several round trips of slack
		// for a direct ack, and still time in the round for indirect
		// probes (two round trips) and the TCP fallback.
		ProbeInterval: w.ProbeInterval,
		ProbeTimeout:  w.ProbeTimeout,
		// 6 x 5 s = 30 s of suspicion (up to 6 times that unconfirmed):
		// a live member that is suspected has many gossip rounds, each
		// a few round trips long, to hear of it and refute.
		SuspicionMult:           w.SuspicionMult,
		SuspicionMaxTimeoutMult: w.SuspicionMaxTimeoutMult,
		// 500 ms to 4 members: fewer, larger rounds, as one round trip
		// is most of LANTiming's 50 ms round already.
		GossipInterval:   w.GossipInterval,
		GossipNodes:      w.GossipNodes,
		PushPullInterval: w.PushPullInterval,
		// A leave goes out in one gossip round; 3 s is six of them, and
		// a member that never hears it still finds the node gone by
		// failure detection.
		LeaveTimeout: 3 * time.Second,
		// 30 s: a push-pull of the whole member list crosses a slow,
		// lossy link in several round trips, and a timeout cut short
		// would fail every join and reconnect over it.
		TCPTimeout: w.TCPTimeout,
		// 10 s: failure detection itself takes tens of seconds here, so
		// merging a healed partition within 10 s is in proportion; a
		// redial crossing the link every second would be most of the
		// gossip traffic to a failed member.
		ReconnectInterval: 10 * time.Second,
	}
}

func (c Config) withDefaults() Config {
	d := LANTiming()
	t := &c.Timing
	if t.ProbeInterval <= 0 {
		t.ProbeInterval = d.ProbeInterval
	}
	if t.ProbeTimeout <= 0 {
		t.ProbeTimeout = d.ProbeTimeout
	}
	if t.SuspicionMult <= 0 {
		t.SuspicionMult = d.SuspicionMult
	}
	if t.SuspicionMaxTimeoutMult <= 0 {
		t.SuspicionMaxTimeoutMult = d.SuspicionMaxTimeoutMult
	}
	if t.GossipInterval <= 0 {
		t.GossipInterval = d.GossipInterval
	}
	if t.GossipNodes <= 0 {
		t.GossipNodes = d.GossipNodes
	}
	if t.PushPullInterval <= 0 {
		t.PushPullInterval = d.PushPullInterval
	}
	if t.LeaveTimeout <= 0 {
		t.LeaveTimeout = d.LeaveTimeout
	}
	if t.TCPTimeout <= 0 {
		t.TCPTimeout = d.TCPTimeout
	}
	if t.ReconnectInterval <= 0 {
		t.ReconnectInterval = d.ReconnectInterval
	}
	if c.JoinTimeout <= 0 {
		c.JoinTimeout = 5 * time.Second
	}
	if c.DiscoverInterval <= 0 {
		c.DiscoverInterval = 10 * time.Second
	}
	if c.ReconnectFor <= 0 {
		c.ReconnectFor = 24 * time.Hour
	}
	if c.Logger == nil {
		c.Logger = slog.New(slog.DiscardHandler)
	}
	return c
}
