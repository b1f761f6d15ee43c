package node

import (
	"container/list"
	"context"
	"crypto/tls"
	"log/slog"
	"net"
	"net/http"
	"sync"
	"sync/atomic"
	"syscall"
	"time"

	"github.com/prometheus/client_golang/prometheus"
)

// Connection bounds. Without them anyone who can reach the port holds one
// file descriptor and ~25 KB per idle keep-alive connection for as long as
// it likes: 20,000 of them ran a node out of descriptors, and its API and
// gossip stopped accepting while the cluster still listed it alive.
const (
	// idleTimeout closes a keep-alive connection with no request for this
	// long. Above the 90 s of Go's (and most) client pools, so that the
	// client, which knows when it will reuse a connection, closes first.
	// WebSockets and streams are not idle: their requests are running.
	idleTimeout = 2 * time.Minute
	// unauthIdleTimeout is the idle timeout of a connection that never
	// showed a key: a health check or the dashboard's static files, which
	// lose a handshake at most by reconnecting.
	unauthIdleTimeout = 5 * time.Second
	// headerTimeout bounds the headers of a request (and a TLS handshake).
	headerTimeout = 10 * time.Second
	// maxConnsCeiling bounds the default cap whatever the descriptor limit:
	// 8,192 connections are ~200 MB of buffers and goroutines; an LLM node
	// serving more clients at once than that (each queue holds 1,024
	// waiting requests) has bigger problems than this cap.
	maxConnsCeiling = 8192
	// minMaxConns keeps a node under a tiny descriptor limit usable.
	minMaxConns = 64
	// perAddrDivisor: one remote address may hold 1/8 of the cap, so that
	// several addresses are needed to reach the cap at all.
	perAddrDivisor = 8
)

// DefaultMaxConns is the connection cap for a process allowed nofile open
// files: a quarter of them, the rest left for what the node opens itself (a
// request it serves may hold a connection to a hive and one to a worker;
// gossip, the queen, model files, the pipes of the workers it starts),
// within [64, 8192].
func DefaultMaxConns(nofile uint64) int {
	return int(min(max(nofile/4, minMaxConns), maxConnsCeiling))
}

// openFileLimit is this process's RLIMIT_NOFILE (Go raises the soft limit
// to the hard one at start), 1024 when it cannot be read.
func openFileLimit() uint64 {
	var rl syscall.Rlimit
	if err := syscall.Getrlimit(syscall.RLIMIT_NOFILE, &rl); err != nil || rl.Cur == 0 {
		return 1024
	}
	return rl.Cur
}

// perAddrShare is how many connections one remote address may hold.
func perAddrShare(maxConns int) int { return max(maxConns/perAddrDivisor, 16) }

// connPhase is where a connection is in its life, as net/http reports it.
type connPhase int

const (
	phaseNew connPhase = iota // accepted, no request yet
	phaseActive
	phaseIdle     // keep-alive, between requests
	phaseHijacked // a WebSocket: the server no longer sees it
)

// connEntry is one accepted connection as the table sees it.
type connEntry struct {
	addr   string // remote IP
	exempt bool   // loopback: this machine's users and reverse proxies share no address quota
	phase  connPhase
	gone   bool // removed from the table (closed or evicted)
	elem   *list.Element
	in     *list.List   // which eviction list elem is in, nil when none
	conn   *trackedConn // what to close when evicted (nil in tests of the table)
	// authed: a request on it showed a valid key or cluster certificate.
	// shortIdle: idle without one. Both change under the table's lock and
	// are read without it: net/http sets a read deadline several times
	// per request, and every request on a connection marks it
	// authenticated again.
	authed, shortIdle atomic.Bool
}

// list is the eviction list e belongs in: nil while it carries a request
// (closing it would cut someone), else unauth or authIdle.
func (e *connEntry) list(t *connTable) *list.List {
	switch {
	case e.gone || e.phase == phaseActive || e.phase == phaseHijacked:
		return nil
	case !e.authed.Load():
		return t.unauth
	case e.phase == phaseIdle:
		return t.authIdle
	}
	return nil // authenticated, and no request yet: cannot happen
}

// connTable is the pure policy of the connection cap: who may connect, and
// whom to close to make room. No I/O, no clock.
type connTable struct {
	max, perAddr int
	total        int
	byAddr       map[string]int
	// unauth holds the connections without a key and without a request
	// running, oldest first; authIdle the authenticated keep-alive ones.
	unauth, authIdle *list.List
}

