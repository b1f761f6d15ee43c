package node

import (
	"errors"
	"fmt"
	"log/slog"
	"net"
	"slices"
	"time"

	"go.opentelemetry.io/otel/trace"

	"github.com/rbee/rbee/gossip"
	"github.com/rbee/rbee/node/api"
	"github.com/rbee/rbee/node/hive"
	"github.com/rbee/rbee/node/hive/models"
	"github.com/rbee/rbee/node/proxy"
	"github.com/rbee/rbee/wsapi"
)

// Version is this build's rbee version, sent in gossip metadata and session
// handshakes.
const Version = "0.1.0"

// DefaultGrantAhead is Config.GrantAhead's default: one request per worker
// waits at its hive while every slot is busy.
const DefaultGrantAhead = 1

// Config is everything a node needs. Zero values mean the defaults of
// DefaultConfig, except Name and the addresses.
type Config struct {
	Name string
	// GossipAddr is host:port to bind memberlist on; AdvertiseAddr, if set,
	// is what the others dial instead (NAT, containers).
	GossipAddr    string
	AdvertiseAddr string
	// HTTPAddr is host:port for the API; port 0 picks a free port.
	HTTPAddr string
	// Join lists seeds (gossip host:port) to join at start.
	Join []string
	// Discover is how the node finds its cluster's members on the LAN
	// beside Join: DiscoverAuto, DiscoverMDNS or DiscoverOff (""; the
	// CLI's default is DiscoverAuto).
	Discover string
	// DataDir, when set, is where the node keeps what it should remember
	// across restarts: the members it knew (members.json), which it
	// rejoins after a restart even without Join.
	DataDir string
	// Key is the cluster key; zero means no encryption or auth, which is
	// only allowed on loopback unless Insecure is set.
	Key      wsapi.Key
	Insecure bool
	// TLSCertFile and TLSKeyFile are the user's own certificate for the
	// client-facing API (TLS on the same port as plain HTTP). Traffic
	// between nodes needs none: it uses certificates derived from Key.
	TLSCertFile string
	TLSKeyFile  string
	// Roles: gossip.RoleQueen (eligible for election) and/or
	// gossip.RoleHive (runs workers).
	Roles         []string
	QueenPriority int
	Collector     hive.Collector
	Logger        *slog.Logger

	// TelemetryInterval is how often hives report (the queen tells them).
	TelemetryInterval time.Duration
	// HiveTTL: a hive is online while it reported within this long.
	HiveTTL time.Duration
	// QueenEventInterval is the period of the feed's queen event.
	QueenEventInterval time.Duration
	// ForgetAfter drops an offline hive from the registry.
	ForgetAfter time.Duration
	// GossipProfile names the gossip failure detection tuning:
	// gossip.ProfileLAN (the default: a dead node found in about a second)
	// or gossip.ProfileWAN (round trips of hundreds of milliseconds
	// between nodes, a dead node found in about 40 s).
	GossipProfile string
	// GossipTiming, when set, is used instead of GossipProfile's timing
	// (tests shrink or stretch it).
	GossipTiming gossip.Timing
	// APIKeys, when set, are the bearer keys OpenAI clients must send.
	APIKeys []string
	// APIKeysFile is a keys file (see node/tenants): each key a tenant
	// with a name, priority, weight, caps and models; read again when it
	// changes or on ReloadKeys.
	APIKeysFile string
	// QueueLimit bounds each model's waiting requests; QueueTimeout is
	// how long a request waits for a free worker before a 503.
	QueueLimit   int
	QueueTimeout time.Duration
	// AffinityWait bounds how long a conversation's next turn waits for
	// the worker that holds its prompt before any worker serves it
	// (0: scheduler.DefaultAffinityWait; negative: no affinity at all).
	AffinityWait time.Duration
	// GrantAhead is how many requests the queen grants each worker beyond
	// its slots while every worker of the model is busy, so that the next
	// one waits at the worker's hive and starts the moment a slot frees
	// (0: DefaultGrantAhead; negative: none). Only models whose requests
	// end within a second are granted ahead (scheduler.Config.Standby).
	GrantAhead int
	// Spares is how many spare leases this node, as entry node, may hold
	// for one model: leases the queen grants ahead of requests while
	// nothing of the model waits, so that a request starts without a
	// round trip to the queen (0: proxy.DefaultSpares; negative: none).
	Spares int
	// ModelVRAMMB is the free VRAM one request of a model needs, by name.
	ModelVRAMMB map[string]uint64
	// BodyMemory bounds the request-body bytes the node holds at once
	// (default proxy.DefaultBodyMemory); BodyTimeout how long reading one
	// body may take (default proxy.DefaultBodyTimeout).
	BodyMemory  int64
	BodyTimeout time.Duration
	// BodyMinRate is the slowest a request body may arrive, in bytes per
	// second, after a short grace (default proxy.DefaultBodyMinRate).
	BodyMinRate int64
	// MigrationLimit is how many times one stream may be continued on
	// another worker after its worker broke off (default
	// proxy.DefaultMigrationLimit; negative: never). MigrationMaxBytes
	// bounds the answer text kept per stream for it (default
	// proxy.DefaultMigrationMaxBytes).
	MigrationLimit    int
	MigrationMaxBytes int
	// CORSOrigins are the browser origins that may call the API (cors.go;
	// default DefaultCORSOrigins; "*" any).
	CORSOrigins []string
	// TransferRate bounds, in bytes per second, what a model copy from
	// other hives takes of the network (0: no bound).
	TransferRate int64
	// MaxConns caps the connections open to the HTTP port; one remote
	// address may hold an eighth of them (loopback any number). At the
	// cap, idle connections that never showed a key are closed first.
	// Default: DefaultMaxConns of the open-file limit.
	MaxConns int
	// Pprof serves Go's profiler under /debug/pprof/ (authorized like the
	// admin API), for finding where a node spends its time.
	Pprof bool
	// AccessLog, when set, takes one line per inference request this
	// node answered as entry node (see proxy.Config.AccessLog).
	AccessLog *slog.Logger
	// Tracer, when set, makes OpenTelemetry spans of the requests this
	// node serves as entry node, queen and hive (node/tracing builds it
	// from the OTEL_* environment); nil: tracing off.
	Tracer trace.TracerProvider
	// Session tunes handshake, ping and read limits of hive sessions.
	Session wsapi.SessionOptions
	// Models, on a hive, is what it can start on demand (its catalog,
	// engines, GPUs); nil starts nothing. The node fills in the hooks.
	Models *models.Config
}

