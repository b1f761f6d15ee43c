package proxy

import (
	"context"
	"crypto/tls"
	"log/slog"
	"net"
	"net/http"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"go.opentelemetry.io/otel/trace"

	"github.com/rbee/rbee/wsapi"
)

// Queues is the queen's per-model state, as the node can get it: from its own
// scheduler when it is queen, else by asking the queen.
type Queues interface {
	Queues(ctx context.Context) ([]wsapi.QueueStats, error)
}

// WorkerEndpoints knows each of this hive's workers' API address (the hive's
// collector does), which the hive end needs to proxy to a worker.
type WorkerEndpoints interface {
	Endpoint(group, instance string) string
}

// Members is what the data plane needs of the gossip layer: the lowest
// election term a grant may carry (that of the queen this node follows; a
// grant carrying a lower one comes from a queen that was replaced), and a
// channel closed when a member departs (a stream through a hive the cluster
// declared dead ends with an error instead of stalling).
type Members interface {
	FenceTerm() uint64
	WatchMember(name string) <-chan struct{}
}

// Config is what the data plane needs of its node.
type Config struct {
	// Name is this node's: the entry named in its leases, and the hive
	// it is when a lease names it.
	Name string
	// Start keeps request ids unique across restarts of the same node.
	Start time.Time
	// Scheme is how entry nodes reach hives: "https" (with TLS, the
	// cluster's client configuration) when the cluster has a key.
	Scheme string
	TLS    *tls.Config
	// QueueTimeout is how long a request waits for a lease.
	QueueTimeout time.Duration
	// BodyMemory bounds the request-body bytes the node holds at once
	// (a quarter of it, or one largest body, per API key and per remote
	// address); BodyTimeout how long reading one body may take;
	// BodyMinRate the slowest, in bytes per second, it may arrive after a
	// grace of a few seconds (defaults in body.go).
	BodyMemory  int64
	BodyTimeout time.Duration
	BodyMinRate int64
	// Workers is nil on a node that runs none.
	Workers WorkerEndpoints
	Queues  Queues
	Members Members
	// Peers lists the API addresses of live peers other than the queen,
	// in the order to try them, for a request this node cannot lease for
	// because it cannot reach the queen (peers.go); nil: none is relayed.
	Peers func() []string
	// Usage takes the usage of every request this node answers as entry
	// node (usage.go); nil: none is recorded.
	Usage UsageRecorder
	// MigrationLimit is how many times one stream may be continued on
	// another worker after its worker broke off (migrate.go); 0 turns
	// migration off. MigrationMaxBytes bounds the answer text kept per
	// stream for it: a longer answer is not migrated.
	MigrationLimit    int
	MigrationMaxBytes int
	// OnMigration is told of each migration, for the queen's event list;
	// it must not block. Nil: nobody is told.
	OnMigration func(wsapi.Migration)
	// Metrics takes the entry node's figures.
	Metrics prometheus.Registerer
	Logger  *slog.Logger
	// AccessLog takes one line per request this node answered as entry
	// node (observe.go); nil: none.
	AccessLog *slog.Logger
	// Tracer makes the data plane's spans (trace.go); nil: tracing off.
	Tracer trace.TracerProvider
	// Spares is how many spare leases (spares.go) this entry node may
	// hold for one model; 0 turns them off.
	Spares int
}

// Proxy serves the OpenAI API as an entry node and proxies leased requests to
// this hive's workers. It is safe for concurrent use.
type Proxy struct {
	cfg    Config
	log    *slog.Logger
	leases *LeaseClient
	table  *leaseTable
	// hops carries requests to hives and workers. Called directly, not
	// through an http.Client: a proxy passes a redirect on rather than
	// following it (a worker's 302 would have the hive fetch wherever it
	// points), and the client's per-request header copy for redirects
	// cost ~2% of an entry node's CPU on one-token requests.
	hops    *syncTransport
	metrics *metrics
	labels  modelLabels   // the served names metrics label requests by
	usage   *usageMetrics // usage accounting (usage.go)
	bodies  *budget
	// capped counts the requests of each key with a max_concurrent at
	// this entry node, so that one over it is refused before its body
	// is read (tenant.go).
	capped *keyGate
	// responses remembers which worker made each Responses API answer
	// this entry node passed on (see affinity.go).
	responses *responseMap
	// obs and tracer take what each request leaves behind (observe.go,
	// trace.go); tracer is nil with tracing off.
	obs    *obsMetrics
	tracer trace.Tracer
}

