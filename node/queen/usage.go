package queen

import (
	"cmp"
	"maps"
	"slices"
	"sync"
	"time"

	"github.com/rbee/rbee/wsapi"
)

// Usage accounting: every node sends the queen its usage buckets
// (wsapi.UsageReport), all of them on a new session and then those that
// changed. A bucket holds cumulative figures, so the queen keeps the latest
// copy of each, per node and node start, and sums them when asked: a bucket
// sent again (to a new queen, which rebuilds the cluster's usage from the
// full reports) replaces itself and is never counted twice. A node that left
// or restarted keeps its last buckets here (what it counted happened) until
// they age out of the window.

// usageWindow is how long buckets are kept: the ledger's window and the
// bucket still being filled when it began.
const usageWindow = 24*time.Hour + wsapi.UsageBucketSeconds*time.Second

// maxUsagePerNode bounds the buckets kept for one node start: a ledger's
// most (1024 key×model series, 145 buckets each) with room to spare. Past
// it, new buckets of that node are dropped.
const maxUsagePerNode = 1024 * 145

// maxUsageStarts bounds the starts kept per node name: a node restarting in
// a loop would otherwise pile up a day of its short lives.
const maxUsageStarts = 16

type usageBucketKey struct {
	start      int64
	key, model string
}

// nodeUsage is one node start's buckets.
type nodeUsage struct {
	name    string
	started time.Time
	buckets map[usageBucketKey]wsapi.UsageBucket
}

// usageTable is the queen's copy of every node's usage buckets; its zero
// value is empty and ready. It is safe for concurrent use.
type usageTable struct {
	mu    sync.Mutex
	nodes map[string]map[int64]*nodeUsage // name -> start (Unix ns) -> buckets
	// prunedAt: buckets age out by the minute, not at every report,
	// which would walk every node's buckets each time one reports.
	prunedAt time.Time
}

// usagePruneEvery is how often aged buckets are dropped.
const usagePruneEvery = time.Minute

// update takes report m from node peer.
func (u *usageTable) update(peer string, m *wsapi.UsageReport, now time.Time) {
	u.mu.Lock()
	defer u.mu.Unlock()
	if u.nodes == nil {
		u.nodes = map[string]map[int64]*nodeUsage{}
	}
	starts := u.nodes[peer]
	if starts == nil {
		starts = map[int64]*nodeUsage{}
		u.nodes[peer] = starts
	}
	id := m.Started.UnixNano()
	nu := starts[id]
	if nu == nil {
		nu = &nodeUsage{name: peer, started: m.Started, buckets: map[usageBucketKey]wsapi.UsageBucket{}}
		starts[id] = nu
		for len(starts) > maxUsageStarts {
			delete(starts, slices.Min(slices.Collect(maps.Keys(starts))))
		}
	}
	oldest := now.Add(-usageWindow).Unix()
	for _, b := range m.Buckets {
		if b.Start < oldest {
			continue
		}
		k := usageBucketKey{b.Start, b.Key, b.Model}
		if _, ok := nu.buckets[k]; !ok && len(nu.buckets) >= maxUsagePerNode {
			continue
		}
		nu.buckets[k] = b
	}
	u.pruneLocked(now)
}

// pruneLocked drops buckets that aged out, and node starts left with none.
func (u *usageTable) pruneLocked(now time.Time) {
	if now.Sub(u.prunedAt) < usagePruneEvery {
		return
	}
	u.prunedAt = now
	oldest := now.Add(-usageWindow).Unix()
	for name, starts := range u.nodes {
		for id, nu := range starts {
			for k := range nu.buckets {
				if k.start < oldest {
					delete(nu.buckets, k)
				}
			}
			if len(nu.buckets) == 0 {
				delete(starts, id)
			}
		}
		if len(starts) == 0 {
			delete(u.nodes, name)
		}
	}
}

// buckets sums every node's buckets per span, key and model.
func (u *usageTable) buckets(now time.Time) []wsapi.UsageBucket {
	u.mu.Lock()
	defer u.mu.Unlock()
	u.pruneLocked(now)
	oldest := now.Add(-usageWindow).Unix()
	sum := map[usageBucketKey]*wsapi.UsageBucket{}
	for _, starts := range u.nodes {
		for _, nu := range starts {
			for k, b := range nu.buckets {
				if k.start < oldest {
					continue
				}
				s := sum[k]
				if s == nil {
					s = &wsapi.UsageBucket{Start: b.Start, Key: b.Key, Model: b.Model}
					sum[k] = s
				}
				s.Requests += b.Requests
				s.PromptTokens += b.PromptTokens
				s.CompletionTokens += b.CompletionTokens
				s.Migrated += b.Migrated
				if len(b.Wait) > 0 && s.Wait == nil {
					s.Wait = make([]int64, wsapi.UsageWaitBins)
				}
				for i, n := range b.Wait {
					s.Wait[i] += n
				}
			}
		}
	}
	out := make([]wsapi.UsageBucket, 0, len(sum))
	for _, b := range sum {
		out = append(out, *b)
	}
	slices.SortFunc(out, func(a, b wsapi.UsageBucket) int {
		return cmp.Or(cmp.Compare(a.Start, b.Start), cmp.Compare(a.Key, b.Key), cmp.Compare(a.Model, b.Model))
	})
	return out
}

// UsageBuckets returns the cluster's usage of the last 24 hours: every
// node's buckets summed per ten-minute span, key and model (node/usage.Sum
// makes rows of them). Only the queen's are current: a new queen has them
// once its nodes sent their full reports, within seconds of its election,
// and a node that stopped being queen keeps what it had, which grows stale.
func (q *Queen) UsageBuckets(now time.Time) []wsapi.UsageBucket {
	return q.usage.buckets(now)
}
