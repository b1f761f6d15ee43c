package node

import (
	"cmp"
	"context"
	"crypto/tls"
	"errors"
	"fmt"
	"log/slog"
	"math/rand/v2"
	"net"
	"net/http"
	"os"
	"path/filepath"
	"runtime"
	"strconv"
	"sync"
	"sync/atomic"
	"time"

	sockaddr "github.com/hashicorp/go-sockaddr"
	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/collectors"
	"golang.org/x/sync/errgroup"

	"github.com/rbee/rbee/gossip"
	"github.com/rbee/rbee/node/hive"
	"github.com/rbee/rbee/node/proxy"
	"github.com/rbee/rbee/node/queen"
	"github.com/rbee/rbee/node/tenants"
	"github.com/rbee/rbee/node/usage"
	"github.com/rbee/rbee/wsapi"
)

// ErrClosed is returned by Run on a node that was already stopped.
var ErrClosed = errors.New("node closed")

// Node is one running rbee node. New binds its sockets; Run serves until its
// context ends or the node leaves; Leave is the graceful stop, Close the
// immediate one.
type Node struct {
	cfg    Config
	log    *slog.Logger
	start  time.Time
	gossip *gossip.Gossip
	ln     net.Listener
	http   *http.Server
	// httpAdvertise is the address other nodes use to reach this node's API.
	httpAdvertise string

	// copying: the models being copied into this hive now (files.go).
	copyMu  sync.Mutex
	copying map[string]bool
	// reported: this hive's telemetry has reached a queen (ready.go).
	reported atomic.Bool

	hub *wsapi.Hub
	// tls is this node's identity among the nodes (nil without a key):
	// inter-node traffic runs over mutual TLS trusted through the key.
	tls *wsapi.ClusterTLS
	// scheme is how this node reaches the others: "https" with a key.
	scheme string
	queen  *queen.Queen
	proxy  *proxy.Proxy
	// usage counts what this node answered as entry node; the uplink sends
	// it to the queen, which sums every node's (cluster.go).
	usage *usage.Ledger
	// migrations are the streams this node moved that the uplink has
	// yet to report to the queen.
	migrations *migrationQueue
	// hive is what this node does as a hive (nil without the hive role).
	hive *hive.Agent
	// keys are the API keys file's tenants (nil without one).
	keys    *tenants.File
	metrics *prometheus.Registry
	// hc asks the queen for its view and dials sessions and feeds; its
	// idle connections are closed at shutdown.
	hc *http.Client

	// connCtx is the parent of every request context; it is cancelled at
	// shutdown so long-lived WebSocket handlers end (http.Server.Shutdown
	// does not wait for hijacked connections).
	connCtx    context.Context
	cancelConn context.CancelFunc
	// handlers counts the HTTP handlers running, hijacked ones included,
	// so that shutdown returns only when none is left.
	handlers handlerGroup

	// leaveCh takes a leave asked for over the admin API: Run carries it
	// out, draining requests for the duration sent.
	leaveCh chan time.Duration

	// Lifetime: Run is called at most once; stop runs once, whoever
	// asks first (Run's context, Leave, Close), and the others wait for
	// it.
	running   atomic.Bool
	runMu     sync.Mutex
	cancelRun context.CancelFunc
	stopping  bool // stop has begun: a Run that starts now must not serve
	runDone   chan struct{}
	stopOnce  sync.Once
	stopped   chan struct{}
}

