package main

import (
	"fmt"
	"os"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/rbee/rbee/internal/testutil"
	"github.com/rbee/rbee/node"
)

// Saturation benchmark parameters: two hives with one simulated worker of
// four slots each, every request 20 ms, and more clients than slots.
const (
	satSlots   = 4
	satTTFT    = 20 * time.Millisecond
	satClients = 64
)

// BenchmarkSaturation measures how much of the workers' capacity rbee keeps
// busy when there are more requests than slots: two hives, each with one
// simulated worker of 4 slots whose every request takes 20 ms (at most 400
// requests a second between them), 64 clients, beside nginx taking the same
// two workers in turn, in one run. rbee is entered through a hive (whose
// requests go to its own worker or, through it, to the other hive's) and
// through an entry-only node (two hops for every request). What rbee leaves
// idle is the time from a slot freeing to the next request reaching it:
// the release reaching the queen, the grant the entry node, the request the
// hive.
//
// Where that time goes, timed per slot cycle with timestamps at every step
// (2 vCPUs shared with other jobs, means): the worker's answer reaching its
// hive, 0.1 ms; the hive's release reaching the queen, 0.6-0.9; the queen
// granting, 0.1-0.2; the grant reaching the entry node, 0.55-0.75; the
// waiting request resuming, 0.25-0.35; the request reaching the hive,
// 0.6-0.7; the hive forwarding it, 0.1: 2.3-2.9 ms (1.4 ms with the
// benchmark's processes run ahead of everything else). Under nginx a freed slot takes the next
// request already waiting at the worker; under rbee it waits for five
// crossings between processes (worker, hive, queen, entry node, hive,
// worker), each a wake-up of another process, with no delay of rbee's own on
// the way (the lease path has no cork or ticker, the proxy's connections to
// hives and workers are kept alive, 256 a host). Releasing inline rather than
// through the session's writer moved time between steps without shortening
// the cycle. RBEE_BENCH_WORKER_QUEUE=N has each hive declare its worker N
// slots more than it has, so that N requests wait at the worker as they do
// behind nginx: with 1, both rbee paths measured 97-100% of nginx, so the
// loss is the hand-off of a freed slot, not a cost of each request. That is
// what --grant-ahead does within rbee's own rules (the queen grants one
// request per worker ahead, and the hive starts it when a slot frees): the
// benchmark measures the cluster with it off and on, in one run.
func BenchmarkSaturation(b *testing.B) {
	// Declared slots beyond the simulator's: requests that wait at the
	// worker (see above).
	queued := 0
	if s := os.Getenv("RBEE_BENCH_WORKER_QUEUE"); s != "" {
		v, err := strconv.Atoi(s)
		if err != nil || v < 0 || v > 64 {
			b.Fatalf("RBEE_BENCH_WORKER_QUEUE=%q: want 0 to 64", s)
		}
		queued = v
	}
	declared := satSlots + queued
	for b.Loop() {
		dir := b.TempDir()
		sims := []string{startSatSimulator(b, dir, "sim1"), startSatSimulator(b, dir, "sim2")}
		dur := 5 * time.Second
		if s := os.Getenv("RBEE_BENCH_SECONDS"); s != "" {
			if v, err := strconv.Atoi(s); err == nil && v > 0 {
				dur = time.Duration(v) * time.Second
			}
		}
		ideal := float64(2*satSlots) / satTTFT.Seconds()
		var out strings.Builder
		fmt.Fprintf(&out, "\nsaturation: 2 workers x %d slots, %v a request (at most %.0f req/s), %d clients, %v per measurement\n",
			satSlots, satTTFT, ideal, satClients, dur)
		if queued > 0 {
			fmt.Fprintf(&out, "each hive declares %d slots a worker: %d requests wait at each worker\n", declared, queued)
		}
		fmt.Fprintf(&out, "%-36s %10s %10s %10s %10s %10s\n", "path", "req/s", "of ideal", "vs nginx", "p50", "p99")
		var nginxRPS float64
		row := func(name, addr string) {
			st := measure(b, addr, satClients, dur, shortCompletion)
			if name == "nginx" {
				nginxRPS = st.rps
			}
			vs := "-"
			if nginxRPS > 0 {
				vs = fmt.Sprintf("%.0f%%", 100*st.rps/nginxRPS)
			}
			fmt.Fprintf(&out, "%-36s %10.0f %9.0f%% %10s %10v %10v\n", name, st.rps, 100*st.rps/ideal, vs,
				st.p50.Round(time.Microsecond), st.p99.Round(time.Microsecond))
			if st.failed > 0 {
				fmt.Fprintf(&out, "  %s: %d requests failed, the first: %v\n", name, st.failed, st.firstErr)
			}
			key := strings.NewReplacer(" ", "_", "(", "", ")", "").Replace(name)
			b.ReportMetric(st.rps, key+"_rps")
		}
		if ng, _ := startNginx(b, dir, sims...); ng != "" {
			row("nginx", ng)
		} else {
			b.Log("nginx not installed (apt-get install nginx-light): its column is left out")
		}
		// The same cluster without granting ahead (the build before it)
		// and with it, one after the other on the same workers.
		for _, ahead := range satAheads(b) {
			c := newCluster(b)
			q := c.start(nodeSpec{name: "q", extra: []string{"--roles", "queen", "--queen-priority", "1", "--grant-ahead", strconv.Itoa(ahead)}})[0]
			rest := c.start(
				nodeSpec{name: "h1", join: q.gossipAddr, extra: []string{"--roles", "hive", "--worker", "http://" + sims[0] + ",model=m,slots=" + strconv.Itoa(declared)}},
				nodeSpec{name: "h2", join: q.gossipAddr, extra: []string{"--roles", "hive", "--worker", "http://" + sims[1] + ",model=m,slots=" + strconv.Itoa(declared)}},
				nodeSpec{name: "e", join: q.gossipAddr, extra: []string{"--roles", "none"}},
			)
			h1, e := rest[0], rest[2]
			c.waitAgree(append([]*proc{q}, rest...), 20*time.Second)
			for _, p := range []*proc{h1, e} {
				testutil.Eventually(b, 20*time.Second, "both workers serve m via "+p.name, modelSlots(c, p, 2*declared))
			}
			suffix := fmt.Sprintf(" (grant-ahead %d)", ahead)
			row("rbee via a hive"+suffix, h1.httpAddr)
			row("rbee via an entry"+suffix, e.httpAddr)
			c.close()
		}
		fmt.Print(out.String())
	}
}

