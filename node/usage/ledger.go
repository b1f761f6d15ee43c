package usage

import (
	"cmp"
	"slices"
	"sync"
	"time"

	"github.com/rbee/rbee/wsapi"
)

// Window is how far back the buckets reach: a since longer than this is
// answered for this long.
const Window = wsapi.UsageWindow

// bucketSpan is one bucket's span.
const bucketSpan = wsapi.UsageBucketSeconds * time.Second

// slots is the ring of buckets a series keeps: a day's worth and one more,
// so that the oldest bucket a 24-hour window overlaps is still there.
const slots = int(Window/bucketSpan) + 1

// MaxSeries bounds the key×model pairs a ledger tracks. A bucket takes about
// 200 bytes (four counters and 21 wait bins), so a series (its ring of 145
// buckets and its totals) takes about 29 KiB, and a full ledger about 29 MiB.
// Keys come from the API keys file and models are those served, so real
// clusters stay far below; past the bound, new pairs are counted as
// Other/Other rather than dropped.
const MaxSeries = 1024

// Other names the key and model of pairs counted past MaxSeries.
const Other = "(other)"

// Sample is one request an entry node answered: what the proxy hands the
// ledger at the end of every request.
type Sample struct {
	// Key is the API key's name ("-" without one); Model the model as
	// served.
	Key, Model string
	// Prompt and Completion are the tokens the answer reported (0 when
	// it reported none).
	Prompt, Completion int64
	// QueueWait is from the request's arrival to its lease.
	QueueWait time.Duration
	At        time.Time
	// OK: the worker answered 2xx or 3xx and the answer reached the
	// client whole.
	OK bool
	// Migrations counts the times the answer was continued on another
	// worker after its worker broke off (node/proxy/migrate.go).
	Migrations int
}

// Totals are a series' figures since the node started.
type Totals struct {
	Requests         int64
	PromptTokens     int64
	CompletionTokens int64
}

type seriesKey struct{ key, model string }

// bucket is one series' span of bucketSpan starting at start (Unix seconds;
// 0: unused).
type bucket struct {
	start                        int64
	requests, prompt, completion int64
	migrated                     int64 // requests migrated at least once
	wait                         [waitBins]int64
}

type series struct {
	total   Totals
	buckets [slots]bucket
}

type dirtyKey struct {
	series seriesKey
	start  int64
}

// Ledger is one node's usage: the data plane records every answered request
// in it. It is safe
// for concurrent use.
type Ledger struct {
	mu     sync.Mutex
	series map[seriesKey]*series
	// dirty: buckets changed since the last report.
	dirty map[dirtyKey]struct{}
}

// NewLedger returns an empty ledger.
func NewLedger() *Ledger {
	return &Ledger{series: map[seriesKey]*series{}, dirty: map[dirtyKey]struct{}{}}
}

// Record counts one request the node answered as entry node.
func (l *Ledger) Record(s Sample) {
	k := seriesKey{s.Key, s.Model}
	start := bucketStart(s.At)
	l.mu.Lock()
	defer l.mu.Unlock()
	sr := l.series[k]
	if sr == nil {
		if len(l.series) >= MaxSeries {
			k = seriesKey{Other, Other}
			sr = l.series[k]
		}
		if sr == nil {
			sr = &series{}
			l.series[k] = sr
		}
	}
	prompt, completion := max(s.Prompt, 0), max(s.Completion, 0)
	sr.total.Requests++
	sr.total.PromptTokens += prompt
	sr.total.CompletionTokens += completion
	b := &sr.buckets[slotOf(start)]
	if b.start != start {
		if b.start > start {
			return // older than the ring reaches: in the totals only
		}
		*b = bucket{start: start}
	}
	b.requests++
	if s.Migrations > 0 {
		b.migrated++
	}
	b.prompt += prompt
	b.completion += completion
	b.wait[waitBin(s.QueueWait)]++
	l.dirty[dirtyKey{k, start}] = struct{}{}
}

// Totals returns each key and model's figures since the node started.
func (l *Ledger) Totals() map[[2]string]Totals {
	l.mu.Lock()
	defer l.mu.Unlock()
	out := make(map[[2]string]Totals, len(l.series))
	for k, sr := range l.series {
		out[[2]string{k.key, k.model}] = sr.total
	}
	return out
}

// Rows sums the buckets that overlap the since before now.
func (l *Ledger) Rows(since time.Duration, now time.Time) []wsapi.UsageRow {
	return Sum(l.Buckets(now), since, now)
}

// Buckets returns every bucket of the last Window.
func (l *Ledger) Buckets(now time.Time) []wsapi.UsageBucket {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.bucketsLocked(now)
}

func (l *Ledger) bucketsLocked(now time.Time) []wsapi.UsageBucket {
	oldest := bucketStart(now.Add(-Window))
	var out []wsapi.UsageBucket
	for k, sr := range l.series {
		for i := range sr.buckets {
			if b := &sr.buckets[i]; b.start != 0 && b.start >= oldest {
				out = append(out, b.wire(k))
			}
		}
	}
	return out
}

// reportBuckets is how many buckets one report holds: at most about 800
// bytes each (a 512-byte model name, a full histogram), so a report stays
// under 1 MiB, well within the session's read limit.
const reportBuckets = 1024

// Report returns the usage reports to send the queen: every bucket of the
// last Window when full (a new session), else those that changed since the
// last report; nil when there is nothing to send. Each report holds at most
// wsapi.MaxUsageBuckets buckets.
func (l *Ledger) Report(started time.Time, full bool, now time.Time) []*wsapi.UsageReport {
	var bs []wsapi.UsageBucket
	if full {
		// One lock: a Record between the snapshot and the clear would
		// be in neither.
		l.mu.Lock()
		bs = l.bucketsLocked(now)
		clear(l.dirty)
		l.mu.Unlock()
	} else {
		l.mu.Lock()
		for d := range l.dirty {
			sr := l.series[d.series]
			if b := &sr.buckets[slotOf(d.start)]; b.start == d.start {
				bs = append(bs, b.wire(d.series))
			}
		}
		clear(l.dirty)
		l.mu.Unlock()
	}
	if len(bs) == 0 {
		return nil
	}
	// Oldest first, so that a session that breaks midway has sent the
	// buckets that will not change again.
	slices.SortFunc(bs, func(a, b wsapi.UsageBucket) int {
		return cmp.Or(cmp.Compare(a.Start, b.Start), cmp.Compare(a.Key, b.Key), cmp.Compare(a.Model, b.Model))
	})
	var out []*wsapi.UsageReport
	for chunk := range slices.Chunk(bs, reportBuckets) {
		out = append(out, &wsapi.UsageReport{Type: wsapi.TypeUsageReport, Started: started.UTC(), Buckets: chunk})
	}
	return out
}

func (b *bucket) wire(k seriesKey) wsapi.UsageBucket {
	w := wsapi.UsageBucket{Start: b.start, Key: k.key, Model: k.model, Requests: b.requests, Migrated: b.migrated,
		PromptTokens: b.prompt, CompletionTokens: b.completion}
	for _, n := range b.wait {
		if n != 0 {
			w.Wait = append([]int64(nil), b.wait[:]...)
			break
		}
	}
	return w
}

// bucketStart is the start of the bucket t falls in, Unix seconds.
func bucketStart(t time.Time) int64 {
	s := t.Unix()
	return s - s%wsapi.UsageBucketSeconds
}

func slotOf(start int64) int {
	return int(start/wsapi.UsageBucketSeconds) % slots
}