// New checks cfg, binds the HTTP and gossip listeners, and returns a node
// ready to Run. A node that is never run must be Closed to free them.
func New(cfg Config) (*Node, error) {
	cfg = cfg.withDefaults()
	if err := cfg.validate(); err != nil {
		return nil, err
	}
	n := &Node{
		cfg:     cfg,
		log:     cfg.Logger.With("node", cfg.Name),
		start:   time.Now(),
		hub:     wsapi.NewHub(0),
		hc:      &http.Client{Transport: http.DefaultTransport.(*http.Transport).Clone()},
		copying: map[string]bool{},
		metrics: prometheus.NewRegistry(),
		leaveCh: make(chan time.Duration, 1),
		usage:   usage.NewLedger(),
		runDone: make(chan struct{}),
		stopped: make(chan struct{}),
	}
	n.migrations = newMigrationQueue(n.log)
	serverTLS, err := n.setupTLS()
	if err != nil {
		return nil, err
	}
	ln, err := net.Listen("tcp", cfg.HTTPAddr)
	if err != nil {
		return nil, fmt.Errorf("listen http %s: %w", cfg.HTTPAddr, err)
	}
	lim, err := newLimitListener(ln, cfg.MaxConns, n.metrics, n.log)
	if err != nil {
		ln.Close()
		return nil, fmt.Errorf("connection cap: %w", err)
	}
	n.ln = newMuxListener(lim, serverTLS)
	adv, err := advertiseHTTP(ln.Addr().(*net.TCPAddr), cfg)
	if err != nil {
		n.ln.Close()
		return nil, err
	}
	n.httpAdvertise = adv
	if cfg.APIKeysFile != "" {
		if n.keys, err = tenants.Open(cfg.APIKeysFile, n.log); err != nil {
			n.ln.Close()
			return nil, err
		}
	}
	if err := n.newPlanes(); err != nil {
		n.ln.Close()
		return nil, err
	}

	snapshot := ""
	if cfg.DataDir != "" {
		if err := os.MkdirAll(cfg.DataDir, 0o700); err != nil {
			n.ln.Close()
			return nil, fmt.Errorf("data dir: %w", err)
		}
		snapshot = filepath.Join(cfg.DataDir, "members.json")
	}
	disc, err := cfg.discovery(n.log)
	if err != nil {
		n.ln.Close()
		return nil, err
	}
	g, err := gossip.New(gossip.Config{
		Discovery:     disc,
		SnapshotPath:  snapshot,
		ExplainJoin:   n.explainJoin,
		Name:          cfg.Name,
		BindAddr:      cfg.GossipAddr,
		AdvertiseAddr: cfg.AdvertiseAddr,
		Secret:        cfg.Key.GossipSecret(),
		Meta: gossip.Meta{
			HTTPAddr: adv,
			Roles:    cfg.Roles,
			Priority: cfg.QueenPriority,
			Start:    n.start.UTC(),
			Version:  Version,
			Revision: wsapi.Revision,
		},
		Timing: cfg.GossipTiming,
		Logger: n.log,
	}, seedsWithPort(cfg.Join))
	if err != nil {
		n.ln.Close()
		return nil, err
	}
	n.gossip = g
	isMember := n.isMemberIP
	lim.member.Store(&isMember)
	n.connCtx, n.cancelConn = context.WithCancel(context.Background())
	n.http = &http.Server{
		Handler:           n.track(n.cors(n.routes())),
		ReadHeaderTimeout: headerTimeout,
		IdleTimeout:       idleTimeout,
		ConnState:         lim.connState,
		ConnContext:       withTrackedConn,
		BaseContext:       func(net.Listener) context.Context { return n.connCtx },
		ErrorLog:          slog.NewLogLogger(n.log.Handler(), slog.LevelDebug),
	}
	return n, nil
}

