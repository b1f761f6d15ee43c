package wsapi

import (
	"fmt"

	"github.com/rbee/rbee/internal/spareid"
)

// Spare leases: an entry node asks the queen, ahead of its clients'
// requests, for a few leases on free slots of a model's workers, and starts
// a request on one of them without the round trip to the queen. The queen
// grants them only while nothing waits for the model and a slot stays free
// beside them, and takes back (lease_revoke) those not yet used as soon as a
// request has to wait; a spare lease not used within a second goes back.
const (
	TypeLeaseSpareRequest = "lease_spare_request"
	TypeLeaseSpares       = "lease_spares"
	TypeLeaseRevoke       = "lease_revoke"
)

// MaxSpares bounds the spare leases of one ask, and so of one answer.
const MaxSpares = 64

// MaxRevoke bounds the lease ids of one lease_revoke.
const MaxRevoke = 1024

// LeaseSpareRequest asks for up to Count spare leases for requests of Model
// by the tenant Key (omitted without one), whose Weight is that of the
// requests that will use them. A request with caps, a priority below
// interactive, a preferred worker or places to avoid never uses one.
type LeaseSpareRequest struct {
	Type      string  `json:"type"`
	RequestID string  `json:"request_id"`
	Model     string  `json:"model"`
	Count     int     `json:"count"`
	Key       string  `json:"key,omitempty"`
	Weight    float64 `json:"weight,omitempty"`
}

// LeaseSpares answers a LeaseSpareRequest: the leases granted, none when
// the model's requests wait or no worker has room beside them.
type LeaseSpares struct {
	Type      string       `json:"type"`
	RequestID string       `json:"request_id"`
	Grants    []LeaseGrant `json:"grants,omitempty"`
}

// LeaseRevoke takes back spare leases: the entry node releases those idle
// in its pools at once (lease_release with unused), and those in use when
// their requests end, instead of putting them back.
type LeaseRevoke struct {
	Type     string   `json:"type"`
	LeaseIDs []string `json:"lease_ids"`
}

// Validate checks a spare lease request from a peer.
func (m *LeaseSpareRequest) Validate() error {
	if err := checkText("request_id", m.RequestID, maxFieldLen); err != nil || m.RequestID == "" {
		return fmt.Errorf("%w: request_id must be 1-%d bytes of text", ErrInvalid, maxFieldLen)
	}
	if err := checkText("model", m.Model, maxModelLen); err != nil || m.Model == "" {
		return fmt.Errorf("%w: model must be 1-%d bytes of text", ErrInvalid, maxModelLen)
	}
	if m.Count < 1 || m.Count > MaxSpares {
		return fmt.Errorf("%w: count %d outside 1..%d", ErrInvalid, m.Count, MaxSpares)
	}
	if err := checkText("key", m.Key, maxFieldLen); err != nil {
		return err
	}
	if m.Weight < 0 || m.Weight > 1000 || m.Weight != m.Weight {
		return fmt.Errorf("%w: weight out of range", ErrInvalid)
	}
	return nil
}

// A spare lease serves one request after another at its entry node, each
// under its own id: the lease's id, a slash, and a number (SpareUseID).
// Hives serve and report each use under that id, and the queen counts it
// against the lease; a hive never releases a use (its entry node returns
// the lease to its pool, or releases the lease itself). Lease ids never
// hold a slash otherwise: node names cannot.

// SpareUseID is the id of use n of spare lease id.
func SpareUseID(id string, n uint64) string { return spareid.Use(id, n) }

// SpareLeaseOf returns the spare lease whose use id names, false when id
// names no use of one.
func SpareLeaseOf(id string) (string, bool) { return spareid.Lease(id) }

// TypeConversations: where conversations went on spare leases.
const TypeConversations = "conversations"

// MaxConversations bounds the entries of one Conversations message.
const MaxConversations = 1024

// Conversations tells the queen which worker served the last turn of each
// conversation that ran on a spare lease: the queen did not grant those
// turns, and a conversation's next turn, through whatever entry node, goes
// back to the worker that holds its prompt (prefix affinity).
type Conversations struct {
	Type  string              `json:"type"`
	Turns []ConversationWhere `json:"turns"`
}

// ConversationWhere is one conversation and the worker (group/instance on
// Hive) its last turn went to.
type ConversationWhere struct {
	Conversation string `json:"conversation"`
	Hive         string `json:"hive"`
	Worker       string `json:"worker"`
}

// Validate checks a conversations message from a peer.
func (m *Conversations) Validate() error {
	if len(m.Turns) > MaxConversations {
		return fmt.Errorf("%w: %d conversations, at most %d", ErrInvalid, len(m.Turns), MaxConversations)
	}
	for _, c := range m.Turns {
		if err := checkText("conversation", c.Conversation, maxFieldLen); err != nil || c.Conversation == "" {
			return fmt.Errorf("%w: conversation must be 1-%d bytes of text", ErrInvalid, maxFieldLen)
		}
		if err := ValidPlacement(c.Hive, c.Worker); err != nil {
			return err
		}
	}
	return nil
}

// TypeLeaseUses: how many requests ran on spare leases.
const TypeLeaseUses = "lease_uses"

// LeaseUses tells the queen how many requests an entry node started on
// spare leases since its last LeaseUses: the queen granted none of them,
// and counts them in the cluster's requests per second. Models says, per
// model (as clients name it), how many ended and how long they ran in all,
// which keeps the queen's time per request current.
type LeaseUses struct {
	Type   string      `json:"type"`
	Uses   int64       `json:"uses"`
	Models []ModelUses `json:"models,omitempty"`
}

// ModelUses is what ran of one model on spare leases.
type ModelUses struct {
	Model string `json:"model"`
	Ended int64  `json:"ended"`
	RanUS int64  `json:"ran_us"`
}

// Validate checks a lease_uses message from a peer.
func (m *LeaseUses) Validate() error {
	if m.Uses < 0 || m.Uses > 1<<40 {
		return fmt.Errorf("%w: uses %d out of range", ErrInvalid, m.Uses)
	}
	if len(m.Models) > MaxConversations {
		return fmt.Errorf("%w: %d models, at most %d", ErrInvalid, len(m.Models), MaxConversations)
	}
	for _, u := range m.Models {
		if err := checkText("model", u.Model, maxModelLen); err != nil || u.Model == "" {
			return fmt.Errorf("%w: model must be 1-%d bytes of text", ErrInvalid, maxModelLen)
		}
		if u.Ended < 0 || u.Ended > 1<<40 || u.RanUS < 0 {
			return fmt.Errorf("%w: ended or ran_us out of range", ErrInvalid)
		}
	}
	return nil
}
