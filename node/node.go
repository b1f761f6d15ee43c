package node

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"net/http"
	"strconv"
	"sync"
	"sync/atomic"
	"time"

	"github.com/coder/websocket"
	sockaddr "github.com/hashicorp/go-sockaddr"
	"golang.org/x/sync/errgroup"

	"github.com/rbee/rbee/gossip"
	"github.com/rbee/rbee/scheduler"
	"github.com/rbee/rbee/wsapi"
)

// Node is one running rbee node. New binds its sockets; Run serves until its
// context ends or Leave is called, then leaves the cluster gracefully.
type Node struct {
	cfg    Config
	log    *slog.Logger
	start  time.Time
	gossip *gossip.Gossip
	ln     net.Listener
	http   *http.Server
	// httpAdvertise is the address other nodes use to reach this node's API.
	httpAdvertise string

	registry *Registry
	hub      *wsapi.Hub
	// hc asks the queen for its hive list; its idle connections are
	// closed at shutdown.
	hc *http.Client

	// connCtx is the parent of every request context; it is cancelled at
	// shutdown so long-lived WebSocket handlers end (http.Server.Shutdown
	// does not wait for hijacked connections).
	connCtx    context.Context
	cancelConn context.CancelFunc
	conns      sync.WaitGroup

	// leaveCh is closed by Leave to stop Run gracefully.
	leaveCh   chan struct{}
	leaveOnce sync.Once

	// sessionSeq orders hive sessions by when their handshake began: a
	// hive that redials quickly may finish registering its new session
	// before the old handler registers the old one.
	sessionSeq atomic.Uint64

	mu       sync.Mutex
	sessions map[string]hiveSession // queen side: hive name -> session

	// Queen side: the scheduler (nil unless queen), guarded by schedMu.
	schedMu     sync.Mutex
	sched       *scheduler.Scheduler
	warmAt      time.Time
	rateAt      time.Time
	rateGranted uint64
	rate        float64

	// Entry side: leases asked of the queen; hive side: requests served.
	lc          *leaseClient
	active      *activeLeases
	proxyClient *http.Client
	metrics     *metrics
}

type hiveSession struct {
	s   *wsapi.Session
	seq uint64
	// out feeds the session's writer: lease answers are queued here so
	// that one slow node cannot stall the scheduler.
	out *wsapi.Outbox
}

// New checks cfg, binds the HTTP and gossip listeners, and returns a node
// ready to Run.
func New(cfg Config) (*Node, error) {
	cfg = cfg.withDefaults()
	if err := cfg.validate(); err != nil {
		return nil, err
	}
	n := &Node{
		cfg:      cfg,
		log:      cfg.Logger.With("node", cfg.Name),
		start:    time.Now(),
		registry: NewRegistry(cfg.HiveTTL, cfg.ForgetAfter),
		hub:      wsapi.NewHub(0),
		leaveCh:  make(chan struct{}),
		sessions: make(map[string]hiveSession),
		hc:       &http.Client{Transport: http.DefaultTransport.(*http.Transport).Clone()},
		active:   newActiveLeases(),
		// No client timeout: a generation may stream for minutes; the
		// client's own disconnect cancels it.
		proxyClient: &http.Client{Transport: newProxyTransport()},
	}
	n.lc = newLeaseClient(cfg.Name, n.start)
	n.metrics = newMetrics(n)
	ln, err := net.Listen("tcp", cfg.HTTPAddr)
	if err != nil {
		return nil, fmt.Errorf("listen http %s: %w", cfg.HTTPAddr, err)
	}
	n.ln = ln
	adv, err := advertiseHTTP(ln.Addr().(*net.TCPAddr), cfg)
	if err != nil {
		ln.Close()
		return nil, err
	}
	n.httpAdvertise = adv

	g, err := gossip.New(gossip.Config{
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
		},
		Timing: cfg.GossipTiming,
		Logger: n.log,
	}, cfg.Join)
	if err != nil {
		ln.Close()
		return nil, err
	}
	n.gossip = g
	n.connCtx, n.cancelConn = context.WithCancel(context.Background())
	n.http = &http.Server{
		Handler:           n.routes(),
		ReadHeaderTimeout: 10 * time.Second,
		BaseContext:       func(net.Listener) context.Context { return n.connCtx },
		ErrorLog:          slog.NewLogLogger(n.log.Handler(), slog.LevelDebug),
	}
	return n, nil
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
func (n *Node) Registry() *Registry { return n.registry }

// Members lists the cluster as this node sees it.
func (n *Node) Members() []gossip.Member { return n.gossip.Members() }

func (n *Node) isQueen() bool {
	q, ok := n.Queen()
	return ok && q.Name == n.cfg.Name
}

// Leave asks Run to leave the cluster gracefully and return. Safe to call more
// than once and from any goroutine.
func (n *Node) Leave() {
	n.leaveOnce.Do(func() { close(n.leaveCh) })
}

// Run serves until ctx ends or Leave is called; then it tells the cluster it
// is leaving (so a new queen is chosen at once), closes its sessions and
// returns. Run must be called once.
func (n *Node) Run(ctx context.Context) error {
	ctx, cancel := context.WithCancel(ctx)
	defer cancel()
	n.log.Info("node started", "http", n.HTTPAddr(), "advertise_http", n.httpAdvertise, "gossip", n.GossipAddr(),
		"roles", n.cfg.Roles, "encrypted", !n.cfg.Key.IsZero(), "join", n.cfg.Join)

	eg, ectx := errgroup.WithContext(ctx)
	eg.Go(func() error {
		select {
		case <-n.leaveCh:
			cancel()
		case <-ectx.Done():
		}
		return nil
	})
	eg.Go(func() error { return n.gossip.Run(ectx) })
	eg.Go(func() error {
		if err := n.http.Serve(n.ln); err != nil && !errors.Is(err, http.ErrServerClosed) {
			return fmt.Errorf("serve http: %w", err)
		}
		return nil
	})
	eg.Go(func() error { return n.runQueen(ectx) })
	eg.Go(func() error { return n.runRelay(ectx) })
	// Every node keeps a session to the queen: hives report on it, and
	// every node asks it for leases.
	eg.Go(func() error { return n.runHive(ectx) })
	eg.Go(func() error {
		<-ectx.Done()
		n.shutdown()
		return nil
	})
	err := eg.Wait()
	n.conns.Wait()
	if err != nil {
		return err
	}
	n.log.Info("node stopped")
	return nil
}

// shutdown leaves the cluster first, so the others elect a new queen while
// this node is still closing its connections, then closes everything.
func (n *Node) shutdown() {
	if err := n.gossip.Leave(); err != nil && !errors.Is(err, gossip.ErrLeft) {
		n.log.Warn("leave cluster", "err", err)
	}
	n.closeSessions(websocket.StatusGoingAway, "queen shutting down")
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	n.cancelConn()
	if err := n.http.Shutdown(ctx); err != nil {
		n.log.Warn("shutdown http", "err", err)
	}
	if err := n.gossip.Shutdown(); err != nil {
		n.log.Warn("shutdown gossip", "err", err)
	}
	n.hc.CloseIdleConnections()
	n.proxyClient.CloseIdleConnections()
}
