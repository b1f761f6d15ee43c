package main

// Benchmarks of whole processes. They measure, they do not assert speed; run
// them with `go test -run '^$' -bench . -benchtime 1x ./cmd/rbee/`. Each
// iteration is a full experiment (many seconds), so -benchtime 1x is the
// useful setting.

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"io"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"slices"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"syscall"
	"testing"
	"time"

	"github.com/coder/websocket"
	jsonv2 "github.com/go-json-experiment/json"
	"github.com/go-json-experiment/json/jsontext"
	"golang.org/x/sync/errgroup"

	"github.com/rbee/rbee/internal/testutil"
	"github.com/rbee/rbee/node"
	"github.com/rbee/rbee/node/api"
	"github.com/rbee/rbee/wsapi"
)

// failoverTrials is the number of trials per way of stopping the queen.
const failoverTrials = 10

// benchPollInterval is how often BenchmarkFailover asks the survivors: fine
// enough to resolve a failover of about a second, light enough (two loopback
// requests) not to slow the nodes it measures.
const benchPollInterval = 2 * time.Millisecond

// BenchmarkFailover measures how long a 3-node cluster takes to agree on a new
// queen after the queen is SIGKILLed (failure detection) and after it is
// SIGTERMed (graceful leave), from the signal to the moment both survivors'
// /healthz name the same new queen. Every trial uses fresh processes.
//
// false_deaths counts "member failed" log lines in the survivors' logs about a
// node that was alive: failure detection tuned too tight for the machine.
// term_seen_failed counts graceful leaves that a survivor logged as a failure.
func BenchmarkFailover(b *testing.B) {
	var kills, terms []time.Duration
	falseDeaths, termSeenFailed := 0, 0
	for b.Loop() {
		for range failoverTrials {
			r := failoverTrial(b, syscall.SIGKILL)
			kills = append(kills, r.took)
			falseDeaths += r.falseDeaths
		}
		for range failoverTrials {
			r := failoverTrial(b, syscall.SIGTERM)
			terms = append(terms, r.took)
			falseDeaths += r.falseDeaths
			termSeenFailed += r.victimFailed
		}
	}
	km, kx := medianMax(kills)
	tm, tx := medianMax(terms)
	b.ReportMetric(ms(km), "kill_median_ms")
	b.ReportMetric(ms(kx), "kill_max_ms")
	b.ReportMetric(ms(tm), "term_median_ms")
	b.ReportMetric(ms(tx), "term_max_ms")
	b.ReportMetric(float64(falseDeaths), "false_deaths")
	b.ReportMetric(float64(termSeenFailed), "term_seen_failed")
	b.Logf("failover over %d+%d trials: kill median %.0f ms max %.0f ms; term median %.0f ms max %.0f ms; false deaths %d; graceful leaves logged as failures %d",
		len(kills), len(terms), ms(km), ms(kx), ms(tm), ms(tx), falseDeaths, termSeenFailed)
}

type failoverResult struct {
	took         time.Duration
	falseDeaths  int // "member failed" about a node that was alive
	victimFailed int // "member failed" about the stopped queen
}

var memberFailedRE = regexp.MustCompile(`msg="member failed".* member=(\S+)`)

func failoverTrial(b *testing.B, sig syscall.Signal) failoverResult {
	b.Helper()
	c := newCluster(b)
	defer c.close()
	ps := c.startCluster(3)
	oldQueen := c.waitAgree(ps, 10*time.Second)
	queen := byName(b, ps, oldQueen)
	survivors := others(ps, queen)

	start := time.Now()
	queen.send(b, sig)
	var took time.Duration
	testutil.Every(benchPollInterval).Eventually(b, 30*time.Second, "survivors agree on a new queen", func() error {
		q, ok, state := c.queens(survivors)
		took = time.Since(start)
		if !ok || q == oldQueen {
			return errors.New(state)
		}
		return nil
	})

	var r failoverResult
	r.took = took
	for _, s := range survivors {
		for _, m := range memberFailedRE.FindAllStringSubmatch(s.log(), -1) {
			if m[1] == oldQueen {
				r.victimFailed++
			} else {
				r.falseDeaths++
				b.Logf("false death: %s logged %s as failed", s.name, m[1])
			}
		}
	}
	if sig == syscall.SIGTERM {
		if code := queen.exitCode(b, 20*time.Second); code != 0 {
			b.Errorf("SIGTERMed queen %s exited with %d, want 0", oldQueen, code)
		}
	}
	return r
}