func newConnTable(maxConns int) *connTable {
	return &connTable{max: maxConns, perAddr: perAddrShare(maxConns), byAddr: map[string]int{}, unauth: list.New(), authIdle: list.New()}
}

// Why a connection was refused or closed, as metrics label it.
const (
	refusedPerAddr = "per_address"
	refusedFull    = "full"
)

// admit takes e in, or says why not. At the cap it makes room by evicting
// the oldest connection without a key, else the oldest idle keep-alive one;
// the caller closes victim. A connection running a request is never cut.
func (t *connTable) admit(e *connEntry) (victim *connEntry, refused string) {
	if !e.exempt && t.byAddr[e.addr] >= t.perAddr {
		return nil, refusedPerAddr
	}
	if t.total >= t.max {
		for _, l := range []*list.List{t.unauth, t.authIdle} {
			if f := l.Front(); f != nil {
				victim = f.Value.(*connEntry)
				break
			}
		}
		if victim == nil {
			return nil, refusedFull
		}
		t.remove(victim)
	}
	t.total++
	t.byAddr[e.addr]++
	t.relist(e)
	return victim, ""
}

// remove forgets e; it reports false when e was already gone.
func (t *connTable) remove(e *connEntry) bool {
	if e.gone {
		return false
	}
	e.gone = true
	t.relist(e)
	t.total--
	if t.byAddr[e.addr]--; t.byAddr[e.addr] <= 0 {
		delete(t.byAddr, e.addr)
	}
	return true
}

func (t *connTable) setPhase(e *connEntry, p connPhase) {
	e.phase = p
	e.shortIdle.Store(p == phaseIdle && !e.authed.Load())
	t.relist(e)
}

func (t *connTable) authenticate(e *connEntry) {
	if !e.authed.Load() {
		e.authed.Store(true)
		e.shortIdle.Store(false)
		t.relist(e)
	}
}

// relist moves e to the back of the eviction list its state belongs in
// (the back: it changed last), or out of all of them.
func (t *connTable) relist(e *connEntry) {
	want := e.list(t)
	if e.in == want && want != nil {
		want.MoveToBack(e.elem)
		return
	}
	if e.in != nil {
		e.in.Remove(e.elem)
		e.elem, e.in = nil, nil
	}
	if want != nil {
		e.elem, e.in = want.PushBack(e), want
	}
}

// limitListener applies a connTable to a listener: a refused connection is
// closed as soon as it is accepted (so the kernel's backlog drains and the
// descriptor is freed at once), a victim is closed to make room.
type limitListener struct {
	net.Listener
	log *slog.Logger

	// unauthIdle is unauthIdleTimeout (shorter in tests).
	unauthIdle time.Duration
	// member, once set, says whether an address is a cluster member's:
	// an entry node holds one connection per request in flight to each
	// hive, so members get no per-address share (the cap still holds).
	member atomic.Pointer[func(net.IP) bool]

	mu    sync.Mutex
	table *connTable
	// lastWarn spaces out the warning that the cap is reached.
	lastWarn time.Time

	open    prometheus.GaugeFunc
	refused *prometheus.CounterVec
	evicted prometheus.Counter
}

// warnEvery spaces out the warning that connections are refused or evicted:
// a flood must not become a flood of log lines.
const warnEvery = time.Minute

func newLimitListener(ln net.Listener, maxConns int, reg prometheus.Registerer, log *slog.Logger) (*limitListener, error) {
	l := &limitListener{Listener: ln, log: log, table: newConnTable(maxConns), unauthIdle: unauthIdleTimeout}
	l.open = prometheus.NewGaugeFunc(prometheus.GaugeOpts{Name: "rbee_http_connections",
		Help: "Connections open to the node's HTTP port."}, func() float64 {
		l.mu.Lock()
		defer l.mu.Unlock()
		return float64(l.table.total)
	})
	l.refused = prometheus.NewCounterVec(prometheus.CounterOpts{Name: "rbee_http_connections_refused_total",
		Help: "Connections closed as soon as accepted: their address held its share (per_address), or the cap was reached with nothing to evict (full)."}, []string{"reason"})
	l.evicted = prometheus.NewCounter(prometheus.CounterOpts{Name: "rbee_http_connections_evicted_total",
		Help: "Connections without a request running closed to make room at the cap, those without a key first."})
	for _, c := range []prometheus.Collector{l.open, l.refused, l.evicted} {
		if err := reg.Register(c); err != nil {
			return nil, err
		}
	}
	return l, nil
}

