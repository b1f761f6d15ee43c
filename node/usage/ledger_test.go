package usage

import (
	"fmt"
	"testing"
	"time"

	"github.com/rbee/rbee/wsapi"
)

// t0 is the start of a bucket.
var t0 = time.Unix(1_700_000_400, 0)

func sample(key, model string, prompt, completion int64, wait time.Duration, at time.Time) Sample {
	return Sample{Key: key, Model: model, Prompt: prompt, Completion: completion, QueueWait: wait, At: at, OK: true}
}

func TestLedger_SinceCountsOverlappingBuckets(t *testing.T) {
	l := NewLedger()
	l.Record(sample("a", "m", 10, 5, 0, t0.Add(-3*time.Hour)))
	l.Record(sample("a", "m", 1, 2, 0, t0.Add(time.Minute)))
	l.Record(sample("b", "m", 4, 4, 0, t0.Add(2*time.Minute)))
	now := t0.Add(5 * time.Minute)
	for _, tc := range []struct {
		since time.Duration
		want  []wsapi.UsageRow
	}{
		{time.Minute, []wsapi.UsageRow{{Key: "a", Model: "m", Requests: 1, PromptTokens: 1, CompletionTokens: 2, QueueWaitP50MS: 0.5, QueueWaitP99MS: 0.5},
			{Key: "b", Model: "m", Requests: 1, PromptTokens: 4, CompletionTokens: 4, QueueWaitP50MS: 0.5, QueueWaitP99MS: 0.5}}},
		{4 * time.Hour, []wsapi.UsageRow{{Key: "a", Model: "m", Requests: 2, PromptTokens: 11, CompletionTokens: 7, QueueWaitP50MS: 0.5, QueueWaitP99MS: 0.5},
			{Key: "b", Model: "m", Requests: 1, PromptTokens: 4, CompletionTokens: 4, QueueWaitP50MS: 0.5, QueueWaitP99MS: 0.5}}},
	} {
		got := l.Rows(tc.since, now)
		if fmt.Sprint(got) != fmt.Sprint(tc.want) {
			t.Errorf("since %s:\n got %+v\nwant %+v", tc.since, got, tc.want)
		}
	}
	// A day later the buckets are gone; the totals are not.
	if got := l.Rows(Window, t0.Add(25*time.Hour)); len(got) != 0 {
		t.Errorf("a day later: %+v, want nothing", got)
	}
	if got := l.Totals()[[2]string{"a", "m"}]; got != (Totals{Requests: 2, PromptTokens: 11, CompletionTokens: 7}) {
		t.Errorf("totals of a/m: %+v", got)
	}
}

func TestLedger_RingReusesSlotsAfterADay(t *testing.T) {
	l := NewLedger()
	l.Record(sample("a", "m", 1, 1, 0, t0))
	later := t0.Add(time.Duration(slots) * bucketSpan) // the same slot
	l.Record(sample("a", "m", 2, 2, 0, later))
	rows := l.Rows(Window, later)
	if len(rows) != 1 || rows[0].Requests != 1 || rows[0].PromptTokens != 2 {
		t.Fatalf("rows %+v: want only the later request", rows)
	}
	// A late sample for the old span is in the totals only.
	l.Record(sample("a", "m", 4, 4, 0, t0))
	if rows := l.Rows(Window, later); rows[0].PromptTokens != 2 {
		t.Fatalf("rows %+v: the late sample overwrote the newer bucket", rows)
	}
	if got := l.Totals()[[2]string{"a", "m"}].PromptTokens; got != 7 {
		t.Fatalf("total prompt tokens %d, want 7", got)
	}
}