func medianMax(ds []time.Duration) (median, maxD time.Duration) {
	if len(ds) == 0 {
		return 0, 0
	}
	s := slices.Clone(ds)
	slices.Sort(s)
	n := len(s)
	if n%2 == 1 {
		median = s[n/2]
	} else {
		median = (s[n/2-1] + s[n/2]) / 2
	}
	return median, s[n-1]
}

func ms(d time.Duration) float64 { return float64(d) / float64(time.Millisecond) }

// Ingest benchmark parameters.
const (
	ingestWorkers     = 8
	ingestSubscribers = 10
	ingestDialers     = 50
	ingestWarmup      = 3 * time.Second
	ingestWindow      = 10 * time.Second
)

// BenchmarkIngest measures the queen's CPU with S simulated hives reporting 8
// workers every second and 10 feed readers: queen_cores is CPU seconds per
// wall second of the queen process over a 10 s window. phase=inphase is how
// rbee hives report (wsapi.NextReport), phase=spread how they did before,
// each on a ticker of its own, evenly over the second.
func BenchmarkIngest(b *testing.B) {
	raiseFDLimit(b, 4096)
	for _, s := range []int{100, 1000} {
		// feed=event readers take one event a message, the seed's
		// shape; feed=batch readers ask for arrays (FeedBatchParam).
		for _, feed := range []string{"event", "batch"} {
			for _, phase := range []string{phaseInPhase, phaseSpread} {
				b.Run(fmt.Sprintf("sessions=%d/feed=%s/phase=%s", s, feed, phase), func(b *testing.B) {
					for b.Loop() {
						benchIngest(b, s, feed == "batch", phase)
					}
				})
			}
		}
	}
}

