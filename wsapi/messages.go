package wsapi

import (
	"encoding/json"
	"errors"
	"fmt"
	"strings"
	"time"
	"unicode/utf8"

	jsonv2 "github.com/go-json-experiment/json"
)

// Message type tags, snake_case as in the seed notes.
const (
	TypeHiveTelemetry = "hive_telemetry"
	TypeQueen         = "queen"
	TypeChallenge     = "challenge"
	TypeHello         = "hello"
	TypeWelcome       = "welcome"
	// Leases, over the same session (see lease.go).
	TypeLeaseRequest = "lease_request"
	TypeLeaseCancel  = "lease_cancel"
	TypeLeaseRelease = "lease_release"
	TypeLeaseGrant   = "lease_grant"
	TypeLeaseError   = "lease_error"
)

// ProtocolVersion is bumped when a message changes incompatibly. Peers with a
// different major protocol are refused at hello with a clear reason instead of
// misreading each other's messages.
const ProtocolVersion = 1

// Health marks a hive puts on a worker (ProcessStats.Health).
const (
	HealthFailing = "failing" // the hive's requests to it fail
	HealthDown    = "down"    // the hive cannot reach it (HealthReason says why)
)

// ProcessStats is one worker's telemetry: the seed's ProcessStats, field for
// field. Model is a pointer because the seed sends null for an unknown model,
// and dashboards tell "unknown" from "".
type ProcessStats struct {
	PID         uint32  `json:"pid"`
	Group       string  `json:"group"`
	Instance    string  `json:"instance"`
	CPUPct      float64 `json:"cpu_pct"`
	RSSMB       uint64  `json:"rss_mb"`
	IOReadMBs   float64 `json:"io_r_mb_s"`
	IOWriteMBs  float64 `json:"io_w_mb_s"`
	UptimeS     uint64  `json:"uptime_s"`
	GPUUtilPct  float64 `json:"gpu_util_pct"`
	VRAMMB      uint64  `json:"vram_mb"`
	TotalVRAMMB uint64  `json:"total_vram_mb"`
	Model       *string `json:"model"`
	// Models is an addition to the seed shape (omitted when empty): every
	// model the worker serves when it serves more than one (a --worker
	// Ollama serves all it has installed), Model first. Its slots serve
	// them all together.
	Models []string `json:"models,omitempty"`
	// Aliases is an addition (omitted when empty): the worker's own names
	// for the model it serves when the user named it otherwise
	// (--worker URL,model=NAME, or a catalog name for a file the worker
	// calls by its file name). Requests may use them: a client that
	// talked to llama-server directly keeps its model id.
	Aliases []string `json:"aliases,omitempty"`
	// Engine is an addition (omitted when unknown): the worker's engine
	// and its version as the worker's API tells them, "ollama 0.17.4".
	Engine string `json:"engine,omitempty"`
	// Slots is an addition to the seed shape (omitted when 0, so seed
	// messages round-trip unchanged): how many requests the worker serves
	// at once, for the scheduler.
	Slots int `json:"slots,omitempty"`
	// Health is "failing" while the hive's requests to the worker fail, or
	// "down" while the hive cannot reach a worker it did not start (a
	// --worker server); omitted when fine. The scheduler sends it nothing
	// then.
	Health string `json:"health,omitempty"`
	// HealthReason says why the worker is down, in words (omitted when
	// empty): "GET http://127.0.0.1:9/health: connection refused".
	HealthReason string `json:"health_reason,omitempty"`
	// Simulated marks figures that come from `rbee worker simulate`
	// rather than a real GPU (omitted when false).
	Simulated bool `json:"simulated,omitempty"`
	// State and StateReason are the queen's verdict (omitted when empty;
	// whatever a hive sends there is overwritten): "idle", "busy",
	// "saturated", "failing", "down" or "offline" (scheduler.State's rule), and
	// why in words. Views show them rather than derive their own.
	State       string `json:"state,omitempty"`
	StateReason string `json:"state_reason,omitempty"`
}

// WorkerID names a worker on its hive, group/instance: the name leases, the
// scheduler and the hive's lease table use.
func WorkerID(group, instance string) string { return group + "/" + instance }

// ID is the worker's WorkerID.
func (w *ProcessStats) ID() string { return WorkerID(w.Group, w.Instance) }

// GlobalWorkerID names a worker cluster-wide: hive/group/instance, as the
// queen event's worker_ids list them.
func GlobalWorkerID(hive string, w *ProcessStats) string { return hive + "/" + w.ID() }

