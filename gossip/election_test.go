package gossip

import (
	"fmt"
	"testing"
	"time"
)

var t0 = time.Date(2025, 1, 2, 3, 4, 5, 0, time.UTC)

// candidate is an alive queen-eligible member started at t0+startSec.
func candidate(name string, priority, startSec int) Member {
	return Member{
		Name:     name,
		Roles:    []string{RoleQueen, RoleHive},
		Priority: priority,
		Start:    t0.Add(time.Duration(startSec) * time.Second),
		Status:   StatusAlive,
	}
}

func claiming(m Member) Member { m.Claim = true; return m }

func withTerm(m Member, term uint64) Member { m.Term = term; return m }

func following(m Member, queen string) Member { m.Follows = queen; return m }
func leaving(m Member) Member                 { m.Leaving = true; return m }

func withStatus(m Member, s Status) Member { m.Status = s; return m }

func withRoles(m Member, roles ...string) Member { m.Roles = roles; return m }

type electionCase struct {
	name    string
	members []Member
	want    string // "" means no queen
}

var electionCases = []electionCase{
	{
		name: "empty list elects no one",
		want: "",
	},
	{
		name: "hive-only members are not eligible",
		members: []Member{
			withRoles(candidate("a", 10, 0), RoleHive),
			withRoles(candidate("b", 0, 1), RoleHive),
			withRoles(candidate("c", 0, 2)),
		},
		want: "",
	},
	{
		name: "a queen-role member wins over higher-priority hive-only members",
		members: []Member{
			withRoles(candidate("a", 10, 0), RoleHive),
			withRoles(candidate("b", 0, 5), RoleQueen),
		},
		want: "b",
	},
	{
		name: "highest priority wins over an older start and a smaller name",
		members: []Member{
			candidate("a", 1, 0),
			candidate("b", 5, 9),
			candidate("c", 3, 1),
		},
		want: "b",
	},
	{
		name: "negative priorities order too",
		members: []Member{
			candidate("a", -5, 0),
			candidate("b", -1, 9),
		},
		want: "b",
	},
	{
		name: "equal priority: oldest start wins over a smaller name",
		members: []Member{
			candidate("a", 2, 3),
			candidate("b", 2, 1),
			candidate("c", 2, 2),
			candidate("d", 1, 0),
		},
		want: "b",
	},
	{
		name: "equal start is compared as an instant, not by time zone",
		members: []Member{
			candidate("b", 0, 0),
			func() Member {
				m := candidate("a", 0, 0)
				m.Start = m.Start.In(time.FixedZone("UTC+5", 5*3600))
				return m
			}(),
		},
		want: "a",
	},
	{
		name: "equal priority and start: smallest name wins",
		members: []Member{
			candidate("node-c", 0, 0),
			candidate("node-a", 0, 0),
			candidate("node-b", 0, 0),
		},
		want: "node-a",
	},
	{
		name: "a single claimant keeps the seat over higher priority, older and smaller members",
		members: []Member{
			candidate("a", 9, 0),
			claiming(candidate("z", 0, 9)),
			candidate("b", 9, 0),
		},
		want: "z",
	},
	{
		name: "two claimants after a partition heals: priority decides",
		members: []Member{
			claiming(candidate("a", 1, 0)),
			claiming(candidate("b", 2, 5)),
			candidate("c", 9, 0),
		},
		want: "b",
	},
	{
		name: "two claimants with equal priority: oldest start decides",
		members: []Member{
			claiming(candidate("a", 1, 5)),
			claiming(candidate("b", 1, 2)),
			candidate("c", 9, 0),
		},
		want: "b",
	},
	{
		name: "two claimants with equal priority and start: smallest name decides",
		members: []Member{
			claiming(candidate("b", 1, 2)),
			claiming(candidate("a", 1, 2)),
			candidate("c", 9, 0),
		},
		want: "a",
	},
	{
		name: "a frozen queen waking up does not take the seat back from the queen the others follow",
		members: []Member{
			following(withTerm(claiming(candidate("a", 0, 0)), 1), "a"), // oldest, stale claim
			following(withTerm(claiming(candidate("b", 0, 5)), 2), "b"),
			following(candidate("c", 0, 6), "b"),
		},
		want: "b",
	},
	{
		name: "after a heal the side with more followers keeps its queen, even with the older term",
		members: []Member{
			following(withTerm(claiming(candidate("q", 0, 0)), 1), "q"),
			following(candidate("r", 0, 1), "q"),
			following(candidate("s", 0, 2), "q"),
			following(withTerm(claiming(candidate("a", 9, 3)), 7), "a"), // isolated, claimed alone
		},
		want: "q",
	},
	{
		name: "claimants followed equally: the higher term wins over priority",
		members: []Member{
			following(withTerm(claiming(candidate("a", 9, 0)), 3), "a"),
			following(withTerm(claiming(candidate("b", 0, 5)), 4), "b"),
		},
		want: "b",
	},
	{
		name: "followers of a departed claimant do not count",
		members: []Member{
			following(withTerm(claiming(candidate("a", 0, 0)), 1), "a"),
			withStatus(following(candidate("x", 0, 1), "b"), StatusFailed),
			withStatus(following(candidate("y", 0, 1), "b"), StatusFailed),
			following(withTerm(claiming(candidate("b", 0, 5)), 1), "b"),
		},
		want: "a",
	},
	{
		name: "a single claimant keeps the seat whoever the others follow",
		members: []Member{
			following(withTerm(claiming(candidate("a", 0, 9)), 1), "a"),
			following(candidate("b", 9, 0), "z"),
			following(candidate("c", 9, 0), "z"),
		},
		want: "a",
	},
	{
		name: "failed and left members are skipped even when they rank or claim higher",
		members: []Member{
			withStatus(claiming(candidate("a", 9, 0)), StatusFailed),
			withStatus(candidate("b", 9, 0), StatusLeft),
			candidate("c", 0, 5),
			candidate("d", 0, 6),
		},
		want: "c",
	},
	{
		name: "only departed members elects no one",
		members: []Member{
			withStatus(candidate("a", 9, 0), StatusFailed),
			withStatus(candidate("b", 9, 0), StatusLeft),
		},
		want: "",
	},
	{
		name: "a member with an unknown status is not live",
		members: []Member{
			withStatus(candidate("a", 9, 0), ""),
			candidate("b", 0, 5),
		},
		want: "b",
	},
	{
		name: "a leaving claimant is skipped and the best of the rest wins",
		members: []Member{
			leaving(claiming(candidate("a", 9, 0))),
			candidate("b", 1, 5),
			candidate("c", 1, 3),
		},
		want: "c",
	},
	{
		name: "a leaving member is skipped even when it ranks highest",
		members: []Member{
			leaving(candidate("a", 9, 0)),
			candidate("b", 0, 5),
		},
		want: "b",
	},
	{
		name: "a hive-only claimant is ignored",
		members: []Member{
			withRoles(claiming(candidate("a", 9, 0)), RoleHive),
			candidate("b", 0, 5),
		},
		want: "b",
	},
}

