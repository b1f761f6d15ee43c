package main

import (
	"fmt"
	"path/filepath"
	"strings"
	"testing"
	"time"
)

// fairRun is key B's queue wait (latency minus the unloaded latency) in one
// run of floodAndProbe; with 20 requests, p99 is the worst.
type fairRun struct {
	name     string
	p50, p99 time.Duration
	aDoneAtB int
}

// fairTrial starts a node in front of a simulated worker with 2 slots
// (~100 ms a request), with the keys file of A and B when tenants is set or
// none (one FIFO, both clients sending the cluster token) when not, and
// measures B's 20 requests while A floods with flood requests. bPrompt is
// as floodAndProbe's.
func fairTrial(b *testing.B, name string, tenants bool, flood int, bPrompt string) fairRun {
	b.Helper()
	dir := b.TempDir()
	sim := startPacedSimulator(b, dir, fairSlots, fairTPS)
	c := newCluster(b)
	defer c.close()
	ka, kb, keys := keyA, keyB, ""
	if tenants {
		keys = filepath.Join(dir, "keys.toml")
		writeKeysFile(b, keys, twoTenants())
	} else {
		ka, kb = c.key.HTTPToken(), c.key.HTTPToken()
	}
	p := tenantNode(b, c, sim, fairSlots, keys)
	hc := apiClient()
	defer hc.CloseIdleConnections()
	base := unloadedLatency(b, hc, p.httpAddr, kb, 5)
	res := floodAndProbe(b, c, p, hc, ka, kb, flood, 20, bPrompt)
	waits := make([]time.Duration, len(res.bLatency))
	for i, l := range res.bLatency {
		waits[i] = max(l-base, 0)
	}
	r := fairRun{name: name, p50: percentile(waits, 50), p99: percentile(waits, 99), aDoneAtB: res.aDoneAtB}
	b.Logf("%s: unloaded %v; B's waits %v; A answered %d of %d by B's end, statuses %v",
		name, base.Round(time.Millisecond), roundAll(res.bLatency, base), res.aDoneAtB, flood, res.aStatus)
	return r
}

// roundAll is ds minus base, in milliseconds, in the order sent.
func roundAll(ds []time.Duration, base time.Duration) []int64 {
	out := make([]int64, len(ds))
	for i, d := range ds {
		out[i] = max(d-base, 0).Milliseconds()
	}
	return out
}

// BenchmarkFairness measures what fair queues between API keys buy: key B,
// sending 20 requests one at a time to a worker with 2 slots (~100 ms a
// request), (a) alone; (b) while key A floods the model with 200 requests
// at once, with a keys file (fair queues); (c) the same flood without one
// (today's single FIFO, both sending the cluster token); and (d) as (b) but
// every request of B the same conversation, so prefix affinity pins it to
// its last worker. Reported: B's p50/p99 queue wait (latency minus the
// unloaded latency).
//
//	go test -run '^$' -bench Fairness -benchtime 1x ./cmd/rbee/
//
// In (c) only B's first request waits behind the flood, which then drains
// before the rest: its p99 (the worst of 20) is the figure to read; p50 is
// after the flood.
func BenchmarkFairness(b *testing.B) {
	const flood = 200
	for b.Loop() {
		runs := []fairRun{
			fairTrial(b, "alone", true, 0, ""),
			fairTrial(b, "fair", true, flood, ""),
			fairTrial(b, "fifo", false, flood, ""),
			fairTrial(b, "fair_conv", true, flood, "one conversation"),
		}
		var line strings.Builder
		for _, r := range runs {
			b.ReportMetric(float64(r.p50.Microseconds())/1000, "b_"+r.name+"_p50_ms")
			b.ReportMetric(float64(r.p99.Microseconds())/1000, "b_"+r.name+"_p99_ms")
			fmt.Fprintf(&line, "  %s: p50 %v p99 %v", r.name, r.p50.Round(time.Millisecond), r.p99.Round(time.Millisecond))
		}
		b.Logf("B's queue wait (latency minus unloaded), 20 requests, A flooding %d at once:%s", flood, line.String())
	}
}
