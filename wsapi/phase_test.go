package wsapi

import (
	"fmt"
	"testing"
	"time"
)

func TestNextReport(t *testing.T) {
	base := time.Date(2026, 12, 7, 6, 0, 0, 0, time.UTC)
	for _, tc := range []struct {
		name     string
		interval time.Duration
		after    time.Duration // now, after base (a whole multiple of every interval here)
	}{
		{"1s at the window", time.Second, 0},
		{"1s inside the window", time.Second, 7 * time.Millisecond},
		{"1s mid-period", time.Second, 500 * time.Millisecond},
		{"1s just before the next window", time.Second, 999 * time.Millisecond},
		{"250ms", 250 * time.Millisecond, 130 * time.Millisecond},
		{"5s", 5 * time.Second, 4 * time.Second},
		{"shorter than the window's resolution", 10 * time.Nanosecond, 3},
	} {
		t.Run(tc.name, func(t *testing.T) {
			window := tc.interval / ReportWindow
			for i := range 200 {
				hive := fmt.Sprintf("hive-%03d", i)
				now := base.Add(tc.after)
				got := NextReport(now, tc.interval, hive)
				if d := got.Sub(now); d < tc.interval/2 || d >= tc.interval*3/2 {
					t.Fatalf("%s: next report %v after now, want within [%v, %v)", hive, d, tc.interval/2, tc.interval*3/2)
				}
				off := got.Sub(got.Truncate(tc.interval))
				if off < 0 || (window > 0 && off >= window) || (window == 0 && off != 0) {
					t.Fatalf("%s: offset %v in its period, want under %v", hive, off, window)
				}
				// A hive keeps its offset and reports once a period
				// from then on: the report after got is one interval
				// later, whenever in between it asks.
				for _, late := range []time.Duration{0, 1, tc.interval / 3} {
					if again := NextReport(got.Add(late), tc.interval, hive); again.Sub(got) != tc.interval {
						t.Fatalf("%s: after the report at %v (asked %v later) the next is %v later, want %v", hive, got, late, again.Sub(got), tc.interval)
					}
				}
			}
		})
	}
}

func TestNextReport_HivesSpreadOverTheWindow(t *testing.T) {
	// All of them in the window, but not all at one instant: the queen
	// should see a burst it can read, not a thousand reports in one
	// microsecond.
	now := time.Date(2026, 12, 7, 6, 0, 0, 400_000_000, time.UTC)
	buckets := map[time.Duration]int{}
	for i := range 1000 {
		got := NextReport(now, time.Second, fmt.Sprintf("sim-%04d", i))
		buckets[got.Sub(got.Truncate(time.Second)).Truncate(time.Millisecond)]++
	}
	if len(buckets) != int(time.Second/ReportWindow/time.Millisecond) {
		t.Fatalf("1000 hives fell in %d distinct milliseconds, want all %d of the window: %v", len(buckets), time.Second/ReportWindow/time.Millisecond, buckets)
	}
	for ms, n := range buckets {
		if n > 40 {
			t.Errorf("%d of 1000 hives report in millisecond %v of the window", n, ms)
		}
	}
}

func TestNextReport_DefaultInterval(t *testing.T) {
	now := time.Date(2026, 12, 7, 6, 0, 0, 0, time.UTC)
	if a, b := NextReport(now, 0, "h"), NextReport(now, time.Second, "h"); !a.Equal(b) {
		t.Fatalf("interval 0 gives %v, want the 1 s default's %v", a, b)
	}
}