// New returns the data plane of node cfg.Name.
func New(cfg Config) (*Proxy, error) {
	if cfg.Logger == nil {
		cfg.Logger = slog.New(slog.DiscardHandler)
	}
	if cfg.BodyMemory <= 0 {
		cfg.BodyMemory = DefaultBodyMemory
	}
	if cfg.Scheme == "" {
		cfg.Scheme = "http"
	}
	if cfg.BodyTimeout <= 0 {
		cfg.BodyTimeout = DefaultBodyTimeout
	}
	if cfg.BodyMinRate <= 0 {
		cfg.BodyMinRate = DefaultBodyMinRate
	}
	m, err := newMetrics(cfg.Metrics)
	if err != nil {
		return nil, err
	}
	um, err := newUsageMetrics(cfg.Metrics) // usage accounting (usage.go)
	if err != nil {
		return nil, err
	}
	om, err := newObsMetrics(cfg.Metrics) // observe.go
	if err != nil {
		return nil, err
	}
	var tracer trace.Tracer
	if cfg.Tracer != nil {
		tracer = cfg.Tracer.Tracer(tracerName)
	}
	lc := NewLeaseClient(cfg.Name, cfg.Start)
	lc.SetSpares(cfg.Spares)
	if cfg.Members != nil {
		lc.fence = cfg.Members.FenceTerm
	}
	if cfg.Metrics != nil {
		for _, c := range lc.spareCollectors() {
			if err := cfg.Metrics.Register(c); err != nil {
				return nil, err
			}
		}
	}
	return &Proxy{
		obs:    om,
		tracer: tracer,
		cfg:    cfg,
		log:    cfg.Logger,
		leases: lc,
		table:  newLeaseTable(),
		// No timeout: a generation may stream for minutes; the client's
		// own disconnect cancels it.
		hops:      newSyncTransport(cfg.TLS, newTransport(cfg.TLS)),
		metrics:   m,
		usage:     um,
		bodies:    newBudget(cfg.BodyMemory),
		capped:    &keyGate{n: map[string]int{}},
		responses: newResponseMap(responseTTL, responseEntries),
	}, nil
}

// Leases is the entry node's lease client, which the node's session to the
// queen feeds with grants.
func (p *Proxy) Leases() *LeaseClient { return p.leases }

// ReportLeases records this tick's workers (their slots), marks in place the
// ones whose requests fail, and returns the requests this hive is serving,
// for its telemetry.
func (p *Proxy) ReportLeases(workers []wsapi.ProcessStats, now time.Time) []wsapi.LeaseInfo {
	return p.table.report(workers, now)
}

// Close drops idle connections to hives and workers.
func (p *Proxy) Close() {
	p.hops.Close()
}

// newTransport returns a transport for proxying: no proxy from the
// environment (HTTP_PROXY must not see cluster traffic), no transparent gzip
// (bodies pass through unchanged), and enough idle connections for a busy
// worker.
func newTransport(tlsCfg *tls.Config) *http.Transport {
	return &http.Transport{
		TLSClientConfig:       tlsCfg,
		DialContext:           (&net.Dialer{Timeout: 5 * time.Second, KeepAlive: 30 * time.Second}).DialContext,
		MaxIdleConns:          1024,
		MaxIdleConnsPerHost:   256,
		IdleConnTimeout:       90 * time.Second,
		DisableCompression:    true,
		ResponseHeaderTimeout: 0, // a worker may think for minutes before the first byte
		ForceAttemptHTTP2:     false,
	}
}