// setupTLS makes this node's cluster identity (with a key) and returns the
// TLS side of its listener: other nodes (who ask for ClusterServerName) get
// the cluster certificate and must show one; anyone else gets the user's
// certificate (--tls-cert), or else the cluster's, with no client
// certificate required. nil means plain HTTP only.
func (n *Node) setupTLS() (*tls.Config, error) {
	n.scheme = "http"
	var user *tls.Certificate
	if n.cfg.TLSCertFile != "" || n.cfg.TLSKeyFile != "" {
		c, err := tls.LoadX509KeyPair(n.cfg.TLSCertFile, n.cfg.TLSKeyFile)
		if err != nil {
			return nil, fmt.Errorf("load --tls-cert/--tls-key: %w", err)
		}
		user = &c
	}
	if n.cfg.Key.IsZero() {
		if user == nil {
			return nil, nil
		}
		return &tls.Config{MinVersion: tls.VersionTLS12, Certificates: []tls.Certificate{*user}}, nil
	}
	ct, err := n.cfg.Key.NewClusterTLS(n.cfg.Name)
	if err != nil {
		return nil, err
	}
	n.tls, n.scheme = ct, "https"
	n.hc.Transport.(*http.Transport).TLSClientConfig = ct.ClientConfig()
	cluster := ct.ServerConfig()
	public := cluster.Clone()
	public.ClientAuth = tls.VerifyClientCertIfGiven
	public.MinVersion = tls.VersionTLS12
	if user != nil {
		public.Certificates = []tls.Certificate{*user}
	}
	return &tls.Config{
		GetConfigForClient: func(hello *tls.ClientHelloInfo) (*tls.Config, error) {
			if hello.ServerName == wsapi.ClusterServerName {
				return cluster, nil
			}
			return public, nil
		},
	}, nil
}

// url is the address of path on the node at addr, over TLS when the cluster
// has a key; ws gives the WebSocket scheme.
func (n *Node) url(addr, path string, ws bool) string {
	scheme := n.scheme
	if ws {
		scheme = map[string]string{"http": "ws", "https": "wss"}[scheme]
	}
	return scheme + "://" + addr + path
}

// isPeer reports whether r came from another node (or the CLI) over the
// cluster's mutual TLS: proof that the caller holds the key.
func (n *Node) isPeer(r *http.Request) bool { return n.tls.IsPeer(r.TLS) }

// newPlanes builds the control plane (the queen), the hive (with the hive
// role) and the data plane (the proxy), each seeing the node through its own
// small interfaces.
func (n *Node) newPlanes() error {
	buildInfo := prometheus.NewGauge(prometheus.GaugeOpts{Name: "rbee_build_info", Help: "1, labelled with the rbee and Go versions of this node.",
		ConstLabels: prometheus.Labels{"version": Version, "goversion": runtime.Version()}})
	buildInfo.Set(1)
	n.metrics.MustRegister(collectors.NewGoCollector(), collectors.NewProcessCollector(collectors.ProcessCollectorOpts{}), buildInfo)
	q, err := queen.New(queen.Config{
		Name:          n.cfg.Name,
		HTTPAddr:      n.httpAdvertise,
		Members:       (*members)(n),
		Feed:          n.hub,
		Session:       *n.sessionOptions(),
		HiveTTL:       n.cfg.HiveTTL,
		ForgetAfter:   n.cfg.ForgetAfter,
		EventInterval: n.cfg.QueenEventInterval,
		QueueLimit:    n.cfg.QueueLimit,
		AffinityWait:  n.cfg.AffinityWait,
		GrantAhead:    cmp.Or(n.cfg.GrantAhead, DefaultGrantAhead),
		ModelVRAMMB:   n.cfg.ModelVRAMMB,
		Metrics:       n.metrics,
		Logger:        n.log,
		Tracer:        n.cfg.Tracer,
	})
	if err != nil {
		return err
	}
	n.queen = q
	var workers proxy.WorkerEndpoints // nil: this node serves no worker
	if n.cfg.hasRole(gossip.RoleHive) {
		if n.hive, err = n.newHive(); err != nil {
			return err
		}
		workers = n.hive
	}
	p, err := proxy.New(proxy.Config{
		Name:              n.cfg.Name,
		Start:             n.start,
		Scheme:            n.scheme,
		TLS:               n.hc.Transport.(*http.Transport).TLSClientConfig,
		QueueTimeout:      n.cfg.QueueTimeout,
		BodyMemory:        n.cfg.BodyMemory,
		BodyTimeout:       n.cfg.BodyTimeout,
		BodyMinRate:       n.cfg.BodyMinRate,
		MigrationLimit:    n.cfg.MigrationLimit,
		MigrationMaxBytes: n.cfg.MigrationMaxBytes,
		Workers:           workers,
		Queues:            (*clusterQueues)(n),
		Members:           (*members)(n),
		Peers:             n.relayPeers,
		Usage:             n.usage,
		OnMigration:       n.reportMigration,
		Metrics:           n.metrics,
		Logger:            n.log,
		AccessLog:         n.cfg.AccessLog,
		Tracer:            n.cfg.Tracer,
		Spares:            max(cmp.Or(n.cfg.Spares, proxy.DefaultSpares), 0),
	})
	if err != nil {
		return err
	}
	n.proxy = p
	return nil
}

