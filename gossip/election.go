package gossip

import (
	"slices"
	"time"
)

// Roles a node can hold.
const (
	RoleQueen = "queen" // eligible for election
	RoleHive  = "hive"  // runs workers and reports them
)

// Status is a member's liveness as this node sees it.
type Status string

const (
	// StatusAlive includes members that missed probes but are not yet
	// declared dead (memberlist's "suspect"): one missed probe never moves
	// the queen.
	StatusAlive  Status = "alive"
	StatusLeft   Status = "left"   // left gracefully
	StatusFailed Status = "failed" // declared dead by failure detection
)

// Member is one node of the cluster as the gossip layer sees it.
type Member struct {
	Name       string    `json:"name"`
	GossipAddr string    `json:"gossip_addr"`
	HTTPAddr   string    `json:"http_addr"`
	Roles      []string  `json:"roles"`
	Priority   int       `json:"queen_priority"`
	Start      time.Time `json:"start"`
	Version    string    `json:"version"`
	Status     Status    `json:"status"`
	// Claim is set by the node that currently holds the queen seat; it lets
	// every other node keep that queen when a newcomer would otherwise rank
	// higher.
	Claim bool `json:"-"`
	// Leaving is set by a node announcing a graceful leave; it is no longer
	// eligible, so the others elect a successor before it is even gone.
	Leaving bool `json:"-"`
}

// HasRole reports whether m holds role.
func (m Member) HasRole(role string) bool { return slices.Contains(m.Roles, role) }

// Live reports whether m counts for the election.
func (m Member) Live() bool { return m.Status == StatusAlive }

// Elect picks the queen from a member list: among live queen-eligible members,
// a member that already claims the seat keeps it (a newcomer never unseats a
// live queen); otherwise, and between several claimants after a partition
// heals, the highest priority wins, then the oldest start, then the smallest
// name. It is a pure function: nodes with the same view pick the same queen.
func Elect(members []Member) (Member, bool) {
	var best Member
	found := false
	for _, m := range members {
		if !m.Live() || m.Leaving || !m.HasRole(RoleQueen) {
			continue
		}
		if !found || outranks(m, best) {
			best, found = m, true
		}
	}
	return best, found
}

// outranks reports whether a should be queen rather than b.
func outranks(a, b Member) bool {
	if a.Claim != b.Claim {
		return a.Claim
	}
	if a.Priority != b.Priority {
		return a.Priority > b.Priority
	}
	if !a.Start.Equal(b.Start) {
		return a.Start.Before(b.Start)
	}
	return a.Name < b.Name
}
