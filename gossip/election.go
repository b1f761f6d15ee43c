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
	Revision   int       `json:"revision,omitempty"`
	Status     Status    `json:"status"`
	// Claim is set by the node that currently holds the queen seat; it lets
	// every other node keep that queen when a newcomer would otherwise rank
	// higher.
	Claim bool `json:"-"`
	// Term is the election term of the member's claim (its last one when
	// it no longer claims); Follows the queen it follows.
	Term    uint64 `json:"term,omitempty"`
	Follows string `json:"-"`
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
// live queen); otherwise the highest priority wins, then the oldest start,
// then the smallest name.
//
// Several claimants meet when a partition heals or a frozen queen wakes up
// after the others replaced it. Then the claimant that more live members
// follow wins (the side that kept working, not the node that was there
// first), then the higher term (the more recent election), then the order
// above. It is a pure function: nodes with the same view pick the same queen.
func Elect(members []Member) (Member, bool) {
	var followers map[string]int
	claims := 0
	for _, m := range members {
		if m.Claim && eligible(m) {
			claims++
		}
	}
	if claims > 1 {
		followers = make(map[string]int, claims)
		for _, m := range members {
			if m.Live() && m.Follows != "" {
				followers[m.Follows]++
			}
		}
	}
	var best Member
	found := false
	for _, m := range members {
		if !eligible(m) {
			continue
		}
		if !found || outranks(m, best, followers) {
			best, found = m, true
		}
	}
	return best, found
}

func eligible(m Member) bool { return m.Live() && !m.Leaving && m.HasRole(RoleQueen) }

// outranks reports whether a should be queen rather than b; followers counts
// each claimant's followers when several claim.
func outranks(a, b Member, followers map[string]int) bool {
	if a.Claim != b.Claim {
		return a.Claim
	}
	if a.Claim {
		if fa, fb := followers[a.Name], followers[b.Name]; fa != fb {
			return fa > fb
		}
		if a.Term != b.Term {
			return a.Term > b.Term
		}
	}
	if a.Priority != b.Priority {
		return a.Priority > b.Priority
	}
	if !a.Start.Equal(b.Start) {
		return a.Start.Before(b.Start)
	}
	return a.Name < b.Name
}

// MaxTerm is the highest election term among members: a grant from a queen
// whose term is lower comes from a queen that has been replaced.
func MaxTerm(members []Member) uint64 {
	var t uint64
	for _, m := range members {
		t = max(t, m.Term)
	}
	return t
}