// newHive sets up what this node does as a hive: its reports, and the
// model lifecycle when it has a catalog.
func (n *Node) newHive() (*hive.Agent, error) {
	return hive.New(hive.Config{
		Name:           n.cfg.Name,
		Collector:      n.cfg.Collector,
		CollectTimeout: n.cfg.TelemetryInterval,
		Models:         n.cfg.Models,
		Leases:         (*hiveLeases)(n),
		// A model_start comes only on a session, after the gossip
		// layer is made.
		Fence:     func() uint64 { return n.gossip.FenceTerm() },
		CopyModel: n.copyFrom,
		Metrics:   n.metrics,
		Logger:    n.log,
	})
}

// hiveLeases is the data plane's lease table as the hive sees it. The hive
// is made before the proxy (which needs the hive to find its workers), so
// the table is reached through the node.
type hiveLeases Node

func (l *hiveLeases) ReportLeases(workers []wsapi.ProcessStats, now time.Time) []wsapi.LeaseInfo {
	return l.proxy.ReportLeases(workers, now)
}
func (l *hiveLeases) WorkerLeases(worker string) (int, time.Time) {
	return l.proxy.WorkerLeases(worker)
}
func (l *hiveLeases) Drain(worker string) { l.proxy.Drain(worker) }

// members is the node's gossip as the queen sees it. The gossip layer is
// made after the planes (it needs the advertised HTTP address, which needs
// the listener), so it is reached through the node.
type members Node

func (m *members) WatchQueen() (gossip.Member, bool, <-chan struct{}) {
	return m.gossip.WatchQueen()
}

func (m *members) Member(name string) (gossip.Member, bool) { return m.gossip.Member(name) }
func (m *members) LiveMembers() []gossip.Member             { return m.gossip.LiveMembers() }
func (m *members) Term() uint64                             { return m.gossip.Term() }
func (m *members) Members() []gossip.Member                 { return m.gossip.Members() }
func (m *members) FenceTerm() uint64                        { return m.gossip.FenceTerm() }
func (m *members) WatchMember(name string) <-chan struct{}  { return m.gossip.WatchMember(name) }

// relayPeers lists the API addresses of the live members an entry request
// may go through when this node cannot reach the queen: not this node, not
// the queen (that is the path that fails), not one that is leaving; those
// that follow the same queen first, each group shuffled so that a stranded
// node's load spreads.
func (n *Node) relayPeers() []string {
	q, _, _ := n.gossip.WatchQueen()
	var same, other []string
	for _, m := range n.gossip.LiveMembers() {
		if m.Name == n.cfg.Name || m.Name == q.Name || m.Leaving || m.HTTPAddr == "" {
			continue
		}
		if m.Follows == q.Name {
			same = append(same, m.HTTPAddr)
		} else {
			other = append(other, m.HTTPAddr)
		}
	}
	rand.Shuffle(len(same), func(i, j int) { same[i], same[j] = same[j], same[i] })
	rand.Shuffle(len(other), func(i, j int) { other[i], other[j] = other[j], other[i] })
	return append(same, other...)
}