// satAheads are the --grant-ahead values measured: 0 and the default, or
// RBEE_BENCH_AHEAD's comma-separated list.
func satAheads(tb testing.TB) []int {
	v := os.Getenv("RBEE_BENCH_AHEAD")
	if v == "" {
		return []int{0, node.DefaultGrantAhead}
	}
	var out []int
	for f := range strings.SplitSeq(v, ",") {
		n, err := strconv.Atoi(strings.TrimSpace(f))
		if err != nil || n < 0 {
			tb.Fatalf("RBEE_BENCH_AHEAD=%q: want numbers of 0 or more, comma-separated", v)
		}
		out = append(out, n)
	}
	return out
}

// startSatSimulator runs a simulated worker whose every one-token request
// takes satTTFT, with satSlots slots.
func startSatSimulator(tb testing.TB, dir, name string) string {
	ports, err := freePorts(1)
	if err != nil {
		tb.Fatal(err)
	}
	addr := "127.0.0.1:" + strconv.Itoa(ports[0])
	startProcess(tb, dir, name, rbeeBin, "worker", "simulate", "--model", "m", "--port", strconv.Itoa(ports[0]),
		"--slots", strconv.Itoa(satSlots), "--tokens-per-second", "0", "--max-tokens", "1",
		"--ttft-ms", strconv.Itoa(int(satTTFT.Milliseconds())))
	waitHTTP(tb, "http://"+addr+"/health")
	return addr
}

// modelSlots waits until p lists model m with want slots: every worker's
// hive has reported to the queen.
func modelSlots(c *cluster, p *proc, want int) func() error {
	return func() error {
		var v struct {
			Data []struct {
				ID    string
				Slots int
			}
		}
		if err := c.getJSON(p.httpAddr, "/v1/models", &v); err != nil {
			return err
		}
		if len(v.Data) != 1 || v.Data[0].Slots != want {
			return fmt.Errorf("/v1/models of %s: %+v, want m with %d slots", p.name, v.Data, want)
		}
		return nil
	}
}
