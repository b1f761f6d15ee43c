package gossip

import (
	"encoding/json"
	"fmt"
	"time"

	"github.com/hashicorp/memberlist"
)

// Meta is what a node tells the others about itself, carried in memberlist's
// node metadata (at most memberlist.MetaMaxSize = 512 bytes, hence the short
// JSON keys).
type Meta struct {
	HTTPAddr string    `json:"h"`
	Roles    []string  `json:"r"`
	Priority int       `json:"p"`
	Start    time.Time `json:"s"`
	Version  string    `json:"v"`
	// Revision is the node's protocol revision (wsapi.Revision), so that
	// peers and operators see a mixed cluster during an upgrade before any
	// session opens; omitted at 0, as builds before revisions send it.
	Revision int  `json:"w,omitempty"`
	Claim    bool `json:"q,omitempty"`
	// Term is the election term of this node's claim (or of its last one):
	// a claim takes a term above every term its node has seen, so terms
	// only grow, and a queen's grants carry its term.
	Term uint64 `json:"t,omitempty"`
	// Follows names the queen this node follows: among claimants after a
	// partition heals or a frozen queen wakes, the one more members follow
	// keeps the seat.
	Follows string `json:"f,omitempty"`
	// Leaving is broadcast just before a graceful leave: memberlist reports
	// a leave and a failure alike, and operators need to tell them apart.
	Leaving bool `json:"l,omitempty"`
}

func (m Meta) encode() ([]byte, error) {
	b, err := json.Marshal(m)
	if err != nil {
		return nil, fmt.Errorf("encode node metadata: %w", err)
	}
	if len(b) > memberlist.MetaMaxSize {
		return nil, fmt.Errorf("encode node metadata: %d bytes, memberlist allows %d", len(b), memberlist.MetaMaxSize)
	}
	return b, nil
}

func decodeMeta(b []byte) (Meta, error) {
	var m Meta
	if err := json.Unmarshal(b, &m); err != nil {
		return Meta{}, fmt.Errorf("decode node metadata: %w", err)
	}
	return m, nil
}

// memberFrom turns a memberlist node into a Member. A node whose metadata does
// not decode (a foreign or much newer peer) is listed but never eligible.
//
// memberlist never updates the exported Node.State (its own nodeState.State
// shadows it), so the status is the caller's: alive for Members(), left or
// failed for NotifyLeave.
func memberFrom(n *memberlist.Node, status Status) Member {
	m := Member{Name: n.Name, GossipAddr: n.Address(), Status: status}
	meta, err := decodeMeta(n.Meta)
	if err != nil {
		return m
	}
	m.HTTPAddr, m.Roles, m.Priority, m.Start, m.Version = meta.HTTPAddr, meta.Roles, meta.Priority, meta.Start, meta.Version
	m.Revision = meta.Revision
	m.Claim, m.Term, m.Follows, m.Leaving = meta.Claim, meta.Term, meta.Follows, meta.Leaving
	if status != StatusAlive && meta.Leaving {
		m.Status = StatusLeft
	}
	return m
}