// advertiseHTTP picks the API address other nodes dial: the bound address,
// unless it is 0.0.0.0/::, then the gossip advertise host, else the first
// private IP (as memberlist itself does).
func advertiseHTTP(bound *net.TCPAddr, cfg Config) (string, error) {
	port := strconv.Itoa(bound.Port)
	if !bound.IP.IsUnspecified() {
		return net.JoinHostPort(bound.IP.String(), port), nil
	}
	for _, a := range []string{cfg.AdvertiseAddr, cfg.GossipAddr} {
		if h, _, err := net.SplitHostPort(a); err == nil && h != "" {
			if ip := net.ParseIP(h); ip == nil || !ip.IsUnspecified() {
				return net.JoinHostPort(h, port), nil
			}
		}
	}
	ip, err := sockaddr.GetPrivateIP()
	if err != nil || ip == "" {
		return "", fmt.Errorf("http listens on %s: cannot find an address to advertise; pass a specific --http-addr", bound)
	}
	return net.JoinHostPort(ip, port), nil
}

// HTTPAddr is the address the API listens on (useful with port 0).
func (n *Node) HTTPAddr() string { return n.ln.Addr().String() }

// GossipAddr is the gossip address the other nodes use.
func (n *Node) GossipAddr() string { return n.gossip.Self().GossipAddr }

// Name is the node's name.
func (n *Node) Name() string { return n.cfg.Name }

// Queen returns the current queen as this node sees it.
func (n *Node) Queen() (gossip.Member, bool) {
	q, ok, _ := n.gossip.WatchQueen()
	return q, ok
}

// Registry is the queen's registry (empty on other nodes).
func (n *Node) Registry() *queen.Registry { return n.queen.Registry() }

// Members lists the cluster as this node sees it.
func (n *Node) Members() []gossip.Member { return n.gossip.Members() }

// Handler is the node's HTTP API, as Run serves it.
func (n *Node) Handler() http.Handler { return n.http.Handler }

// Run serves until ctx ends or the node leaves (Leave, or POST
// /v1/admin/leave), then returns once everything it started has ended. When
// ctx ends first the node stops at once: it still tells the cluster it is
// leaving, so a new queen is elected without waiting for failure detection,
// but requests in flight are cut. Run must be called at most once.
func (n *Node) Run(ctx context.Context) error {
	if !n.running.CompareAndSwap(false, true) {
		return errors.New("node: Run called twice")
	}
	defer close(n.runDone)
	ctx, cancel := context.WithCancel(ctx)
	defer cancel()
	n.runMu.Lock()
	if n.stopping {
		n.runMu.Unlock()
		return ErrClosed
	}
	n.cancelRun = cancel
	n.runMu.Unlock()
	n.log.Info("node started", "http", n.HTTPAddr(), "advertise_http", n.httpAdvertise, "gossip", n.GossipAddr(),
		"roles", n.cfg.Roles, "encrypted", !n.cfg.Key.IsZero(), "join", n.cfg.Join, "discover", n.discoverLogged(), "gossip_profile", n.cfg.GossipProfile)

	eg, ectx := errgroup.WithContext(ctx)
	eg.Go(func() error { return n.gossip.Run(ectx) })
	eg.Go(func() error {
		if err := n.http.Serve(n.ln); err != nil && !errors.Is(err, http.ErrServerClosed) {
			return fmt.Errorf("serve http: %w", err)
		}
		return nil
	})
	eg.Go(func() error { return n.queen.Run(ectx) })
	eg.Go(func() error { return n.runRelay(ectx) })
	// Every node keeps a session to the queen: hives report on it, and
	// every node asks it for leases.
	eg.Go(func() error { return n.runUplink(ectx) })
	if n.hive != nil {
		eg.Go(func() error { return n.hive.Run(ectx) })
	}
	if n.keys != nil {
		eg.Go(func() error { return n.keys.Run(ectx) })
	}
	eg.Go(func() error {
		select {
		case <-ectx.Done():
			n.stop(ectx, true) // already done: no drain
		case d := <-n.leaveCh:
			dctx, cancel := context.WithTimeout(context.Background(), d)
			n.stop(dctx, true)
			cancel()
		}
		return nil
	})
	err := eg.Wait()
	<-n.stopped
	if err != nil {
		return err
	}
	n.log.Info("node stopped")
	return nil
}