// DefaultConfig returns a Config with the defaults filled in, listening on
// loopback on the default ports.
func DefaultConfig() Config {
	return Config{
		GossipAddr: fmt.Sprintf("127.0.0.1:%d", api.DefaultGossipPort),
		HTTPAddr:   fmt.Sprintf("127.0.0.1:%d", api.DefaultHTTPPort),
		Roles:      []string{gossip.RoleQueen, gossip.RoleHive},
		Collector:  hive.NoWorkers{},
		// The seed notes: telemetry every 1 s, a hive online while it
		// reported within 3 s (three missed reports), a queen event every
		// 2.5 s.
		TelemetryInterval:  time.Second,
		HiveTTL:            api.DefaultHiveTTL,
		QueenEventInterval: 2500 * time.Millisecond,
		ForgetAfter:        10 * time.Minute,
		GossipProfile:      gossip.ProfileLAN,
		QueueLimit:         1024,
		QueueTimeout:       30 * time.Second,
		MaxConns:           DefaultMaxConns(openFileLimit()),
	}
}

func (c Config) withDefaults() Config {
	d := DefaultConfig()
	if c.GossipAddr == "" {
		c.GossipAddr = d.GossipAddr
	}
	if c.HTTPAddr == "" {
		c.HTTPAddr = d.HTTPAddr
	}
	if c.Roles == nil {
		c.Roles = d.Roles
	}
	if c.Collector == nil {
		c.Collector = d.Collector
	}
	if c.TelemetryInterval <= 0 {
		c.TelemetryInterval = d.TelemetryInterval
	}
	if c.HiveTTL <= 0 {
		c.HiveTTL = d.HiveTTL
	}
	if c.QueenEventInterval <= 0 {
		c.QueenEventInterval = d.QueenEventInterval
	}
	if c.ForgetAfter <= 0 {
		c.ForgetAfter = d.ForgetAfter
	}
	if c.Logger == nil {
		c.Logger = slog.New(slog.DiscardHandler)
	}
	if c.GossipProfile == "" {
		c.GossipProfile = d.GossipProfile
	}
	if c.GossipTiming == (gossip.Timing{}) {
		// An unknown profile leaves it zero; validate refuses it.
		c.GossipTiming, _ = gossip.ProfileTiming(c.GossipProfile)
	}
	if c.QueueLimit <= 0 {
		c.QueueLimit = d.QueueLimit
	}
	if c.QueueTimeout <= 0 {
		c.QueueTimeout = d.QueueTimeout
	}
	if c.MaxConns <= 0 {
		c.MaxConns = d.MaxConns
	}
	switch {
	case c.MigrationLimit == 0:
		c.MigrationLimit = proxy.DefaultMigrationLimit
	case c.MigrationLimit < 0:
		c.MigrationLimit = 0 // off, as the proxy reads it
	}
	if c.CORSOrigins == nil {
		c.CORSOrigins = DefaultCORSOrigins
	}
	if c.MigrationMaxBytes <= 0 {
		c.MigrationMaxBytes = proxy.DefaultMigrationMaxBytes
	}
	return c
}