// HiveTelemetry is what a hive pushes every second and what the feed relays.
type HiveTelemetry struct {
	Type      string         `json:"type"`
	HiveID    string         `json:"hive_id"`
	Timestamp time.Time      `json:"timestamp"`
	Workers   []ProcessStats `json:"workers"`
	// Leases is an addition to the seed shape (omitted when empty): the
	// requests this hive is serving now, so that a new queen rebuilds its
	// lease table from telemetry and a dashboard shows busy slots.
	Leases []LeaseInfo `json:"leases,omitempty"`
	// Catalog, GPUs and Managed are the model lifecycle's additions
	// (omitted when empty; see models.go): what the hive can start, its
	// GPUs, and the workers rbee started there. A new queen rebuilds
	// loads in progress from them.
	Catalog []CatalogEntry  `json:"catalog,omitempty"`
	GPUs    []GPUInfo       `json:"gpus,omitempty"`
	Managed []ManagedWorker `json:"managed,omitempty"`
	// CopyEngines is an addition (omitted when none): the engines with
	// which this hive can serve a model it copies from another hive's
	// shared catalog entry into its --models-dir. Empty: it takes no
	// copies.
	CopyEngines []string `json:"copy_engines,omitempty"`
	// ModelsDirFreeBytes is an addition (omitted without --models-dir):
	// the free space of the hive's models folder, what pulls and copies
	// may fill.
	ModelsDirFreeBytes uint64 `json:"models_dir_free_bytes,omitempty"`
}

// LeaseInfo is one request a hive is serving under a lease.
type LeaseInfo struct {
	LeaseID string `json:"lease_id"`
	// Worker is the worker's group/instance on this hive.
	Worker string    `json:"worker"`
	Model  string    `json:"model"`
	Entry  string    `json:"entry"`
	Since  time.Time `json:"since"`
	// RequestID lets a new queen answer the entry node's repeated ask
	// with the lease it already holds.
	RequestID string `json:"request_id,omitempty"`
}

// QueueStats is one model's scheduling state on the queen.
type QueueStats struct {
	Model string `json:"model"`
	// Aliases is an addition (omitted when none): other names workers
	// serve the model under (ProcessStats.Aliases), sorted.
	Aliases []string `json:"aliases,omitempty"`
	Waiting int      `json:"waiting"`
	Leases  int      `json:"leases"`
	// Slots is the total slots of the workers that serve the model now.
	Slots int `json:"slots"`
	// The model lifecycle's additions, omitted when empty. State is
	// "loaded" (a worker serves it), "loading" (a worker is starting for
	// it on LoadingHive, for LoadingMS so far), "available" (a hive can
	// start it: Hives) or "unavailable" (none may now: Reason says why).
	State       string   `json:"state,omitempty"`
	Reason      string   `json:"reason,omitempty"`
	Hives       []string `json:"hives,omitempty"`
	LoadingHive string   `json:"loading_hive,omitempty"`
	LoadingMS   int64    `json:"loading_ms,omitempty"`
	// ServiceMS is the measured time per request, ETAMS how long a new
	// request would wait for a slot now (0: no wait, or unknown).
	ServiceMS int64 `json:"service_ms,omitempty"`
	ETAMS     int64 `json:"eta_ms,omitempty"`
	// VRAMMB, VRAMSource and Facts are a hive's catalog entry for the
	// model (CatalogEntry), from the first hive by id that can start it:
	// what placement counts on and what the model's files say.
	VRAMMB     uint64      `json:"vram_mb,omitempty"`
	VRAMSource string      `json:"vram_source,omitempty"`
	Facts      *ModelFacts `json:"facts,omitempty"`
}

// QueenEvent is the queen's periodic cluster summary on the feed. QueenID is an
// addition to the seed shape (omitted when empty) so a dashboard can show which
// node is queen and notice a failover.
type QueenEvent struct {
	Type             string    `json:"type"`
	WorkersOnline    int       `json:"workers_online"`
	WorkersAvailable int       `json:"workers_available"`
	HivesOnline      int       `json:"hives_online"`
	HivesAvailable   int       `json:"hives_available"`
	WorkerIDs        []string  `json:"worker_ids"`
	HiveIDs          []string  `json:"hive_ids"`
	Timestamp        time.Time `json:"timestamp"`
	QueenID          string    `json:"queen_id,omitempty"`
	// Queues and RequestsPerS are additions (omitted when empty): each
	// model's waiting requests and leases, and the requests per second
	// the queen granted over the last interval.
	Queues       []QueueStats `json:"queues,omitempty"`
	RequestsPerS float64      `json:"requests_per_s,omitempty"`
	// Migrations is an addition (omitted when empty): the latest streams
	// the cluster moved from a worker that broke off to another, newest
	// last, at most MaxMigrations.
	Migrations []Migration `json:"migrations,omitempty"`
}

