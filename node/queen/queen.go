package queen

import (
	"context"
	"fmt"
	"log/slog"
	"sync"
	"time"

	"github.com/coder/websocket"
	"github.com/prometheus/client_golang/prometheus"
	"go.opentelemetry.io/otel/trace"

	"github.com/rbee/rbee/gossip"
	"github.com/rbee/rbee/scheduler"
	"github.com/rbee/rbee/wsapi"
)

// Membership is what the queen needs of the gossip layer: who is queen (and
// a channel closed when that changes), a member's API address (where entry
// nodes send the requests the queen grants on that member's workers), who is
// alive (the hives a new queen waits to hear from) and its own term.
type Membership interface {
	WatchQueen() (q gossip.Member, ok bool, changed <-chan struct{})
	Member(name string) (gossip.Member, bool)
	// LiveMembers lists the members alive now, this node included;
	// Members every member known, departed ones with their status.
	LiveMembers() []gossip.Member
	Members() []gossip.Member
	// Term is this node's election term, which its grants carry.
	Term() uint64
}

// Config is what the control plane needs of its node.
type Config struct {
	// Name is this node's; HTTPAddr its advertised API address.
	Name     string
	HTTPAddr string
	Members  Membership
	// Feed takes the feed's events.
	Feed *wsapi.Hub
	// Session is the handshake of accepted sessions: key, name, version
	// and the telemetry interval the queen asks of hives.
	Session wsapi.SessionOptions
	// HiveTTL: a hive is online, and its workers schedulable, while it
	// reported within this long; ForgetAfter drops it from the view.
	HiveTTL     time.Duration
	ForgetAfter time.Duration
	// EventInterval is the period of the feed's queen event.
	EventInterval time.Duration
	// WarmUpMax bounds how long a new queen waits for every live hive's
	// first report before it answers "unknown model" (default 10 s).
	WarmUpMax  time.Duration
	QueueLimit int
	// AffinityWait bounds the wait of a conversation's turn for the worker
	// that holds its prompt (scheduler.Config.AffinityWait).
	AffinityWait time.Duration
	// GrantAhead is how many requests each worker is granted beyond its
	// slots while all are busy (scheduler.Config.Standby; 0: none).
	GrantAhead  int
	ModelVRAMMB map[string]uint64
	// Metrics takes the queen's figures (reported only while queen).
	Metrics prometheus.Registerer
	Logger  *slog.Logger
	// Tracer makes the spans of traced lease requests (trace.go); nil:
	// tracing off.
	Tracer trace.TracerProvider
}

// schedTickInterval is how often the queen's scheduler looks at deadlines
// and reclaims: a 503 comes at most this late.
const schedTickInterval = 100 * time.Millisecond

// Queen is the control plane of one node; it acts only while the node is the
// elected queen. It is safe for concurrent use.
type Queen struct {
	cfg      Config
	log      *slog.Logger
	registry *Registry
	sessions *sessions
	// out delivers lease answers to nodes (the session table, or a test
	// double).
	out peers

	// Scheduler state, guarded by schedMu: the scheduler is pure and
	// not safe for concurrent use; nil while this node is not queen.
	schedMu sync.Mutex
	sched   *scheduler.Scheduler
	// started is closed once sched is set, and made anew when it is
	// dropped: a session waits on it (awaitScheduling).
	started chan struct{}
	// waitReportAt: when lease_wait reports last went out.
	waitReportAt time.Time
	// warm: the scheduler knows every live hive's workers. Until then an
	// unknown model waits instead of failing with 404; reported are the
	// hives heard from since this node became queen, warmBy the bound.
	warm        bool
	reported    map[string]bool
	warmBy      time.Time
	rateAt      time.Time
	rateGranted uint64
	rate        float64

	// usage is every node's usage buckets (usage.go).
	usage usageTable
	// migrations is the latest migrated streams (migrations.go).
	migrations migrationRing
	// spans are the traced lease requests' (trace.go).
	spans *leaseSpans

	closeOnce sync.Once
	done      chan struct{} // closed by CloseSessions
}

// New returns the control plane of node cfg.Name.
func New(cfg Config) (*Queen, error) {
	if cfg.Logger == nil {
		cfg.Logger = slog.New(slog.DiscardHandler)
	}
	if cfg.WarmUpMax <= 0 {
		// Hives redial a new queen at once and report within a
		// telemetry interval; one that is alive in gossip but cannot
		// reach the queen should not hold requests for unknown models
		// longer than this.
		cfg.WarmUpMax = 10 * time.Second
	}
	q := &Queen{
		cfg:      cfg,
		log:      cfg.Logger,
		registry: NewRegistry(cfg.HiveTTL, cfg.ForgetAfter),
		spans:    newLeaseSpans(cfg.Tracer),
		started:  make(chan struct{}),
		done:     make(chan struct{}),
	}
	q.sessions = newSessions(q.log)
	q.out = q.sessions
	if cfg.Metrics != nil {
		if err := cfg.Metrics.Register(&collector{q: q}); err != nil {
			return nil, fmt.Errorf("register queen metrics: %w", err)
		}
	}
	return q, nil
}

