package main

import (
	"cmp"
	"errors"
	"fmt"
	"io"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/rbee/rbee/internal/launcher"
	"github.com/rbee/rbee/internal/testutil"
)

// routeTarget is one way to reach the simulated worker.
type routeTarget struct {
	name string
	addr string
	// pids are the processes that carry the path (with their children:
	// nginx's workers), whose CPU each request costs; none for the
	// worker itself.
	pids []int
}

// routeStats is one measurement: latencies of every request, and requests
// per second over the run.
type routeStats struct {
	n        int
	failed   int
	p50, p99 time.Duration
	rps      float64
	firstErr error // of the failed requests, the first
	// cpuPerReq is the CPU time the path's processes spent per request
	// in the measured run; 0 when it has none.
	cpuPerReq time.Duration
}

// shortCompletion is the request measured first: a one-token, non-streaming
// chat completion, so what is timed is the path, not the generation.
const shortCompletion = `{"model":"m","messages":[{"role":"user","content":"hi"}],"max_tokens":1}`

// longStream is the second: 200 tokens streamed as server-sent events (the
// simulator generates them as fast as it can), where what is timed is
// carrying 200 small events through every hop.
const longStream = `{"model":"m","messages":[{"role":"user","content":"hi"}],"max_tokens":200,"stream":true}`

// measure sends requests to addr from `conc` goroutines, each with its own
// keep-alive connection, for d (after a warm-up), and returns the figures.
func measure(tb testing.TB, addr string, conc int, d time.Duration, body string) routeStats {
	return measureCPU(tb, addr, nil, conc, d, body)
}

// measureCPU is measure that also takes the CPU time of pids (and of their
// children) over the measured run, per request. On a machine the load
// generator, the worker and the proxy share, the requests per second a
// proxy reaches are what the others leave it; its CPU time per request is
// its own cost.
func measureCPU(tb testing.TB, addr string, pids []int, conc int, d time.Duration, body string) routeStats {
	tr := &http.Transport{MaxIdleConnsPerHost: conc, MaxConnsPerHost: conc, DisableCompression: true}
	defer tr.CloseIdleConnections()
	hc := &http.Client{Transport: tr, Timeout: 30 * time.Second}
	url := "http://" + addr + "/v1/chat/completions"
	one := func() (time.Duration, error) {
		start := time.Now()
		resp, err := hc.Post(url, "application/json", strings.NewReader(body))
		if err != nil {
			return 0, err
		}
		if resp.StatusCode != 200 {
			b, _ := io.ReadAll(io.LimitReader(resp.Body, 4<<10))
			resp.Body.Close()
			return 0, fmt.Errorf("status %d: %.200s", resp.StatusCode, b)
		}
		_, err = io.Copy(io.Discard, resp.Body)
		resp.Body.Close()
		return time.Since(start), err
	}
	var firstErr error
	run := func(d time.Duration) ([]time.Duration, int, time.Duration) {
		var mu sync.Mutex
		var lat []time.Duration
		failed := 0
		deadline := time.Now().Add(d)
		start := time.Now()
		var wg sync.WaitGroup
		for range conc {
			wg.Go(func() {
				var mine []time.Duration
				bad := 0
				var bad1 error
				for time.Now().Before(deadline) {
					l, err := one()
					if err != nil {
						bad++
						bad1 = cmp.Or(bad1, err)
						continue
					}
					mine = append(mine, l)
				}
				mu.Lock()
				lat = append(lat, mine...)
				failed += bad
				firstErr = cmp.Or(firstErr, bad1)
				mu.Unlock()
			})
		}
		wg.Wait()
		return lat, failed, time.Since(start)
	}
	run(d / 4) // warm up connections, caches and the scheduler
	firstErr = nil
	cpu0 := treeCPUTicks(tb, pids)
	lat, failed, took := run(d)
	cpu := treeCPUTicks(tb, pids) - cpu0
	if len(lat) == 0 {
		tb.Fatalf("%s: no request succeeded (%d failed)", addr, failed)
	}
	slices.Sort(lat)
	st := routeStats{n: len(lat), failed: failed, p50: lat[len(lat)/2], p99: lat[len(lat)*99/100], rps: float64(len(lat)) / took.Seconds(), firstErr: firstErr}
	if len(pids) > 0 {
		st.cpuPerReq = time.Duration(float64(cpu) / clockTicks() * float64(time.Second) / float64(len(lat)+failed))
	}
	return st
}

