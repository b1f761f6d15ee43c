package wsapi

import (
	"hash/fnv"
	"time"
)

// ReportWindow is the share of the telemetry interval over which hives
// spread their reports: all of them land in the first tenth of each period
// (100 ms of a second), each hive at its own offset in it.
//
// Why in phase: the queen's cost per report is mostly waking up for it. A
// report that arrives alone finds the queen idle, and costs an epoll wait,
// a thread wake-up, a goroutine switch and the spinning that follows; a
// report that arrives while the queen is already reading others costs
// little more than its read and decode. With 1,000 hives spread over the
// second (each reporting on its own ticker, started whenever its session
// did), every report woke the queen on its own: the WebSocket transport
// alone, with no decoding, took 0.07-0.09 cores on the 2-core development
// VM; in phase, 0.04 (BenchmarkIngestFloor, both in one run).
//
// The offset within the window spreads the burst, so that the queen's
// socket buffers, run queue and feed readers' queues see ten reports a
// millisecond rather than a thousand at once. In one run each, a window of
// 20 ms saved no more, and one of 250 ms saved the queen about half as
// much. Hives whose clocks disagree by more than the window simply report
// out of phase, as every hive did before; nothing depends on the phase for
// correctness.
const ReportWindow = 10

// NextReport is when a hive named hive, reporting every interval, sends its
// next periodic report after now: at its offset within the window that
// opens each whole multiple of interval on the wall clock, and at least half
// an interval after now (a session's first report goes out at once, and the
// second must not follow it by a few milliseconds).
func NextReport(now time.Time, interval time.Duration, hive string) time.Time {
	if interval <= 0 {
		interval = time.Second
	}
	window := interval / ReportWindow
	var offset time.Duration
	if window > 0 {
		h := fnv.New32a()
		h.Write([]byte(hive))
		offset = time.Duration(h.Sum32()) % window
	}
	t := now.Truncate(interval).Add(offset)
	for t.Sub(now) < interval/2 {
		t = t.Add(interval)
	}
	return t
}