func benchIngest(b *testing.B, sessions int, batch bool, phase string) {
	c := newCluster(b)
	defer c.close()
	queen := c.start(nodeSpec{name: "queen", extra: profileFlags()})[0]
	if q := c.waitAgree([]*proc{queen}, 10*time.Second); q != "queen" {
		b.Fatalf("queen names %q", q)
	}
	ctx, cancel := context.WithCancel(context.Background())
	var wg sync.WaitGroup
	defer func() {
		cancel()
		wg.Wait()
	}()

	// Hive sessions, dialled a few at a time so the queen's accept queue
	// is not the thing measured.
	url := "ws://" + queen.httpAddr + wsapi.SessionPath
	ss := make([]*wsapi.Session, sessions)
	g, gctx := errgroup.WithContext(ctx)
	g.SetLimit(ingestDialers)
	for i := range ss {
		g.Go(func() error {
			s, err := wsapi.DialHive(gctx, url, &wsapi.SessionOptions{Key: c.key, Name: simName(i), Version: node.Version, HTTPClient: c.hc})
			if err != nil {
				return fmt.Errorf("dial %s: %w", simName(i), err)
			}
			ss[i] = s
			return nil
		})
	}
	dialErr := g.Wait()
	defer func() {
		for _, s := range ss {
			if s != nil {
				s.CloseNow()
			}
		}
	}()
	if dialErr != nil {
		b.Fatal(dialErr)
	}

	var writeErrs, sessionsEnded atomic.Int64
	for i, s := range ss {
		wg.Go(func() {
			// Reading answers the queen's pings and sees its close.
			for {
				if _, err := s.Read(ctx); err != nil {
					if ctx.Err() == nil {
						sessionsEnded.Add(1)
					}
					return
				}
			}
		})
		wg.Go(func() { reportEverySecond(ctx, phase, i, sessions, s.WriteRaw, &writeErrs) })
	}

	// Feed readers, remote-style with the bearer token.
	hdr := http.Header{}
	hdr.Set("Authorization", "Bearer "+c.key.HTTPToken())
	var feedMsgs atomic.Int64
	var feedsEnded atomic.Int64
	var feedErr atomic.Value // the first reader's error, for the report
	for range ingestSubscribers {
		dctx, dcancel := context.WithTimeout(ctx, 10*time.Second)
		feedURL := "ws://" + queen.httpAddr + wsapi.FeedPath
		if batch {
			feedURL += "?" + wsapi.FeedBatchParam + "=1"
		}
		conn, _, err := websocket.Dial(dctx, feedURL, &websocket.DialOptions{HTTPHeader: hdr, HTTPClient: c.hc})
		dcancel()
		if err != nil {
			b.Fatalf("dial feed: %v", err)
		}
		// The queen event lists every worker id: about 200 KB at 1000
		// hives, far over the library's 32 KiB default.
		conn.SetReadLimit(16 << 20)
		wg.Go(func() {
			defer conn.CloseNow()
			var buf bytes.Buffer
			for {
				_, r, err := conn.Reader(ctx)
				n := 1
				if err == nil {
					buf.Reset()
					_, err = buf.ReadFrom(r)
				}
				if err == nil && buf.Len() > 0 && buf.Bytes()[0] == '[' {
					// A batch (a node that predates them sends
					// none): count its events.
					var events []jsontext.Value
					err = jsonv2.Unmarshal(buf.Bytes(), &events)
					n = len(events)
				}
				if err != nil {
					if ctx.Err() == nil {
						feedsEnded.Add(1)
						feedErr.CompareAndSwap(nil, err.Error())
					}
					return
				}
				feedMsgs.Add(int64(n))
			}
		})
	}

	// Every session, and the queen's own hive, report before the clock
	// starts.
	want := sessions + 1
	testutil.Every(100*time.Millisecond).Eventually(b, 30*time.Second, fmt.Sprintf("queen lists %d hives online", want), func() error {
		n, err := hivesOnline(c, queen)
		if err == nil && n != want {
			err = fmt.Errorf("%d online", n)
		}
		return err
	})
	// The warm-up is a fixed stretch of time by design, not a wait for a
	// condition: it lets connection setup, GC and the first queen events
	// settle before the window opens.
	<-time.After(ingestWarmup)

	ticks := clockTicks()
	pid := queen.Pid()
	cpu0, err := procCPUTicks(pid)
	if err != nil {
		b.Fatal(err)
	}
	msgs0 := feedMsgs.Load()
	t0 := time.Now()
	stopProfile := c.profile(queen, fmt.Sprintf("ingest-%d-batch=%v-%s", sessions, batch, phase), ingestWindow)
	<-time.After(ingestWindow)
	stopProfile()
	cpu1, err := procCPUTicks(pid)
	wall := time.Since(t0)
	msgs1 := feedMsgs.Load()
	if err != nil {
		b.Fatal(err)
	}
	// The check runs right after the window rather than inside it: a
	// /v1/cluster answer with thousands of workers is itself real work for
	// the queen. Sessions that ended or failed a write during the window
	// are counted separately.
	if n, err := hivesOnline(c, queen); err != nil || n != want {
		b.Fatalf("after the window the queen lists %d hives online (err %v), want %d", n, err, want)
	}
	if n := sessionsEnded.Load() + writeErrs.Load(); n > 0 {
		b.Fatalf("%d hive sessions failed during the benchmark", n)
	}
	if n := feedsEnded.Load(); n > 0 {
		b.Fatalf("%d feed readers were dropped during the benchmark; first: %v", n, feedErr.Load())
	}
	perReader := float64(msgs1-msgs0) / ingestSubscribers / wall.Seconds()
	// Each reader should see every report (S per second) plus a queen
	// event every 2.5 s; far fewer means the feed fell behind.
	if perReader < 0.9*float64(sessions) {
		b.Fatalf("each feed reader got %.0f events/s, want about %d", perReader, sessions)
	}

	cores := float64(cpu1-cpu0) / ticks / wall.Seconds()
	b.ReportMetric(cores, "queen_cores")
	b.ReportMetric(perReader, "feed_events/s/reader")
	b.Logf("%d sessions (%s), %d feed readers (batch %v): queen used %.3f cores over %s; each reader got %.0f events/s",
		sessions, phase, ingestSubscribers, batch, cores, wall.Round(time.Millisecond), perReader)
}

