package main

import (
	"fmt"
	"os"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/rbee/rbee/internal/testutil"
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
func BenchmarkSaturation(b *testing.B) {
	for b.Loop() {
		dir := b.TempDir()
		sims := []string{startSatSimulator(b, dir, "sim1"), startSatSimulator(b, dir, "sim2")}
		c := newCluster(b)
		q := c.start(nodeSpec{name: "q", extra: []string{"--roles", "queen", "--queen-priority", "1"}})[0]
		rest := c.start(
			nodeSpec{name: "h1", join: q.gossipAddr, extra: []string{"--roles", "hive", "--worker", "http://" + sims[0] + ",model=m,slots=" + strconv.Itoa(satSlots)}},
			nodeSpec{name: "h2", join: q.gossipAddr, extra: []string{"--roles", "hive", "--worker", "http://" + sims[1] + ",model=m,slots=" + strconv.Itoa(satSlots)}},
			nodeSpec{name: "e", join: q.gossipAddr, extra: []string{"--roles", "none"}},
		)
		h1, e := rest[0], rest[2]
		c.waitAgree(append([]*proc{q}, rest...), 20*time.Second)
		for _, p := range []*proc{h1, e} {
			testutil.Eventually(b, 20*time.Second, "both workers serve m via "+p.name, modelSlots(c, p, 2*satSlots))
		}
		var targets []routeTarget
		if ng := startNginx(b, dir, sims...); ng != "" {
			targets = append(targets, routeTarget{"nginx", ng})
		} else {
			b.Log("nginx not installed (apt-get install nginx-light): its column is left out")
		}
		targets = append(targets, routeTarget{"rbee via a hive", h1.httpAddr}, routeTarget{"rbee via an entry", e.httpAddr})

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
		fmt.Fprintf(&out, "%-20s %10s %10s %10s %10s %10s\n", "path", "req/s", "of ideal", "vs nginx", "p50", "p99")
		var nginxRPS float64
		for _, t := range targets {
			st := measure(b, t.addr, satClients, dur, shortCompletion)
			if t.name == "nginx" {
				nginxRPS = st.rps
			}
			vs := "-"
			if nginxRPS > 0 {
				vs = fmt.Sprintf("%.0f%%", 100*st.rps/nginxRPS)
			}
			fmt.Fprintf(&out, "%-20s %10.0f %9.0f%% %10s %10v %10v\n", t.name, st.rps, 100*st.rps/ideal, vs,
				st.p50.Round(time.Microsecond), st.p99.Round(time.Microsecond))
			if st.failed > 0 {
				fmt.Fprintf(&out, "  %s: %d requests failed\n", t.name, st.failed)
			}
			key := strings.ReplaceAll(t.name, " ", "_")
			b.ReportMetric(st.rps, key+"_rps")
		}
		fmt.Print(out.String())
		c.close()
	}
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