// ErrNeedsKey is returned when a node would listen beyond loopback with no
// cluster key and Insecure is not set.
var ErrNeedsKey = errors.New("listening beyond loopback without a cluster key needs --insecure (make a key with `rbee keygen`)")

func (c Config) validate() error {
	if err := wsapi.ValidName(c.Name); err != nil {
		return fmt.Errorf("node name: %w", err)
	}
	for _, r := range c.Roles {
		if r != gossip.RoleQueen && r != gossip.RoleHive {
			return fmt.Errorf("unknown role %q (want %s or %s)", r, gossip.RoleQueen, gossip.RoleHive)
		}
	}
	if _, err := gossip.ProfileTiming(c.GossipProfile); err != nil {
		return err // it names the profile and the choices
	}
	if c.QueueTimeout > wsapi.MaxWait {
		return fmt.Errorf("queue timeout %v: at most %v", c.QueueTimeout, wsapi.MaxWait)
	}
	if c.Key.IsZero() && !c.Insecure {
		for _, a := range []string{c.GossipAddr, c.HTTPAddr} {
			loop, err := loopbackOnly(a)
			if err != nil {
				return err
			}
			if !loop {
				return fmt.Errorf("%s: %w", a, ErrNeedsKey)
			}
		}
	}
	return nil
}

func (c Config) hasRole(r string) bool { return slices.Contains(c.Roles, r) }

// loopbackOnly reports whether a bind address listens on loopback only. A
// host name counts by what it resolves to, all of it: "localhost" is
// loopback, a name with any other address is not, and so are an empty host,
// 0.0.0.0 and ::.
func loopbackOnly(hostport string) (bool, error) {
	host, _, err := net.SplitHostPort(hostport)
	if err != nil {
		return false, fmt.Errorf("address %q: %w", hostport, err)
	}
	if host == "" {
		return false, nil
	}
	if ip := net.ParseIP(host); ip != nil {
		return ip.IsLoopback(), nil
	}
	ips, err := net.LookupIP(host)
	if err != nil || len(ips) == 0 {
		return false, fmt.Errorf("address %q: resolve %s: %w", hostport, host, err)
	}
	for _, ip := range ips {
		if !ip.IsLoopback() {
			return false, nil
		}
	}
	return true, nil
}