// Challenge is the queen's first message on a hive session.
type Challenge struct {
	Type     string `json:"type"`
	Nonce    string `json:"nonce"`
	Queen    string `json:"queen"`
	Version  string `json:"version"`
	Protocol int    `json:"protocol"`
	// Revision is the queen's protocol revision (see version.go); absent
	// from builds before revisions, which are revision 0.
	Revision int `json:"revision,omitempty"`
}

// Hello is the hive's answer to a Challenge. Proof is an HMAC over both nonces
// and the name, so it cannot be replayed to another session or another name.
type Hello struct {
	Type     string `json:"type"`
	Name     string `json:"name"`
	Version  string `json:"version"`
	Protocol int    `json:"protocol"`
	Nonce    string `json:"nonce"`
	Proof    string `json:"proof"`
	// Revision is the hive's protocol revision, as in Challenge.
	Revision int `json:"revision,omitempty"`
}

// Welcome accepts a session. Proof shows the hive that the queen holds the
// cluster key too, so a hive never streams telemetry to an impostor.
type Welcome struct {
	Type       string `json:"type"`
	Proof      string `json:"proof"`
	IntervalMS int    `json:"interval_ms"`
}

// Errors that say why a message was rejected; the session maps them to close
// codes (see CloseCodeFor).
var (
	ErrMalformed   = errors.New("malformed message")
	ErrUnknownType = errors.New("unknown message type")
	ErrInvalid     = errors.New("invalid value")
)

// Limits on identifiers, enforced by Validate: they end up in metadata, logs,
// metric labels and the dashboard, so they are kept short and printable.
const (
	MaxNameLen = 64
	MaxWorkers = 4096
	MaxLeases  = 65536
	// MaxWorkerModels bounds one worker's Models (an Ollama with a large
	// library is cut there by its hive).
	MaxWorkerModels = 256
	// MaxWorkerAliases bounds one worker's Aliases.
	MaxWorkerAliases = 8
	maxFieldLen      = 256
	maxModelLen      = 512
	maxReasonLen     = 1024
	maxNonceBytes    = 64
)