// ReloadKeys reads the API keys file again (SIGHUP); the keys in force stay
// when it cannot be used.
func (n *Node) ReloadKeys() error {
	if n.keys == nil {
		return nil
	}
	return n.keys.Reload()
}

// Leave stops the node gracefully: it tells the cluster it is leaving (a new
// queen is elected at once if it was queen), stops taking requests, lets the
// requests in flight finish until ctx ends, then stops everything and waits
// for Run to return. Requests still waiting for a lease fail at once with a
// 503. Safe to call more than once and from any goroutine, but not from one
// of the node's own HTTP handlers (it waits for them).
func (n *Node) Leave(ctx context.Context) error {
	n.stop(ctx, n.running.Load())
	if n.running.Load() {
		<-n.runDone
	}
	return nil
}

// Close stops the node now, without draining requests, and frees its
// sockets; for a node whose Run was never called it is the only way to free
// them. A node that ran still tells the cluster it is leaving. Safe to call
// more than once.
func (n *Node) Close() error {
	ctx, cancel := context.WithCancel(context.Background())
	cancel()
	return n.Leave(ctx)
}

// requestLeave asks Run to leave gracefully, draining requests for up to
// drain; the admin API calls it from a handler, which Leave would wait for.
func (n *Node) requestLeave(drain time.Duration) {
	select {
	case n.leaveCh <- drain:
	default: // a leave is already under way
	}
}

// stop shuts the node down once; later callers wait until it has. announce
// tells the cluster first, so the others elect a new queen while this node
// is still closing its connections. Requests in flight have until ctx ends.
func (n *Node) stop(ctx context.Context, announce bool) {
	n.stopOnce.Do(func() {
		defer close(n.stopped)
		n.runMu.Lock()
		n.stopping = true
		if n.cancelRun != nil {
			n.cancelRun()
		}
		n.runMu.Unlock()
		if announce {
			if err := n.gossip.Leave(); err != nil && !errors.Is(err, gossip.ErrLeft) {
				n.log.Warn("leave cluster", "err", err)
			}
		}
		n.queen.CloseSessions()
		n.proxy.Leases().Close()
		if err := n.http.Shutdown(ctx); err != nil {
			if !errors.Is(err, context.Canceled) && !errors.Is(err, context.DeadlineExceeded) {
				n.log.Warn("shutdown http", "err", err)
			}
			_ = n.http.Close()
		}
		// Serve closes its listener, but a node that never ran has not
		// served it.
		_ = n.ln.Close()
		n.cancelConn()
		if err := n.gossip.Shutdown(); err != nil {
			n.log.Warn("shutdown gossip", "err", err)
		}
		n.handlers.closeAndWait()
		n.queen.Close()
		n.hc.CloseIdleConnections()
		n.proxy.Close()
		if n.hive != nil {
			n.hive.Close() // a node that never ran started no engine; this frees nothing then
		}
	})
	<-n.stopped
}

// track counts every handler, so that shutdown waits for all of them, the
// long-lived WebSocket ones included.
func (n *Node) track(h http.Handler) http.Handler {
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if !n.handlers.enter() {
			proxy.WriteError(w, http.StatusServiceUnavailable, "shutting_down", "this node is shutting down")
			return
		}
		defer n.handlers.done()
		if n.isPeer(r) {
			markAuthenticated(r)
		}
		h.ServeHTTP(w, r)
	})
}

// handlerGroup is a WaitGroup that refuses new members once it is waited on
// (a connection accepted just before the listener closed may still start a
// handler then).
type handlerGroup struct {
	mu     sync.Mutex
	closed bool
	wg     sync.WaitGroup
}

func (g *handlerGroup) enter() bool {
	g.mu.Lock()
	defer g.mu.Unlock()
	if g.closed {
		return false
	}
	g.wg.Add(1)
	return true
}

func (g *handlerGroup) done() { g.wg.Done() }

func (g *handlerGroup) closeAndWait() {
	g.mu.Lock()
	g.closed = true
	g.mu.Unlock()
	g.wg.Wait()
}