// treeCPUTicks is the CPU time of pids and of their children, in clock
// ticks (/proc/<pid>/stat).
func treeCPUTicks(tb testing.TB, pids []int) int64 {
	if len(pids) == 0 {
		return 0
	}
	all := slices.Clone(pids)
	if ents, err := os.ReadDir("/proc"); err == nil {
		for _, e := range ents {
			child, err := strconv.Atoi(e.Name())
			if err != nil {
				continue
			}
			if pp, err := procParent(child); err == nil && slices.Contains(pids, pp) {
				all = append(all, child)
			}
		}
	}
	var sum int64
	for _, pid := range all {
		t, err := procCPUTicks(pid)
		if err != nil {
			if slices.Contains(pids, pid) {
				tb.Fatalf("CPU time of pid %d: %v", pid, err)
			}
			continue // a child that just ended
		}
		sum += t
	}
	return sum
}

// procParent is pid's parent, from /proc/<pid>/stat.
func procParent(pid int) (int, error) {
	f, err := procStat(pid)
	if err != nil {
		return 0, err
	}
	if len(f) < 2 {
		return 0, fmt.Errorf("/proc/%d/stat: %d fields after the name", pid, len(f))
	}
	return strconv.Atoi(f[1]) // field 4, ppid
}

// startSimulator runs `rbee worker simulate` on a free port.
func startSimulator(tb testing.TB, dir string, slots int) string {
	ports, err := freePorts(1)
	if err != nil {
		tb.Fatal(err)
	}
	addr := "127.0.0.1:" + strconv.Itoa(ports[0])
	startProcess(tb, dir, "sim", rbeeBin, "worker", "simulate", "--model", "m", "--port", strconv.Itoa(ports[0]),
		"--slots", strconv.Itoa(slots), "--tokens-per-second", "0", "--max-tokens", "1")
	waitHTTP(tb, "http://"+addr+"/health")
	return addr
}

// startNginx runs Debian's nginx as a plain reverse proxy in front of
// upstreams, configured as one would for an LLM server: keep-alive to the
// upstream and no response buffering (so streams pass through). It returns
// "" when nginx is not installed.
func startNginx(tb testing.TB, dir string, upstreams ...string) (addr string, pid int) {
	bin, err := exec.LookPath("nginx")
	if err != nil {
		for _, p := range []string{"/usr/sbin/nginx", "/sbin/nginx"} {
			if _, err := os.Stat(p); err == nil {
				bin = p
			}
		}
	}
	if bin == "" {
		return "", 0
	}
	ports, err := freePorts(1)
	if err != nil {
		tb.Fatal(err)
	}
	addr = "127.0.0.1:" + strconv.Itoa(ports[0])
	// Several upstreams are taken in turn (nginx's round robin).
	var servers strings.Builder
	for _, u := range upstreams {
		fmt.Fprintf(&servers, "server %s; ", u)
	}
	conf := fmt.Sprintf(`worker_processes auto;
error_log %[1]s/nginx-error.log;
pid %[1]s/nginx.pid;
events { worker_connections 4096; }
http {
  access_log off;
  client_body_temp_path %[1]s/body;
  proxy_temp_path %[1]s/proxy;
  upstream worker { %[2]s keepalive 256; }
  server {
    listen %[3]s;
    location / {
      proxy_pass http://worker;
      proxy_http_version 1.1;
      proxy_set_header Connection "";
      proxy_buffering off;
    }
  }
}
`, dir, servers.String(), addr)
	path := filepath.Join(dir, "nginx.conf")
	if err := os.WriteFile(path, []byte(conf), 0o644); err != nil {
		tb.Fatal(err)
	}
	pid = startProcess(tb, dir, "nginx", bin, "-c", path, "-p", dir, "-g", "daemon off;")
	waitHTTP(tb, "http://"+addr+"/health")
	return addr, pid
}