func (l *limitListener) Accept() (net.Conn, error) {
	for {
		c, err := l.Listener.Accept()
		if err != nil {
			return nil, err
		}
		e := &connEntry{phase: phaseNew}
		if ta, ok := c.RemoteAddr().(*net.TCPAddr); ok {
			e.addr, e.exempt = ta.IP.String(), ta.IP.IsLoopback()
			if f := l.member.Load(); f != nil && !e.exempt {
				e.exempt = (*f)(ta.IP)
			}
		}
		l.mu.Lock()
		victim, refused := l.table.admit(e)
		warn := (refused != "" || victim != nil) && time.Since(l.lastWarn) >= warnEvery
		if warn {
			l.lastWarn = time.Now()
		}
		total := l.table.total
		l.mu.Unlock()
		if warn {
			l.log.Warn("connection cap reached: refusing or closing idle connections, those without a key first",
				"open", total, "max_conns", l.table.max, "per_address", l.table.perAddr, "remote", e.addr, "refused", refused)
		}
		if victim != nil {
			l.evicted.Inc()
			victim.conn.closeNow()
		}
		if refused != "" {
			l.refused.WithLabelValues(refused).Inc()
			c.Close()
			continue
		}
		tc := &trackedConn{Conn: c, l: l, e: e}
		e.conn = tc
		return tc, nil
	}
}

// connState is the http.Server's ConnState hook.
func (l *limitListener) connState(c net.Conn, s http.ConnState) {
	tc := trackedOf(c)
	if tc == nil {
		return
	}
	var p connPhase
	switch s {
	case http.StateActive:
		p = phaseActive
	case http.StateIdle:
		p = phaseIdle
	case http.StateHijacked:
		p = phaseHijacked
	default:
		return // new: already so; closed: Close says so
	}
	l.mu.Lock()
	l.table.setPhase(tc.e, p)
	l.mu.Unlock()
}

// trackedConn is an accepted connection the table counts until it closes.
type trackedConn struct {
	net.Conn
	l    *limitListener
	e    *connEntry
	once sync.Once
}

// closeNow closes the connection; whoever still reads it gets an error.
func (c *trackedConn) closeNow() { _ = c.Conn.Close() }

func (c *trackedConn) Close() error {
	c.once.Do(func() {
		c.l.mu.Lock()
		c.l.table.remove(c.e)
		c.l.mu.Unlock()
	})
	return c.Conn.Close()
}

// SetReadDeadline shortens the server's keep-alive idle timeout for a
// connection without a key: net/http reports it idle, then sets this.
func (c *trackedConn) SetReadDeadline(t time.Time) error {
	if c.e.shortIdle.Load() {
		if limit := time.Now().Add(c.l.unauthIdle); t.IsZero() || t.After(limit) {
			t = limit
		}
	}
	return c.Conn.SetReadDeadline(t)
}

// authenticate marks the connection as having shown a key.
func (c *trackedConn) authenticate() {
	if c.e.authed.Load() {
		return
	}
	c.l.mu.Lock()
	c.l.table.authenticate(c.e)
	c.l.mu.Unlock()
}

// trackedOf finds the tracked connection under what the server was handed
// (sniffed, perhaps TLS).
func trackedOf(c net.Conn) *trackedConn {
	for {
		switch v := c.(type) {
		case *trackedConn:
			return v
		case *tls.Conn:
			c = v.NetConn()
		case *peekedConn:
			c = v.Conn
		default:
			return nil
		}
	}
}

type trackedConnKey struct{}

// withTrackedConn is the http.Server's ConnContext hook: handlers find their
// connection to mark it authenticated.
func withTrackedConn(ctx context.Context, c net.Conn) context.Context {
	if tc := trackedOf(c); tc != nil {
		return context.WithValue(ctx, trackedConnKey{}, tc)
	}
	return ctx
}

// markAuthenticated records that r showed a valid key, so its connection is
// no longer the first to go when the cap is reached.
func markAuthenticated(r *http.Request) {
	if tc, ok := r.Context().Value(trackedConnKey{}).(*trackedConn); ok {
		tc.authenticate()
	}
}
