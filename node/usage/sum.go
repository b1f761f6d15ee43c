package usage

import (
	"cmp"
	"math"
	"slices"
	"time"

	"github.com/rbee/rbee/wsapi"
)

// Sum adds up, per key and model, the buckets that overlap the since before
// now (a since beyond Window is taken as Window). Buckets are ten minutes
// long, so the span is rounded out to whole buckets: since=1h covers
// between 60 and 70 minutes. Rows come sorted by key, then model.
func Sum(buckets []wsapi.UsageBucket, since time.Duration, now time.Time) []wsapi.UsageRow {
	since = min(since, Window)
	// A bucket overlaps (now-since, now] when it ends after now-since.
	from := now.Add(-since).Unix() - wsapi.UsageBucketSeconds
	type acc struct {
		row  wsapi.UsageRow
		wait [waitBins]int64
	}
	accs := map[seriesKey]*acc{}
	for i := range buckets {
		b := &buckets[i]
		if b.Start <= from || b.Start > now.Unix() {
			continue
		}
		k := seriesKey{b.Key, b.Model}
		a := accs[k]
		if a == nil {
			a = &acc{row: wsapi.UsageRow{Key: b.Key, Model: b.Model}}
			accs[k] = a
		}
		a.row.Requests += b.Requests
		a.row.PromptTokens += b.PromptTokens
		a.row.CompletionTokens += b.CompletionTokens
		a.row.Migrated += b.Migrated
		for j, n := range b.Wait {
			if j < waitBins {
				a.wait[j] += n
			}
		}
	}
	out := make([]wsapi.UsageRow, 0, len(accs))
	for _, a := range accs {
		a.row.QueueWaitP50MS = round1(percentileMS(&a.wait, 0.50))
		a.row.QueueWaitP99MS = round1(percentileMS(&a.wait, 0.99))
		out = append(out, a.row)
	}
	slices.SortFunc(out, func(a, b wsapi.UsageRow) int { return cmp.Or(cmp.Compare(a.Key, b.Key), cmp.Compare(a.Model, b.Model)) })
	return out
}

func round1(x float64) float64 { return math.Round(x*10) / 10 }