// buildBenchProxy builds internal/benchproxy (the Go baseline) into dir and
// returns its path, "" when it cannot be built (then its rows are left out).
func buildBenchProxy(tb testing.TB, dir string) string {
	bin := filepath.Join(dir, "benchproxy")
	build := exec.Command("go", "build", "-o", bin, "../../internal/benchproxy")
	if out, err := build.CombinedOutput(); err != nil {
		tb.Logf("build the Go baseline proxy: %v\n%s", err, out)
		return ""
	}
	return bin
}

// startBenchProxy runs the Go baseline proxy in front of upstream and
// returns its address; with "-tls" among args it answers over TLS, and its
// health is then checked through the proxy in front of it.
func startBenchProxy(tb testing.TB, dir, bin, name, upstream string, args ...string) (addr string, pid int) {
	ports, err := freePorts(1)
	if err != nil {
		tb.Fatal(err)
	}
	addr = "127.0.0.1:" + strconv.Itoa(ports[0])
	pid = startProcess(tb, dir, name, bin, append([]string{"-listen", addr, "-upstream", upstream}, args...)...)
	if !slices.Contains(args, "-tls") {
		waitHTTP(tb, "http://"+addr+"/health")
	}
	return addr, pid
}

// startProcess runs a helper process for the length of the test or
// benchmark, its output in <dir>/<name>.log.
func startProcess(tb testing.TB, dir, name, bin string, args ...string) (pid int) {
	// SIGTERM first (the Group's default): nginx's workers outlive a
	// SIGKILLed master.
	g := launcher.New(launcher.Options{LogDir: dir})
	tb.Cleanup(g.Stop)
	p, err := g.Start(name, exec.Command(bin, args...))
	if err != nil {
		tb.Fatal(err)
	}
	return p.Pid()
}

func waitHTTP(tb testing.TB, url string) {
	testutil.Eventually(tb, 15*time.Second, url, func() error {
		resp, err := http.Get(url)
		if err != nil {
			return err
		}
		resp.Body.Close()
		if resp.StatusCode != http.StatusOK {
			return errors.New(resp.Status)
		}
		return nil
	})
}