func TestElection(t *testing.T) {
	for _, tc := range electionCases {
		t.Run(tc.name, func(t *testing.T) {
			got, ok := Elect(tc.members)
			checkElected(t, got, ok, tc.want)
		})
	}
}

// TestElection_OrderIndependent runs every case of TestElection under every
// permutation of its input: nodes that list members in different orders must
// elect the same queen.
func TestMaxTerm(t *testing.T) {
	if got := MaxTerm([]Member{withTerm(candidate("a", 0, 0), 3), withTerm(candidate("b", 0, 0), 7), candidate("c", 0, 0)}); got != 7 {
		t.Fatalf("MaxTerm = %d, want 7", got)
	}
	if got := MaxTerm(nil); got != 0 {
		t.Fatalf("MaxTerm(nil) = %d", got)
	}
}

func TestElection_OrderIndependent(t *testing.T) {
	for _, tc := range electionCases {
		t.Run(tc.name, func(t *testing.T) {
			n := 0
			permute(tc.members, func(p []Member) {
				n++
				got, ok := Elect(p)
				if (ok && got.Name != tc.want) || (!ok && tc.want != "") {
					t.Fatalf("order %v: got %q (ok=%v), want %q", names(p), got.Name, ok, tc.want)
				}
			})
			if want := factorial(len(tc.members)); n != want {
				t.Fatalf("tried %d orders, want %d", n, want)
			}
		})
	}
}

func TestElection_NewcomerDoesNotUnseatQueen(t *testing.T) {
	queen := claiming(candidate("old", 0, 0))
	newcomer := candidate("new", 100, 60)
	newcomer.Name = "a-new" // smaller name too: it outranks the queen on everything but the claim

	got, ok := Elect([]Member{queen, newcomer})
	checkElected(t, got, ok, "old")

	// Without the claim (the queen left and came back, say) the newcomer
	// would win, so the claim is what keeps the queen seated.
	queen.Claim = false
	got, ok = Elect([]Member{queen, newcomer})
	checkElected(t, got, ok, "a-new")
}

func TestElection_ReturnsTheMemberAsGiven(t *testing.T) {
	want := candidate("a", 3, 7)
	want.HTTPAddr = "10.0.0.1:8080"
	want.GossipAddr = "10.0.0.1:7946"
	want.Version = "1.2.3"
	got, ok := Elect([]Member{candidate("b", 1, 0), want})
	if !ok {
		t.Fatal("no queen")
	}
	if got.Name != want.Name || got.HTTPAddr != want.HTTPAddr || got.GossipAddr != want.GossipAddr ||
		got.Version != want.Version || got.Priority != want.Priority || !got.Start.Equal(want.Start) {
		t.Fatalf("got %+v, want %+v", got, want)
	}
}

func TestElection_DoesNotModifyInput(t *testing.T) {
	in := []Member{candidate("c", 0, 2), claiming(candidate("b", 0, 1)), candidate("a", 1, 0)}
	before := names(in)
	Elect(in)
	if after := names(in); fmt.Sprint(after) != fmt.Sprint(before) {
		t.Fatalf("input reordered: %v, was %v", after, before)
	}
}

func checkElected(t *testing.T, got Member, ok bool, want string) {
	t.Helper()
	switch {
	case want == "" && ok:
		t.Fatalf("elected %q, want no queen", got.Name)
	case want != "" && !ok:
		t.Fatalf("no queen, want %q", want)
	case ok && got.Name != want:
		t.Fatalf("elected %q, want %q", got.Name, want)
	}
}

// permute calls f with every permutation of ms (Heap's algorithm) on a copy.
func permute(ms []Member, f func([]Member)) {
	p := append([]Member(nil), ms...)
	var gen func(k int)
	gen = func(k int) {
		if k <= 1 {
			f(p)
			return
		}
		for i := range k - 1 {
			gen(k - 1)
			if k%2 == 0 {
				p[i], p[k-1] = p[k-1], p[i]
			} else {
				p[0], p[k-1] = p[k-1], p[0]
			}
		}
		gen(k - 1)
	}
	gen(len(p))
}

func factorial(n int) int {
	f := 1
	for i := 2; i <= n; i++ {
		f *= i
	}
	return f
}

func names(ms []Member) []string {
	out := make([]string, len(ms))
	for i, m := range ms {
		out[i] = m.Name
	}
	return out
}