func TestLedger_WaitPercentiles(t *testing.T) {
	l := NewLedger()
	for range 98 {
		l.Record(sample("a", "m", 0, 0, 3*time.Millisecond, t0)) // bin [2,4) ms
	}
	l.Record(sample("a", "m", 0, 0, 3*time.Second, t0)) // bin [2048,4096) ms
	l.Record(sample("a", "m", 0, 0, 3*time.Second, t0))
	r := l.Rows(time.Hour, t0.Add(time.Minute))[0]
	if r.QueueWaitP50MS < 2 || r.QueueWaitP50MS >= 4 {
		t.Errorf("p50 %.1f ms, want within [2, 4)", r.QueueWaitP50MS)
	}
	if r.QueueWaitP99MS < 2048 || r.QueueWaitP99MS >= 4096 {
		t.Errorf("p99 %.1f ms, want within [2048, 4096)", r.QueueWaitP99MS)
	}
}

func TestWaitBin(t *testing.T) {
	for _, tc := range []struct {
		d    time.Duration
		want int
	}{{0, 0}, {999 * time.Microsecond, 0}, {time.Millisecond, 1}, {2 * time.Millisecond, 2}, {3 * time.Millisecond, 2},
		{4 * time.Millisecond, 3}, {time.Second, 10}, {10 * time.Minute, waitBins - 1}, {time.Hour, waitBins - 1}} {
		if got := waitBin(tc.d); got != tc.want {
			t.Errorf("waitBin(%s) = %d, want %d", tc.d, got, tc.want)
		}
	}
}

func TestLedger_BoundedSeries(t *testing.T) {
	l := NewLedger()
	for i := range MaxSeries + 10 {
		l.Record(sample(fmt.Sprint("k", i), "m", 1, 1, 0, t0))
	}
	tot := l.Totals()
	if len(tot) != MaxSeries+1 {
		t.Fatalf("%d series, want %d and one for the rest", len(tot), MaxSeries+1)
	}
	if got := tot[[2]string{Other, Other}].Requests; got != 10 {
		t.Fatalf("%s counted %d requests, want 10", Other, got)
	}
}

func TestLedger_ReportSendsChangesAndAllOnNewSession(t *testing.T) {
	l := NewLedger()
	started := t0.Add(-time.Hour)
	if r := l.Report(started, false, t0); r != nil {
		t.Fatalf("empty ledger reported %+v", r)
	}
	l.Record(sample("a", "m", 1, 1, 0, t0))
	l.Record(sample("b", "m", 1, 1, 0, t0.Add(-time.Hour)))
	all := l.Report(started, true, t0)
	if len(all) != 1 || len(all[0].Buckets) != 2 || all[0].Type != wsapi.TypeUsageReport || !all[0].Started.Equal(started) {
		t.Fatalf("full report %+v, want both buckets", all)
	}
	if err := all[0].Validate(); err != nil {
		t.Fatal(err)
	}
	if r := l.Report(started, false, t0); r != nil {
		t.Fatalf("nothing changed, but reported %+v", r)
	}
	l.Record(sample("a", "m", 2, 2, 0, t0.Add(time.Second)))
	ch := l.Report(started, false, t0.Add(time.Second))
	if len(ch) != 1 || len(ch[0].Buckets) != 1 || ch[0].Buckets[0].Requests != 2 || ch[0].Buckets[0].PromptTokens != 3 {
		t.Fatalf("changes %+v, want a/m's bucket with its cumulative figures", ch)
	}
}

func TestLedger_ReportChunks(t *testing.T) {
	l := NewLedger()
	for i := range 50 {
		for j := range 100 {
			l.Record(sample(fmt.Sprint("k", i), "m", 1, 1, 0, t0.Add(-time.Duration(j)*bucketSpan)))
		}
	}
	rs := l.Report(t0, true, t0)
	n := 0
	for _, r := range rs {
		if len(r.Buckets) > reportBuckets {
			t.Fatalf("report of %d buckets", len(r.Buckets))
		}
		n += len(r.Buckets)
	}
	if want := (5000 + reportBuckets - 1) / reportBuckets; n != 5000 || len(rs) != want {
		t.Fatalf("%d buckets in %d reports, want 5000 in %d", n, len(rs), want)
	}
}