// Decode parses one message off the wire into its concrete type: *HiveTelemetry,
// *QueenEvent, *Challenge, *Hello or *Welcome. Unknown fields are ignored (peers
// may be newer), but an unknown type, a wrong field type or trailing garbage is
// an error wrapping ErrUnknownType or ErrMalformed. A session skips messages
// of an unknown type once the handshake is done (see Session.Read).
//
// It decodes with JSON v2 (github.com/go-json-experiment/json, the module that
// encoding/json/v2 comes from) because the queen relays a report's bytes as
// received: v2 matches names case-sensitively and refuses duplicate names and
// invalid UTF-8, so what it validated is what a browser's JSON.parse reads.
// encoding/json folds case ("HIVE_ID" fills hive_id) and lets the last of two
// equal keys win, either of which let a hive show dashboards something other
// than what passed Validate. It is also twice as fast here.
func Decode(data []byte) (any, error) {
	typ, peeked := peekType(data)
	if !peeked {
		var head struct {
			Type string `json:"type"`
		}
		if err := jsonv2.Unmarshal(data, &head); err != nil {
			return nil, fmt.Errorf("%w: %s", ErrMalformed, jsonErrText(err))
		}
		typ = head.Type
	}
	var msg any
	var got *string // the decoded type field, to check against typ
	switch typ {
	case TypeHiveTelemetry:
		m := new(HiveTelemetry)
		msg, got = m, &m.Type
	case TypeQueen:
		m := new(QueenEvent)
		msg, got = m, &m.Type
	case TypeChallenge:
		m := new(Challenge)
		msg, got = m, &m.Type
	case TypeHello:
		m := new(Hello)
		msg, got = m, &m.Type
	case TypeWelcome:
		m := new(Welcome)
		msg, got = m, &m.Type
	case TypeLeaseRequest:
		m := new(LeaseRequest)
		msg, got = m, &m.Type
	case TypeLeaseCancel:
		m := new(LeaseCancel)
		msg, got = m, &m.Type
	case TypeLeaseRelease:
		m := new(LeaseRelease)
		msg, got = m, &m.Type
	case TypeLeaseGrant:
		m := new(LeaseGrant)
		msg, got = m, &m.Type
	case TypeLeaseError:
		m := new(LeaseError)
		msg, got = m, &m.Type
	case TypeLeaseSpareRequest: // spare leases (spare.go)
		m := new(LeaseSpareRequest)
		msg, got = m, &m.Type
	case TypeLeaseSpares:
		m := new(LeaseSpares)
		msg, got = m, &m.Type
	case TypeLeaseRevoke:
		m := new(LeaseRevoke)
		msg, got = m, &m.Type
	case TypeConversations:
		m := new(Conversations)
		msg, got = m, &m.Type
	case TypeLeaseUses:
		m := new(LeaseUses)
		msg, got = m, &m.Type
	case TypeModelStart:
		m := new(ModelStart)
		msg, got = m, &m.Type
	case TypeLeaseWait:
		m := new(LeaseWait)
		msg, got = m, &m.Type
	case TypeUsageReport: // usage accounting (usage.go)
		m := new(UsageReport)
		msg, got = m, &m.Type
	case TypeMigration: // migrated streams (migration.go)
		m := new(Migration)
		msg, got = m, &m.Type
	case "":
		return nil, fmt.Errorf("%w: missing \"type\"", ErrMalformed)
	default:
		return nil, fmt.Errorf("%w %q", ErrUnknownType, truncate(typ, 40))
	}
	if err := jsonv2.Unmarshal(data, msg); err != nil {
		return nil, fmt.Errorf("%w: %s: %s", ErrMalformed, typ, jsonErrText(err))
	}
	if *got != typ {
		// A second "type" key: the last one wins in JSON decoders, so
		// refuse rather than guess which the sender meant.
		return nil, fmt.Errorf("%w: conflicting \"type\" keys", ErrMalformed)
	}
	return msg, nil
}

// peekType reads the type tag when it is the first key, as every rbee peer
// sends it, so the common case parses the message once instead of twice.
// Anything unusual (other key order, escapes, spaces inside) reports false and
// takes the general path.
func peekType(data []byte) (string, bool) {
	const prefix = `{"type":"`
	if len(data) < len(prefix) || string(data[:len(prefix)]) != prefix {
		return "", false
	}
	rest := data[len(prefix):]
	for i, c := range rest {
		switch {
		case c == '"':
			return string(rest[:i]), i > 0
		case c == '_' || (c >= 'a' && c <= 'z'):
		default:
			return "", false
		}
		if i > 40 {
			return "", false
		}
	}
	return "", false
}

// Encode marshals a message. It never fails for the types in this package; the
// error is kept for callers that pass their own values.
func Encode(msg any) ([]byte, error) {
	return json.Marshal(msg)
}

