package queen

import (
	"testing"
	"time"

	"github.com/rbee/rbee/wsapi"
)

func usageReport(started time.Time, bs ...wsapi.UsageBucket) *wsapi.UsageReport {
	return &wsapi.UsageReport{Type: wsapi.TypeUsageReport, Started: started, Buckets: bs}
}

func ub(start int64, key string, requests, prompt, completion int64) wsapi.UsageBucket {
	return wsapi.UsageBucket{Start: start, Key: key, Model: "m", Requests: requests, PromptTokens: prompt, CompletionTokens: completion,
		Wait: []int64{requests}}
}

// total sums every bucket the queen returns.
func total(bs []wsapi.UsageBucket) (requests, prompt, completion, waits int64) {
	for _, b := range bs {
		requests += b.Requests
		prompt += b.PromptTokens
		completion += b.CompletionTokens
		for _, n := range b.Wait {
			waits += n
		}
	}
	return
}

// Two entry nodes report; a new queen gets their full state again, and
// buckets re-sent (or sent twice) replace themselves rather than add up.
func TestQueen_UsageSumsEntriesWithoutDoubleCounting(t *testing.T) {
	t0 := time.Date(2026, 1, 1, 0, 0, 0, 0, time.UTC)
	span := t0.Unix()
	e1, e2 := t0.Add(-time.Hour), t0.Add(-2*time.Hour) // the nodes' starts
	feed := func(q *Queen, now time.Time) {
		q.handle("e1", usageReport(e1, ub(span, "a", 2, 20, 10), ub(span-600, "b", 1, 5, 5)), now)
		q.handle("e2", usageReport(e2, ub(span, "a", 1, 10, 3)), now)
	}
	for _, name := range []string{"first queen", "queen after failover"} {
		t.Run(name, func(t *testing.T) {
			q := testQueen(t, &fakePeers{}, nil)
			q.startScheduling(t0)
			now := t0.Add(time.Minute)
			feed(q, now)
			// e1's bucket grew: the new figure replaces the old.
			q.handle("e1", usageReport(e1, ub(span, "a", 3, 30, 12)), now)
			// The same state sent again (a second session).
			feed(q, now)
			q.handle("e1", usageReport(e1, ub(span, "a", 3, 30, 12)), now)
			if r, p, c, w := total(q.UsageBuckets(now)); r != 5 || p != 45 || c != 20 || w != 5 {
				t.Fatalf("totals %d requests, %d+%d tokens, %d waits; want 5, 45+20, 5", r, p, c, w)
			}
			bs := q.UsageBuckets(now)
			if len(bs) != 2 || bs[1].Key != "a" || bs[1].Requests != 4 {
				t.Fatalf("buckets %+v: want a's summed across e1 and e2", bs)
			}
		})
	}
}

// A node that restarted counts from zero: its earlier start's buckets stay,
// and a node that left keeps its buckets until they age out.
func TestQueen_UsageKeepsRestartedAndDepartedNodesUntilTheyAgeOut(t *testing.T) {
	t0 := time.Date(2026, 1, 1, 0, 0, 0, 0, time.UTC)
	span := t0.Unix()
	q := testQueen(t, &fakePeers{}, nil)
	q.startScheduling(t0)
	q.handle("e1", usageReport(t0.Add(-time.Hour), ub(span, "a", 2, 20, 10)), t0)
	q.handle("e1", usageReport(t0.Add(time.Second), ub(span, "a", 1, 1, 1)), t0.Add(time.Second))
	if r, p, _, _ := total(q.UsageBuckets(t0.Add(time.Second))); r != 3 || p != 21 {
		t.Fatalf("%d requests, %d prompt tokens; want both starts' 3 and 21", r, p)
	}
	if bs := q.UsageBuckets(t0.Add(25 * time.Hour)); len(bs) != 0 {
		t.Fatalf("a day later: %+v, want nothing", bs)
	}
}

// Not queen: reports are not taken.
func TestQueen_UsageIgnoredWhileNotScheduling(t *testing.T) {
	t0 := time.Date(2026, 1, 1, 0, 0, 0, 0, time.UTC)
	q := testQueen(t, &fakePeers{}, nil)
	q.handle("e1", usageReport(t0, ub(t0.Unix(), "a", 2, 20, 10)), t0)
	if bs := q.UsageBuckets(t0); len(bs) != 0 {
		t.Fatalf("%+v", bs)
	}
}