// Registry is the queen's view of the hives (empty while not queen).
func (q *Queen) Registry() *Registry { return q.registry }

// IsQueen reports whether this node is queen now.
func (q *Queen) IsQueen() bool {
	m, ok, _ := q.cfg.Members.WatchQueen()
	return ok && m.Name == q.cfg.Name
}

// Run follows the election: while this node is queen it schedules and
// publishes the queen event every interval; when it stops being queen it
// drops its sessions (naming the new queen), its scheduler and its registry,
// which would go stale. It returns when ctx ends.
func (q *Queen) Run(ctx context.Context) error {
	tick := time.NewTicker(q.cfg.EventInterval)
	defer tick.Stop()
	schedTick := time.NewTicker(schedTickInterval)
	defer schedTick.Stop()
	defer q.stopScheduling()
	wasQueen := false
	for {
		m, ok, changed := q.cfg.Members.WatchQueen()
		isQueen := ok && m.Name == q.cfg.Name
		switch {
		case isQueen && !wasQueen:
			q.log.Info("this node is queen")
			q.startScheduling(time.Now())
		case !isQueen && wasQueen:
			reason := "no longer queen"
			if ok {
				reason += ": queen is " + m.Name + " at " + m.HTTPAddr
			}
			q.log.Info("stepped down as queen", "queen", m.Name)
			q.stopScheduling()
			q.sessions.closeAll(wsapi.CloseNotQueen, reason)
			q.registry.Reset()
		}
		wasQueen = isQueen
	wait:
		for {
			select {
			case <-ctx.Done():
				return nil
			case <-changed:
				break wait
			case now := <-tick.C:
				if isQueen {
					q.publish(q.event(now))
				}
			case now := <-schedTick.C:
				if isQueen {
					q.schedTick(now)
				}
			}
		}
	}
}

// event is the feed's queen event at now.
func (q *Queen) event(now time.Time) wsapi.QueenEvent {
	ev := q.registry.Summary(now, q.cfg.Name)
	ev.Queues, ev.RequestsPerS = q.Queues(now)
	ev.Migrations = q.migrations.snapshot()
	return ev
}

// CloseSessions closes every session the queen holds, telling the nodes it is
// going away, and refuses new ones. It does not wait for the nodes' answers.
func (q *Queen) CloseSessions() {
	q.closeOnce.Do(func() {
		close(q.done)
		q.sessions.closeAll(websocket.StatusGoingAway, "queen shutting down")
	})
}

// closed reports whether CloseSessions was called.
func (q *Queen) closed() bool {
	select {
	case <-q.done:
		return true
	default:
		return false
	}
}

// Close is CloseSessions, then waits for the goroutines that close them.
// Safe to call more than once.
func (q *Queen) Close() {
	q.CloseSessions()
	q.sessions.wait()
}

func (q *Queen) publish(ev any) {
	if t, ok := ev.(*wsapi.HiveTelemetry); ok {
		q.publishTelemetry(t, 0)
		return
	}
	if !q.cfg.Feed.Active() {
		return
	}
	b, err := wsapi.Encode(ev)
	if err != nil {
		q.log.Error("encode feed event", "err", err)
		return
	}
	q.cfg.Feed.Publish(b)
}

// publishTelemetry publishes t, which arrived as size bytes (0: unknown).
// A thousand a second in a large cluster: encoded without reflection, into
// a buffer that holds it at once. The queen adds each worker's state to
// what the hive sent, so a buffer of the report's size grew, and the
// allocation it started with was garbage, for nearly every report.
func (q *Queen) publishTelemetry(t *wsapi.HiveTelemetry, size int) {
	if !q.cfg.Feed.Active() {
		return
	}
	q.cfg.Feed.Publish(t.AppendJSON(make([]byte, 0, max(2048, size+size/2+256))))
}

// memberHTTP is the API address of the member named name, "" if unknown.
func (q *Queen) memberHTTP(name string) string {
	if name == q.cfg.Name {
		return q.cfg.HTTPAddr
	}
	m, ok := q.cfg.Members.Member(name)
	if !ok {
		return ""
	}
	return m.HTTPAddr
}

// Warm reports whether this node is queen and its scheduler knows every
// live hive's workers (or waited long enough for them): what it answers
// then is the cluster's.
func (q *Queen) Warm() bool {
	q.schedMu.Lock()
	defer q.schedMu.Unlock()
	return q.sched != nil && q.warm
}