// Validate checks a telemetry message from the hive named hive: the hive may
// only report for itself, and every string must be short and printable.
func (t *HiveTelemetry) Validate(hive string) error {
	if t.HiveID != hive {
		return fmt.Errorf("%w: hive_id %q does not match session %q", ErrInvalid, truncate(t.HiveID, 40), hive)
	}
	if len(t.Workers) > MaxWorkers {
		return fmt.Errorf("%w: %d workers, at most %d", ErrInvalid, len(t.Workers), MaxWorkers)
	}
	for i := range t.Workers {
		w := &t.Workers[i]
		if err := checkLabel("group", w.Group, maxFieldLen); err != nil {
			return fmt.Errorf("worker %d: %w", i, err)
		}
		if err := checkLabel("instance", w.Instance, maxFieldLen); err != nil {
			return fmt.Errorf("worker %d: %w", i, err)
		}
		if w.Model != nil {
			if err := checkText("model", *w.Model, maxModelLen); err != nil {
				return fmt.Errorf("worker %d: %w", i, err)
			}
		}
		if len(w.Models) > MaxWorkerModels {
			return fmt.Errorf("%w: worker %d: %d models, at most %d", ErrInvalid, i, len(w.Models), MaxWorkerModels)
		}
		for _, m := range w.Models {
			if err := checkText("models", m, maxModelLen); err != nil || m == "" {
				return fmt.Errorf("worker %d: %w: models must be non-empty text", i, ErrInvalid)
			}
		}
		if len(w.Aliases) > MaxWorkerAliases {
			return fmt.Errorf("%w: worker %d: %d aliases, at most %d", ErrInvalid, i, len(w.Aliases), MaxWorkerAliases)
		}
		for _, m := range w.Aliases {
			if err := checkText("aliases", m, maxModelLen); err != nil || m == "" {
				return fmt.Errorf("worker %d: %w: aliases must be non-empty text", i, ErrInvalid)
			}
		}
		for _, f := range []struct{ name, v string }{{"health", w.Health}, {"health_reason", w.HealthReason}, {"engine", w.Engine},
			{"state", w.State}, {"state_reason", w.StateReason}} {
			if err := checkText(f.name, f.v, maxFieldLen); err != nil {
				return fmt.Errorf("worker %d: %w", i, err)
			}
		}
	}
	if len(t.Leases) > MaxLeases {
		return fmt.Errorf("%w: %d leases, at most %d", ErrInvalid, len(t.Leases), MaxLeases)
	}
	for i := range t.Leases {
		l := &t.Leases[i]
		for _, f := range []struct{ name, v string }{{"lease_id", l.LeaseID}, {"worker", l.Worker}, {"entry", l.Entry}} {
			if err := checkText(f.name, f.v, maxFieldLen); err != nil || f.v == "" {
				return fmt.Errorf("lease %d: %w: %s must be non-empty text", i, ErrInvalid, f.name)
			}
		}
		if err := checkText("model", l.Model, maxModelLen); err != nil {
			return fmt.Errorf("lease %d: %w", i, err)
		}
		if err := checkText("request_id", l.RequestID, maxFieldLen); err != nil {
			return fmt.Errorf("lease %d: %w", i, err)
		}
	}
	return t.validateModels()
}

// ValidName reports whether s can name a node or hive.
func ValidName(s string) error {
	return checkLabel("name", s, MaxNameLen)
}

func checkLabel(field, s string, max int) error {
	if s == "" {
		return fmt.Errorf("%w: empty %s", ErrInvalid, field)
	}
	if len(s) > max {
		return fmt.Errorf("%w: %s longer than %d bytes", ErrInvalid, field, max)
	}
	// JSON decoding mends bad UTF-8, but a multipart form field does not,
	// and names end up in metric labels, which must be UTF-8.
	if !utf8.ValidString(s) {
		return fmt.Errorf("%w: %s is not UTF-8", ErrInvalid, field)
	}
	for _, r := range s {
		ok := r == '-' || r == '_' || r == '.' || r == ':' || r == '@' ||
			(r >= 'a' && r <= 'z') || (r >= 'A' && r <= 'Z') || (r >= '0' && r <= '9')
		if !ok {
			return fmt.Errorf("%w: %s %q: only letters, digits and - _ . : @", ErrInvalid, field, truncate(s, 40))
		}
	}
	return nil
}

func checkText(field, s string, max int) error {
	if len(s) > max {
		return fmt.Errorf("%w: %s longer than %d bytes", ErrInvalid, field, max)
	}
	// JSON decoding mends bad UTF-8, but a multipart form field does not,
	// and names end up in metric labels, which must be UTF-8.
	if !utf8.ValidString(s) {
		return fmt.Errorf("%w: %s is not UTF-8", ErrInvalid, field)
	}
	for _, r := range s {
		if r < 0x20 || r == 0x7f {
			return fmt.Errorf("%w: %s has control characters", ErrInvalid, field)
		}
	}
	return nil
}

// jsonErrText keeps decoder errors short: they travel in close reasons, which
// WebSocket caps at 123 bytes.
func jsonErrText(err error) string {
	var se *jsonv2.SemanticError
	if errors.As(err, &se) && se.JSONPointer != "" {
		what := "invalid value"
		if se.GoType != nil {
			what = "want " + se.GoType.String()
		}
		if se.JSONKind != 0 {
			what += ", got " + se.JSONKind.String()
		}
		return fmt.Sprintf("field %q: %s", truncate(string(se.JSONPointer), 40), what)
	}
	return truncate(err.Error(), 80)
}

// truncate shortens s to about n bytes for an error or close reason, which
// must be valid UTF-8: it cuts on a character boundary and replaces invalid
// bytes that came from the peer (or from a decoder quoting them).
func truncate(s string, n int) string {
	if len(s) > n {
		for n > 0 && !utf8.RuneStart(s[n]) {
			n--
		}
		s = s[:n] + "..."
	}
	return strings.ToValidUTF8(s, "\ufffd")
}