// Report phases of the simulated hives.
const (
	// phaseInPhase: as rbee hives report, at wsapi.NextReport.
	phaseInPhase = "inphase"
	// phaseSpread: evenly over the second, each hive on its own ticker,
	// as rbee hives reported before they kept in phase (and as hives
	// whose clocks disagree, or that post heartbeats, still do).
	phaseSpread = "spread"
)

// reportEverySecond writes the telemetry of hive i of n with write every
// second, in phase (see the phase constants), until ctx ends or a write
// fails (counted in errs unless ctx ended). Each report is stamped anew, as
// a hive's agent does: no two reports of a real hive are the same bytes.
func reportEverySecond(ctx context.Context, phase string, i, n int, write func(context.Context, []byte) error, errs *atomic.Int64) {
	hive := simName(i)
	next := func(now time.Time) time.Duration { return time.Until(wsapi.NextReport(now, time.Second, hive)) }
	first := next(time.Now())
	if phase == phaseSpread {
		first = time.Duration(i) * time.Second / time.Duration(n)
		next = func(time.Time) time.Duration { return time.Second }
	}
	t := time.NewTimer(first)
	defer t.Stop()
	for {
		select {
		case <-ctx.Done():
			return
		case <-t.C:
		}
		msg, err := simTelemetry(hive, time.Now())
		if err == nil {
			err = write(ctx, msg)
		}
		if err != nil {
			if ctx.Err() == nil {
				errs.Add(1)
			}
			return
		}
		t.Reset(next(time.Now()))
	}
}

func simName(i int) string { return fmt.Sprintf("sim-%04d", i) }

// simTelemetry is one simulated hive's report at now.
func simTelemetry(hive string, now time.Time) ([]byte, error) {
	model := "llama-3.1-8b-instruct-q4_k_m.gguf"
	ws := make([]wsapi.ProcessStats, ingestWorkers)
	for i := range ws {
		ws[i] = wsapi.ProcessStats{
			PID: uint32(1000 + i), Group: "llm", Instance: strconv.Itoa(8080 + i),
			CPUPct: 12.5, RSSMB: 2048, IOReadMBs: 0.5, IOWriteMBs: 0.1, UptimeS: 3600,
			GPUUtilPct: 40, VRAMMB: 6000, TotalVRAMMB: 24576, Model: &model,
		}
	}
	return wsapi.Encode(&wsapi.HiveTelemetry{Type: wsapi.TypeHiveTelemetry, HiveID: hive, Timestamp: now.UTC(), Workers: ws})
}

func hivesOnline(c *cluster, p *proc) (int, error) {
	var v api.ClusterView
	if err := c.getJSON(p.httpAddr, api.PathCluster, &v); err != nil {
		return 0, err
	}
	n := 0
	for _, h := range v.Hives {
		if h.Online {
			n++
		}
	}
	return n, nil
}