// BenchmarkRouting measures what routing through rbee costs, beside the same
// request straight to the simulated worker and through nginx, in one run:
// latency at concurrency 1 and 64 (p50, p99) and requests per second at 64.
// rbee is measured with one hop (the entry node is the worker's hive) and two
// (an entry-only node, then the hive); the queen is a third node, so every
// request takes a lease round trip over the network path.
func BenchmarkRouting(b *testing.B) {
	for b.Loop() {
		dir := b.TempDir()
		sim := startSimulator(b, dir, 256)
		c := newCluster(b)
		q := c.start(nodeSpec{name: "q", extra: append([]string{"--roles", "queen", "--queen-priority", "1"}, profileFlags()...)})[0]
		// RBEE_BENCH_SPARES=0 measures the entry nodes without spare
		// leases, each request leased from the queen (the baseline).
		var spares []string
		if v := os.Getenv("RBEE_BENCH_SPARES"); v != "" {
			spares = []string{"--spare-leases", v}
		}
		rest := c.start(
			nodeSpec{name: "h", join: q.gossipAddr, extra: slices.Concat([]string{"--roles", "hive", "--worker", "http://" + sim + ",model=m,slots=256"}, spares, profileFlags())},
			nodeSpec{name: "e", join: q.gossipAddr, extra: slices.Concat([]string{"--roles", "none"}, spares, profileFlags())},
		)
		h, e := rest[0], rest[1]
		c.waitAgree([]*proc{q, h, e}, 20*time.Second)
		for _, p := range []*proc{h, e} {
			testutil.Eventually(b, 20*time.Second, "model m served via "+p.name, modelServed(c, p))
		}
		targets := []routeTarget{{"direct to worker", sim, nil}}
		if ng, pid := startNginx(b, dir, sim); ng != "" {
			targets = append(targets, routeTarget{"nginx", ng, []int{pid}})
		} else {
			b.Log("nginx not installed (apt-get install nginx-light): its column is left out")
		}
		// The Go baseline: the standard library's reverse proxy, one
		// in front of the worker, and two in a row with the cluster's
		// TLS between them, as rbee's two hops.
		if gp := buildBenchProxy(b, dir); gp != "" {
			one, p1 := startBenchProxy(b, dir, gp, "goproxy1", "http://"+sim)
			hiveSide, p2h := startBenchProxy(b, dir, gp, "goproxy2h", "http://"+sim, "-key", c.keyFile, "-tls")
			two, p2e := startBenchProxy(b, dir, gp, "goproxy2e", "https://"+hiveSide, "-key", c.keyFile)
			targets = append(targets, routeTarget{"Go proxy, 1 hop", one, []int{p1}}, routeTarget{"Go proxy, 2 hops", two, []int{p2e, p2h}})
		}
		// The queen counts too: without spare leases every request is
		// a lease round trip through it.
		targets = append(targets, routeTarget{"rbee, 1 hop", h.httpAddr, []int{h.Pid(), q.Pid()}},
			routeTarget{"rbee, 2 hops", e.httpAddr, []int{e.Pid(), h.Pid(), q.Pid()}})

		dur := 3 * time.Second
		if s := os.Getenv("RBEE_BENCH_SECONDS"); s != "" {
			if v, err := strconv.Atoi(s); err == nil && v > 0 {
				dur = time.Duration(v) * time.Second
			}
		}
		type row struct {
			t       routeTarget
			c1, c64 routeStats
			s1, s64 routeStats // 200-token streams
		}
		// With RBEE_BENCH_PROFILE set, the nodes on a path are profiled
		// while it carries 64 clients (see cluster.profile).
		profiled := func(t routeTarget, what string, f func() routeStats) routeStats {
			var ps []*proc
			switch t.addr {
			case h.httpAddr:
				ps = []*proc{q, h}
			case e.httpAddr:
				ps = []*proc{q, h, e}
			}
			var stops []func()
			for _, p := range ps {
				key := strings.NewReplacer(" ", "", ",", "").Replace(t.name)
				stops = append(stops, c.profile(p, fmt.Sprintf("route-%s-%s-%s", what, key, p.name), dur))
			}
			st := f()
			for _, stop := range stops {
				stop()
			}
			return st
		}
		// RBEE_BENCH_ROUNDS=N measures every path N times, the paths
		// taking turns, and prints medians: on a shared machine a path
		// measured once, while a neighbour was busy, can lose a third.
		rounds := 1
		if s := os.Getenv("RBEE_BENCH_ROUNDS"); s != "" {
			if v, err := strconv.Atoi(s); err == nil && v > 0 {
				rounds = v
			}
		}
		runs := make([][]row, rounds)
		for i := range rounds {
			for _, t := range targets {
				r := row{t: t, c1: measure(b, t.addr, 1, dur, shortCompletion)}
				if i == 0 {
					r.c64 = profiled(t, "short", func() routeStats { return measureCPU(b, t.addr, t.pids, 64, dur, shortCompletion) })
				} else {
					r.c64 = measureCPU(b, t.addr, t.pids, 64, dur, shortCompletion)
				}
				r.s1 = measure(b, t.addr, 1, dur, longStream)
				if i == 0 {
					r.s64 = profiled(t, "stream", func() routeStats { return measureCPU(b, t.addr, t.pids, 64, dur, longStream) })
				} else {
					r.s64 = measureCPU(b, t.addr, t.pids, 64, dur, longStream)
				}
				runs[i] = append(runs[i], r)
			}
		}
		nginx := slices.IndexFunc(targets, func(t routeTarget) bool { return t.name == "nginx" })
		// Each figure is the median over the rounds; a share of nginx or
		// a difference from the direct path is taken within each round
		// first, then the median, with the rounds' range beside it.
		over := func(ti int, f func(round []row, r row) float64) []float64 {
			var v []float64
			for _, round := range runs {
				v = append(v, f(round, round[ti]))
			}
			return v
		}
		med := func(v []float64) float64 {
			v = slices.Clone(v)
			slices.Sort(v)
			if n := len(v); n%2 == 0 {
				return (v[n/2-1] + v[n/2]) / 2
			}
			return v[len(v)/2]
		}
		us := func(v []float64) string { return time.Duration(med(v)).Round(time.Microsecond).String() }
		pct := func(v []float64) string {
			if len(v) == 1 {
				return fmt.Sprintf("%.0f%%", 100*v[0])
			}
			return fmt.Sprintf("%.0f%% (%.0f-%.0f)", 100*med(v), 100*slices.Min(v), 100*slices.Max(v))
		}
		// vsNginx is the share of nginx's figure f, "-" without nginx.
		vsNginx := func(ti int, f func(r row) float64) string {
			if nginx < 0 {
				return "-"
			}
			return pct(over(ti, func(rd []row, r row) float64 { return f(r) / f(rd[nginx]) }))
		}
		// failures sums the failed requests of target ti's two
		// measurements that f picks, and returns the first error.
		failures := func(ti int, f func(r row) (routeStats, routeStats)) (n int, first error) {
			for _, rd := range runs {
				x, y := f(rd[ti])
				n += x.failed + y.failed
				first = cmp.Or(first, x.firstErr, y.firstErr)
			}
			return n, first
		}
		// cpuPer is a CPU time per request, "-" for a path with no
		// process of its own.
		cpuPer := func(t routeTarget, v []float64) string {
			if len(t.pids) == 0 {
				return "-"
			}
			return us(v)
		}
		var out strings.Builder
		fmt.Fprintf(&out, "\nrouting a 1-token chat completion (%v per measurement, after a warm-up; all processes on this machine", dur)
		if rounds > 1 {
			fmt.Fprintf(&out, "; medians of %d rounds, shares with the rounds' range", rounds)
		}
		fmt.Fprintf(&out, "; CPU/req: the CPU time of the path's processes per request at c=64")
		fmt.Fprintf(&out, ")\n%-18s %10s %10s %10s %10s %10s %10s %12s %18s %10s\n", "path", "c1 p50", "c1 p99", "c1 +p50", "c1 +p99", "c64 p50", "c64 p99", "c64 req/s", "vs nginx", "CPU/req")
		for ti, t := range targets {
			c1p50 := over(ti, func(_ []row, r row) float64 { return float64(r.c1.p50) })
			c1p99 := over(ti, func(_ []row, r row) float64 { return float64(r.c1.p99) })
			plus50 := over(ti, func(rd []row, r row) float64 { return float64(r.c1.p50 - rd[0].c1.p50) })
			plus99 := over(ti, func(rd []row, r row) float64 { return float64(r.c1.p99 - rd[0].c1.p99) })
			c64p50 := over(ti, func(_ []row, r row) float64 { return float64(r.c64.p50) })
			c64p99 := over(ti, func(_ []row, r row) float64 { return float64(r.c64.p99) })
			rps := over(ti, func(_ []row, r row) float64 { return r.c64.rps })
			vs := vsNginx(ti, func(r row) float64 { return r.c64.rps })
			cpu := over(ti, func(_ []row, r row) float64 { return float64(r.c64.cpuPerReq) })
			fmt.Fprintf(&out, "%-18s %10s %10s %10s %10s %10s %10s %12.0f %18s %10s\n", t.name,
				us(c1p50), us(c1p99), us(plus50), us(plus99), us(c64p50), us(c64p99), med(rps), vs, cpuPer(t, cpu))
			if failed, first := failures(ti, func(r row) (routeStats, routeStats) { return r.c1, r.c64 }); failed > 0 {
				fmt.Fprintf(&out, "  %s: %d requests failed, the first: %v\n", t.name, failed, first)
			}
			key := strings.NewReplacer(" ", "_", ",", "").Replace(t.name)
			b.ReportMetric(med(c1p50)/1e3, key+"_c1_p50_us")
			b.ReportMetric(med(rps), key+"_c64_rps")
			if len(t.pids) > 0 {
				b.ReportMetric(med(cpu)/1e3, key+"_c64_cpu_us_per_req")
			}
		}
		fmt.Fprintf(&out, "\nstreaming a 200-token answer (server-sent events, generated as fast as the simulator can)\n")
		fmt.Fprintf(&out, "%-18s %10s %10s %10s %14s %18s %18s %10s\n", "path", "c1 p50", "c1 +p50", "c64 p50", "c64 streams/s", "vs direct", "vs nginx", "CPU/str")
		for ti, t := range targets {
			s1p50 := over(ti, func(_ []row, r row) float64 { return float64(r.s1.p50) })
			plus50 := over(ti, func(rd []row, r row) float64 { return float64(r.s1.p50 - rd[0].s1.p50) })
			s64p50 := over(ti, func(_ []row, r row) float64 { return float64(r.s64.p50) })
			rps := over(ti, func(_ []row, r row) float64 { return r.s64.rps })
			vd := pct(over(ti, func(rd []row, r row) float64 { return r.s64.rps / rd[0].s64.rps }))
			vs := vsNginx(ti, func(r row) float64 { return r.s64.rps })
			cpu := over(ti, func(_ []row, r row) float64 { return float64(r.s64.cpuPerReq) })
			fmt.Fprintf(&out, "%-18s %10s %10s %10s %14.0f %18s %18s %10s\n", t.name, us(s1p50), us(plus50), us(s64p50), med(rps), vd, vs, cpuPer(t, cpu))
			if failed, first := failures(ti, func(r row) (routeStats, routeStats) { return r.s1, r.s64 }); failed > 0 {
				fmt.Fprintf(&out, "  %s: %d streams failed, the first: %v\n", t.name, failed, first)
			}
			key := strings.NewReplacer(" ", "_", ",", "").Replace(t.name)
			b.ReportMetric(med(s1p50)/1e3, key+"_stream200_c1_p50_us")
			b.ReportMetric(med(rps), key+"_stream200_c64_rps")
		}
		fmt.Print(out.String())
		c.close()
	}
}

// BenchmarkFailoverUnderLoad: the longest extra wait a client saw, and the
// failed requests, while the queen was SIGKILLed under a steady load of 8
// concurrent clients entering through a non-queen node.
func BenchmarkFailoverUnderLoad(b *testing.B) {
	for b.Loop() {
		res := failoverUnderLoad(b, 8)
		fmt.Printf("\nfailover under load (8 clients, queen SIGKILLed): %d requests, %d failed, median before the kill %v, slowest %v, longest extra wait %v\n",
			res.total, res.failed, res.baseline.Round(time.Millisecond), res.maxLatency.Round(time.Millisecond), (res.maxLatency - res.baseline).Round(time.Millisecond))
		b.ReportMetric(float64(res.failed), "failed")
		b.ReportMetric(float64((res.maxLatency - res.baseline).Milliseconds()), "max_extra_wait_ms")
	}
}
