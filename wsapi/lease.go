package wsapi

import (
	"fmt"
	"strings"
	"time"
)

// Lease messages travel on the hive session, which every node keeps open to
// the queen: an entry node asks for a lease (lease_request) and waits in the
// queen's queue; the queen answers lease_grant or lease_error. A hive, whose
// worker finished a request, returns the slot (lease_release); so does an
// entry node that got a grant for a request its client abandoned.

// LeaseRequest asks the queen for one slot of a worker serving Model.
type LeaseRequest struct {
	Type      string `json:"type"`
	RequestID string `json:"request_id"`
	Model     string `json:"model"`
	// VRAMMB is the free VRAM the request needs (0: the model's
	// configured figure).
	VRAMMB uint64 `json:"vram_mb,omitempty"`
	// WaitMS is how long the request may wait for a slot.
	WaitMS int64 `json:"wait_ms"`
	// Hive and Worker, when set (both or neither), ask for that one
	// worker (group/instance on Hive): a Responses API follow-up must
	// reach the worker that holds the previous response. The queen
	// waits for that worker's slot; when the worker is gone (or fails,
	// or serves another model) it grants any worker instead.
	Hive   string `json:"hive,omitempty"`
	Worker string `json:"worker,omitempty"`
	// Progress asks the queen for lease_wait reports, once a second,
	// while the request waits (a streaming client gets keep-alive
	// comments from them).
	Progress bool `json:"progress,omitempty"`
	// The API key's tenant (omitted without one): its name (never the
	// key), priority (PriorityBatch, or "" for interactive), weight among its
	// class, caps (0: none), and how long the client's request has waited
	// already (a request asked again after a failover keeps its age).
	Key           string  `json:"key,omitempty"`
	Priority      string  `json:"priority,omitempty"`
	Weight        float64 `json:"weight,omitempty"`
	MaxConcurrent int     `json:"max_concurrent,omitempty"`
	PerMinute     int     `json:"per_minute,omitempty"`
	WaitedMS      int64   `json:"waited_ms,omitempty"`
	// Conversation names the conversation the request continues (a
	// session id, the user field, or a hash of its start), for prefix
	// affinity; never the text itself.
	Conversation string `json:"conversation,omitempty"`
	// Avoid lists where the request must not go (an addition; a queen
	// before it grants any worker): the workers that broke off its
	// answer, and the hives this entry node could not reach, so that a
	// migrated stream's continuation (and a retry) goes elsewhere. A
	// Placement with no Worker avoids the whole hive.
	Avoid []Placement `json:"avoid,omitempty"`
	// Elsewhere lists hives the request would rather not go to (an
	// addition): the hive of a worker that broke off its answer, which
	// may fail the next one too. A worker there is granted only when no
	// worker on another hive can take the request at once.
	Elsewhere []string `json:"elsewhere,omitempty"`
	// Trace is the W3C traceparent of the entry node's wait for the
	// lease (an addition; a queen before it ignores it), so that the
	// queen's span joins the request's trace. Empty: not traced.
	Trace string `json:"trace,omitempty"`
}

// Placement names a hive, or a worker (group/instance) on it.
type Placement struct {
	Hive   string `json:"hive"`
	Worker string `json:"worker,omitempty"`
}

// MaxAvoid bounds LeaseRequest.Avoid: a request is migrated or retried a
// few times, never more.
const MaxAvoid = 16

// PriorityBatch is LeaseRequest.Priority for a batch tenant's request, which
// waits behind every interactive one; "" is interactive.
const PriorityBatch = "batch"

// LeaseCancel withdraws a waiting request.
type LeaseCancel struct {
	Type      string `json:"type"`
	RequestID string `json:"request_id"`
}

// LeaseRelease returns a lease's slot.
type LeaseRelease struct {
	Type    string `json:"type"`
	LeaseID string `json:"lease_id"`
	// For a spare lease (spare.go), additions: Unused says it goes back
	// unused; otherwise RanUS is how long its request ran, in
	// microseconds (not how long
	// the lease waited at the entry node first), and Conversation the
	// conversation that request continued, which the queen learns here
	// since it did not see the request.
	Unused       bool   `json:"unused,omitempty"`
	RanUS        int64  `json:"ran_us,omitempty"`
	Conversation string `json:"conversation,omitempty"`
}

// LeaseGrant tells the entry node where to send the request: the hive's API
// address and the worker's group/instance on it.
type LeaseGrant struct {
	Type      string `json:"type"`
	RequestID string `json:"request_id"`
	LeaseID   string `json:"lease_id"`
	Hive      string `json:"hive"`
	HiveAddr  string `json:"hive_addr"`
	Worker    string `json:"worker"`
	Model     string `json:"model"`
	// Term is the granting queen's election term: a hive refuses a grant
	// whose term is below the highest it knows, which comes from a queen
	// that has been replaced (frozen, or cut off) and does not know it yet.
	Term uint64 `json:"term,omitempty"`
	// Standby: every slot of the worker was leased when it was granted
	// (the queen grants ahead, --grant-ahead); the hive holds the request
	// until one frees.
	Standby bool `json:"standby,omitempty"`
	// Spare: granted ahead of any request (spare.go); RequestID names
	// the ask, and the entry node sends its own request's id to the hive.
	Spare bool `json:"spare,omitempty"`
}