// procCPUTicks returns utime+stime of pid in clock ticks, from
// /proc/<pid>/stat.
func procCPUTicks(pid int) (int64, error) {
	f, err := procStat(pid)
	if err != nil {
		return 0, err
	}
	if len(f) < 13 {
		return 0, fmt.Errorf("/proc/%d/stat: %d fields after the name", pid, len(f))
	}
	utime, err1 := strconv.ParseInt(f[11], 10, 64) // field 14
	stime, err2 := strconv.ParseInt(f[12], 10, 64) // field 15
	if err1 != nil || err2 != nil {
		return 0, fmt.Errorf("/proc/%d/stat: utime %q stime %q", pid, f[11], f[12])
	}
	return utime + stime, nil
}

// procStat returns the fields of /proc/<pid>/stat from field 3 (state)
// on: the command name (field 2) is in parentheses and may hold spaces.
func procStat(pid int) ([]string, error) {
	data, err := os.ReadFile(fmt.Sprintf("/proc/%d/stat", pid))
	if err != nil {
		return nil, err
	}
	s := string(data)
	i := strings.LastIndexByte(s, ')')
	if i < 0 {
		return nil, fmt.Errorf("/proc/%d/stat: no ')'", pid)
	}
	return strings.Fields(s[i+1:]), nil
}

// clockTicks is the kernel's USER_HZ (100 on Linux), from getconf when it is
// there.
func clockTicks() float64 {
	out, err := exec.Command("getconf", "CLK_TCK").Output()
	if err == nil {
		if n, err := strconv.Atoi(strings.TrimSpace(string(out))); err == nil && n > 0 {
			return float64(n)
		}
	}
	return 100
}

// raiseFDLimit makes room for n open files in this process (each simulated
// hive and feed reader holds a socket). Go already raises the soft limit to
// the hard one at start; this covers a hard limit set lower than that.
func raiseFDLimit(b *testing.B, n uint64) {
	var lim syscall.Rlimit
	if err := syscall.Getrlimit(syscall.RLIMIT_NOFILE, &lim); err != nil {
		b.Fatal(err)
	}
	if lim.Cur >= n {
		return
	}
	lim.Cur = min(n, lim.Max)
	if err := syscall.Setrlimit(syscall.RLIMIT_NOFILE, &lim); err != nil {
		b.Fatalf("raise open file limit to %d: %v", lim.Cur, err)
	}
	if lim.Cur < n {
		b.Logf("open file limit is %d (hard), below the %d wanted", lim.Cur, n)
	}
}

// profileFlags turns on a node's profiler when RBEE_BENCH_PROFILE names a
// folder for the profiles a benchmark takes (see cluster.profile).
func profileFlags() []string {
	if os.Getenv("RBEE_BENCH_PROFILE") == "" {
		return nil
	}
	return []string{"--debug-pprof"}
}

// profile takes a CPU profile of p over the next d when RBEE_BENCH_PROFILE
// names a folder (p started with profileFlags), written there as name.pprof
// (Go's profiles carry their symbols). The returned function waits for it.
func (c *cluster) profile(p *proc, name string, d time.Duration) func() {
	dir := os.Getenv("RBEE_BENCH_PROFILE")
	if dir == "" {
		return func() {}
	}
	done := make(chan struct{})
	go func() {
		defer close(done)
		url := fmt.Sprintf("http://%s/debug/pprof/profile?seconds=%d", p.httpAddr, int(d.Seconds()))
		hc := &http.Client{Timeout: d + 30*time.Second}
		resp, err := hc.Get(url)
		if err != nil {
			c.tb.Logf("profile %s: %v", name, err)
			return
		}
		defer resp.Body.Close()
		data, err := io.ReadAll(resp.Body)
		if err == nil && resp.StatusCode != http.StatusOK {
			err = fmt.Errorf("%s", resp.Status)
		}
		if err == nil {
			err = os.WriteFile(filepath.Join(dir, name+".pprof"), data, 0o644)
		}
		if err != nil {
			c.tb.Logf("profile %s: %v", name, err)
		}
	}()
	return func() { <-done }
}
