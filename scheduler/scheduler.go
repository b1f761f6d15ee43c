package scheduler

import "time"

// Scheduler holds workers, waiting requests and leases.
type Scheduler struct {
	cfg     Config
	workers map[string]*worker            // by id
	byHive  map[string]map[string]*worker // hive -> name -> worker
	byKey   map[string][]*worker          // model key -> workers, a heap by indexLess (index.go)
	queues  map[string]*queue             // request key -> FIFO
	pinned  map[string]*queue             // worker id -> FIFO of requests for it alone
	waiting map[string]*waiting           // by request id
	leases  map[string]*Lease             // by id
	hiveLs  map[string]map[string]*Lease  // hive -> id -> lease
	byReq   map[string]string             // request id -> lease id
	hiveAt  map[string]time.Time          // last report per hive
	seq     uint64
	granted uint64
	// warm is false until the queen has heard from its hives: until then
	// an unknown model waits instead of failing with 404.
	warm bool
	// gone: models whose last hive departed, and why (see HiveGone).
	gone map[string]goneModel

	// The model lifecycle (lifecycle.go, placement.go): each hive's
	// catalog, GPUs and workers rbee started; starts sent and not yet
	// reported; recent starts per model key; workers chosen for eviction
	// (until when); each model key's service time per lease (waits.go).
	models   map[string]*hiveModels
	starts   map[string]*pendingStart
	startLog map[string][]time.Time
	evicting map[string]time.Time
	service  map[string]time.Duration

	// keyUse: each key's requests now and lately, for its caps (caps.go).
	keyUse map[string]*keyUse
	// convs: each conversation's last worker (affinity.go), and the
	// order they came in, to forget the oldest.
	convs     map[string]string
	convOrder []string
	// spares: the spare leases out (spare.go); revocable: those of each
	// model key not yet asked back (revoked or orphaned), so that a
	// request that waits finds its model's without a scan of every
	// spare lease; revokes: those to take back, by entry node.
	spares    map[string]*Lease
	revocable map[string]map[string]*Lease
	revokes   map[string][]string
	// scanOnly makes pick scan every worker, as before the index: the
	// benchmark's baseline.
	scanOnly bool
}

// Config tunes the scheduler; zero values take the defaults below.
type Config struct {
	// QueueLimit bounds each model's waiting requests (default 1024).
	QueueLimit int
	// StaleAfter: a worker whose hive has not reported for this long is
	// not given new requests (default 3 s).
	StaleAfter time.Duration
	// ForgetAfter drops a silent hive's workers and their leases
	// (default 30 s).
	ForgetAfter time.Duration
	// SaturatedPct: a worker this busy on the GPU while rbee holds no
	// lease on it is busy with work outside rbee (default 90).
	SaturatedPct float64
	// ModelVRAMMB is the free VRAM one request of a model needs, by model
	// name as requested or served (default: none needed).
	ModelVRAMMB map[string]uint64
	// LeaseStartTimeout reclaims a granted lease that no hive has listed
	// by then: its entry node vanished before it reached the hive
	// (default 10 s).
	LeaseStartTimeout time.Duration
	// LeasePrefix makes lease ids unique across queens.
	LeasePrefix string
	// RetryAfter is what a 429 tells the client (default 1 s).
	RetryAfter time.Duration
	// AgingAfter: a batch request that waited this long goes before
	// interactive ones (default DefaultAgingAfter).
	AgingAfter time.Duration
	// AffinityWait bounds how long a conversation's turn waits for the
	// worker that holds its prompt (default DefaultAffinityWait); a
	// negative one turns affinity off (the least-loaded worker serves
	// every turn, as before it).
	AffinityWait time.Duration
	// Standby is how many requests each worker may be granted beyond its
	// slots (default 0: none; negative: none, also under tests). Such a standby grant waits at the worker's
	// hive and starts the moment a slot there frees, instead of after the
	// release has reached the queen and the next grant the hive: for
	// short requests that round trip is the cluster's throughput. It is
	// made only when no worker the request may use has a free slot, and
	// only for a model whose requests end within StandbyBelow.
	Standby int
	// StandbyBelow: a model's measured service time per lease must be
	// below this for standby grants (default DefaultStandbyBelow). A
	// longer request gains nothing from them, and one granted ahead waits
	// for the next slot of its worker rather than the first of any.
	StandbyBelow time.Duration
}

// testHookStandby is the Standby of a scheduler whose Config leaves it 0:
// this package's tests run every test again with standby grants, which
// must keep every rule the tests check.
var testHookStandby int

// DefaultStandbyBelow is Config.StandbyBelow's default.
const DefaultStandbyBelow = time.Second

func (c Config) withDefaults() Config {
	if c.QueueLimit <= 0 {
		c.QueueLimit = 1024
	}
	if c.StaleAfter <= 0 {
		c.StaleAfter = 3 * time.Second
	}
	if c.ForgetAfter <= 0 {
		c.ForgetAfter = 30 * time.Second
	}
	if c.SaturatedPct <= 0 {
		c.SaturatedPct = DefaultSaturatedPct
	}
	if c.LeaseStartTimeout <= 0 {
		c.LeaseStartTimeout = 10 * time.Second
	}
	if c.RetryAfter <= 0 {
		c.RetryAfter = time.Second
	}
	if c.AgingAfter <= 0 {
		c.AgingAfter = DefaultAgingAfter
	}
	if c.Standby == 0 {
		c.Standby = testHookStandby
	}
	c.Standby = max(c.Standby, 0)
	if c.StandbyBelow <= 0 {
		c.StandbyBelow = DefaultStandbyBelow
	}
	if c.AffinityWait == 0 {
		c.AffinityWait = DefaultAffinityWait
	}
	return c
}

// New returns an empty scheduler.
func New(cfg Config) *Scheduler {
	return &Scheduler{
		cfg:     cfg.withDefaults(),
		workers: make(map[string]*worker),
		byHive:  make(map[string]map[string]*worker),
		byKey:   make(map[string][]*worker),
		queues:  make(map[string]*queue),
		pinned:  make(map[string]*queue),
		waiting: make(map[string]*waiting),
		leases:  make(map[string]*Lease),
		hiveLs:  make(map[string]map[string]*Lease),
		byReq:   make(map[string]string),
		hiveAt:  make(map[string]time.Time),

		models:   make(map[string]*hiveModels),
		starts:   make(map[string]*pendingStart),
		startLog: make(map[string][]time.Time),
		evicting: make(map[string]time.Time),
		service:  make(map[string]time.Duration),
	}
}

// SetWarm tells the scheduler whether it knows the cluster's workers: a new
// queen waits a telemetry round before it answers "unknown model".
func (s *Scheduler) SetWarm(warm bool) { s.warm = warm }

// Granted counts the leases granted so far, and the requests entry nodes
// said they started on spare leases (NoteUses), which are not among them.
func (s *Scheduler) Granted() uint64 { return s.granted }