// LeaseError refuses a request with the HTTP status the client gets.
type LeaseError struct {
	Type         string `json:"type"`
	RequestID    string `json:"request_id"`
	Status       int    `json:"status"`
	ErrorType    string `json:"error_type"`
	Message      string `json:"message"`
	RetryAfterMS int64  `json:"retry_after_ms,omitempty"`
	// Model is the name the cluster serves the request's model under, ""
	// when nothing answers to it: the entry node labels its metrics with
	// it rather than with the client's spelling.
	Model string `json:"model,omitempty"`
}

// MaxWait bounds a lease request's wait: longer than any sane client timeout.
const MaxWait = 10 * time.Minute

// ValidModel reports whether s can name a model in a lease request: 1 to 512
// bytes, no control characters. Entry nodes check a client's model with it
// before asking, since the queen drops a session that sends it a bad one.
func ValidModel(s string) error {
	if s == "" {
		return fmt.Errorf("%w: empty model", ErrInvalid)
	}
	return checkText("model", s, maxModelLen)
}

// Validate checks a lease request from a peer.
func (m *LeaseRequest) Validate() error {
	if err := checkText("request_id", m.RequestID, maxFieldLen); err != nil || m.RequestID == "" {
		return fmt.Errorf("%w: request_id must be 1-%d bytes of text", ErrInvalid, maxFieldLen)
	}
	if err := checkText("model", m.Model, maxModelLen); err != nil || m.Model == "" {
		return fmt.Errorf("%w: model must be 1-%d bytes of text", ErrInvalid, maxModelLen)
	}
	if m.WaitMS < 0 || m.WaitMS > MaxWait.Milliseconds() {
		return fmt.Errorf("%w: wait_ms %d outside 0..%d", ErrInvalid, m.WaitMS, MaxWait.Milliseconds())
	}
	for _, f := range []struct{ name, v string }{{"key", m.Key}, {"priority", m.Priority}, {"conversation", m.Conversation}, {"trace", m.Trace}} {
		if err := checkText(f.name, f.v, maxFieldLen); err != nil {
			return err
		}
	}
	if m.Weight < 0 || m.Weight > 1000 || m.Weight != m.Weight || m.MaxConcurrent < 0 || m.PerMinute < 0 || m.WaitedMS < 0 {
		return fmt.Errorf("%w: weight, caps or waited_ms out of range", ErrInvalid)
	}
	if len(m.Avoid) > MaxAvoid || len(m.Elsewhere) > MaxAvoid {
		return fmt.Errorf("%w: %d places to avoid and %d hives to shun, at most %d each", ErrInvalid, len(m.Avoid), len(m.Elsewhere), MaxAvoid)
	}
	for _, h := range m.Elsewhere {
		if err := ValidName(h); err != nil {
			return fmt.Errorf("hive to shun: %w", err)
		}
	}
	for _, a := range m.Avoid {
		if a.Worker == "" {
			if err := ValidName(a.Hive); err != nil {
				return fmt.Errorf("avoided hive: %w", err)
			}
		} else if err := ValidPlacement(a.Hive, a.Worker); err != nil {
			return fmt.Errorf("avoided worker: %w", err)
		}
	}
	if m.Hive == "" && m.Worker == "" {
		return nil
	}
	return ValidPlacement(m.Hive, m.Worker)
}

// ValidPlacement reports whether hive and worker (group/instance) can name
// the worker a lease request asks for. Entry nodes check a preference with
// it before asking, since the queen drops a session that sends a bad one.
func ValidPlacement(hive, worker string) error {
	if err := ValidName(hive); err != nil {
		return fmt.Errorf("preferred hive: %w", err)
	}
	group, instance, ok := strings.Cut(worker, "/")
	if !ok {
		return fmt.Errorf("%w: preferred worker %q is not group/instance", ErrInvalid, truncate(worker, 40))
	}
	if err := checkLabel("worker group", group, maxFieldLen); err != nil {
		return err
	}
	return checkLabel("worker instance", instance, maxFieldLen)
}

// Validate checks a cancel from a peer.
func (m *LeaseCancel) Validate() error {
	if err := checkText("request_id", m.RequestID, maxFieldLen); err != nil || m.RequestID == "" {
		return fmt.Errorf("%w: request_id must be 1-%d bytes of text", ErrInvalid, maxFieldLen)
	}
	return nil
}

// Validate checks a release from a peer.
func (m *LeaseRelease) Validate() error {
	if err := checkText("lease_id", m.LeaseID, maxFieldLen); err != nil || m.LeaseID == "" {
		return fmt.Errorf("%w: lease_id must be 1-%d bytes of text", ErrInvalid, maxFieldLen)
	}
	if m.RanUS < 0 {
		return fmt.Errorf("%w: ran_us %d is negative", ErrInvalid, m.RanUS)
	}
	return checkText("conversation", m.Conversation, maxFieldLen)
}
