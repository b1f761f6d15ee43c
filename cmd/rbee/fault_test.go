package main

// Fault tests: real `rbee node run` processes, each in its own network
// namespace on one bridge (internal/netlab), with links cut as a network
// fails (packets vanish; nothing is reset), processes frozen with SIGSTOP,
// and the bridge captured with tcpdump. They need root; elsewhere they skip
// and say why (CI runs as root and requires them: RBEE_REQUIRE_NETNS).

import (
	"bufio"
	"bytes"
	"context"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"os"
	"slices"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"syscall"
	"testing"
	"time"

	"github.com/rbee/rbee/internal/netlab"
	"github.com/rbee/rbee/internal/testutil"
)

// Every node listens on the same ports in its own namespace.
const (
	netGossipPort = 7946
	netHTTPPort   = 7833
	netSimPort    = 9000
)

// netCluster is a cluster whose nodes live in network namespaces.
type netCluster struct {
	*cluster
	lab *netlab.Lab
}

func newNetCluster(t testing.TB) *netCluster {
	t.Helper()
	lab := netlab.New(t) // skips without root
	return &netCluster{cluster: newCluster(t), lab: lab}
}

// host adds a namespace.
func (nc *netCluster) host(name string) *netlab.Host { return nc.lab.Host(name) }

// node runs `rbee node run` in h and waits for its /healthz.
func (nc *netCluster) node(h *netlab.Host, join string, extra ...string) *proc {
	nc.tb.Helper()
	p := &proc{name: h.Name, gossipAddr: h.Addr(netGossipPort), httpAddr: h.Addr(netHTTPPort)}
	args := []string{"node", "run", "--name", h.Name, "--gossip-addr", p.gossipAddr, "--http-addr", p.httpAddr,
		"--cluster-key-file", nc.keyFile, "--log-level", nc.logLvl}
	if join != "" {
		args = append(args, "--join", join)
	}
	args = append(args, extra...)
	if err := nc.launch(p, h.Command(rbeeBin, args...)); err != nil {
		nc.tb.Fatal(err)
	}
	if err := nc.waitHealthy(p, 15*time.Second); err != nil {
		nc.tb.Fatal(err)
	}
	return p
}

// sim runs a simulated worker for model on loopback inside h, and returns
// the --worker flag that points h's node at it.
func (nc *netCluster) sim(h *netlab.Host, model string, args ...string) []string {
	nc.tb.Helper()
	p := &proc{name: h.Name + "-sim"}
	all := append([]string{"worker", "simulate", "--model", model, "--port", strconv.Itoa(netSimPort)}, args...)
	if err := nc.launch(p, h.Command(rbeeBin, all...)); err != nil {
		nc.tb.Fatal(err)
	}
	return []string{"--worker", fmt.Sprintf("http://127.0.0.1:%d,model=%s", netSimPort, model)}
}

// chat posts a chat completion to the node at addr, as a client on another
// machine does (with the cluster token).
func (nc *netCluster) chat(ctx context.Context, addr, model, prompt string, stream bool) (*http.Response, error) {
	body := fmt.Sprintf(`{"model":%q,"messages":[{"role":"user","content":%q}],"stream":%v,"max_tokens":4}`, model, prompt, stream)
	req, err := http.NewRequestWithContext(ctx, http.MethodPost, "http://"+addr+"/v1/chat/completions", strings.NewReader(body))
	if err != nil {
		return nil, err
	}
	req.Header.Set("Authorization", "Bearer "+nc.key.HTTPToken())
	req.Header.Set("Content-Type", "application/json")
	return http.DefaultClient.Do(req)
}

// waitServed waits until model can be served through the node at addr.
func (nc *netCluster) waitServed(addr, model string) {
	nc.tb.Helper()
	testutil.Every(50*time.Millisecond).Eventually(nc.tb, 20*time.Second, model+" served through "+addr, func() error {
		ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
		defer cancel()
		resp, err := nc.chat(ctx, addr, model, "hi", false)
		if err != nil {
			return err
		}
		b, _ := io.ReadAll(resp.Body)
		resp.Body.Close()
		if resp.StatusCode != 200 {
			return fmt.Errorf("%d %s", resp.StatusCode, b)
		}
		return nil
	})
}

// queenOf is the queen a node names, "" when it does not answer.
func (nc *netCluster) queenOf(p *proc) string {
	h, err := nc.health(p)
	if err != nil {
		return ""
	}
	return h.Queen
}

// TestFault_PartitionHealsIntoOneCluster: the queen is cut off; the others
// elect another; after the cut heals, the cluster is one again, with the
// queen the majority chose. Today's main merged 5 s cuts 4 times in 5 and
// 60 s cuts never: memberlist stops gossiping to members it declared dead
// after 30 s, and nothing redialled them.
func TestFault_PartitionHealsIntoOneCluster(t *testing.T) {
	for _, cut := range []time.Duration{5 * time.Second, 60 * time.Second} {
		t.Run("cut="+cut.String(), func(t *testing.T) {
			healed := partitionAndHeal(t, cut)
			t.Logf("partition of %v: one cluster with one queen %v after the heal", cut, healed.Round(time.Millisecond))
		})
	}
}

// partitionAndHeal runs one trial and returns the time from the heal to one
// cluster with one queen.
func partitionAndHeal(tb testing.TB, cut time.Duration) time.Duration {
	nc := newNetCluster(tb)
	ha, hb, hc, hd := nc.host("a"), nc.host("b"), nc.host("c"), nc.host("d")
	a := nc.node(ha, "")
	ps := []*proc{a}
	for _, h := range []*netlab.Host{hb, hc, hd} {
		ps = append(ps, nc.node(h, a.gossipAddr))
	}
	if q := nc.waitConverged(ps, 30*time.Second); q != "a" {
		tb.Fatalf("queen %s before the cut, want a", q)
	}
	ha.Cut()
	cutAt := time.Now()
	newQueen := nc.waitNewQueen(ps[1:], "a", 20*time.Second)
	// The partition itself: a fixed length of time, not a condition.
	time.Sleep(max(cut-time.Since(cutAt), 0))
	ha.Heal()
	healedAt := time.Now()
	testutil.Every(20*time.Millisecond).Eventually(tb, 60*time.Second, "one cluster with one queen after the heal", func() error {
		for _, p := range ps {
			ms, err := nc.members(p)
			if err != nil {
				return fmt.Errorf("%s: %w", p.name, err)
			}
			alive := 0
			for _, m := range ms {
				if m.Status == "alive" {
					alive++
				}
			}
			if alive != len(ps) {
				return fmt.Errorf("%s sees %d of %d alive", p.name, alive, len(ps))
			}
		}
		q, ok, state := nc.queens(ps)
		if !ok {
			return errors.New(state)
		}
		if q != newQueen {
			return fmt.Errorf("all agree on %s; the majority's queen was %s", q, newQueen)
		}
		return nil
	})
	return time.Since(healedAt)
}

// BenchmarkPartitionHeal: the time from the heal of a partition that cut
// the queen off to one cluster with one queen, for cuts of 5 s and 60 s
// (RBEE_BENCH_CUTS=5s,60s,10m for others).
func BenchmarkPartitionHeal(b *testing.B) {
	cuts := []time.Duration{5 * time.Second, 60 * time.Second}
	if env := os.Getenv("RBEE_BENCH_CUTS"); env != "" {
		cuts = nil
		for _, f := range strings.Split(env, ",") {
			d, err := time.ParseDuration(f)
			if err != nil {
				b.Fatalf("RBEE_BENCH_CUTS: %v", err)
			}
			cuts = append(cuts, d)
		}
	}
	for b.Loop() {
		for _, cut := range cuts {
			healed := partitionAndHeal(b, cut)
			fmt.Printf("\npartition heal: queen cut off %v, one cluster with one queen %v after the heal\n", cut, healed.Round(time.Millisecond))
			b.ReportMetric(float64(healed.Milliseconds()), "heal_ms_after_"+cut.String())
		}
	}
}

// loadStats is what clients saw while a fault happened.
type loadStats struct {
	ok, notFound, serverErr, other int
	// failures holds a few failed answers, for the log.
	failures []string
	// firstOKAfter is the first success completed after the fault began.
	firstOKAfter time.Duration
	// maxGap is the longest time without a completed success.
	maxGap time.Duration
	// maxLatency is the longest any request took, answered or not.
	maxLatency time.Duration
}

func (s loadStats) String() string {
	return fmt.Sprintf("%d ok, %d 404, %d 5xx, %d other; first success of a request sent after the fault %v after it, longest gap between successes %v, longest request %v; failures: %q",
		s.ok, s.notFound, s.serverErr, s.other, s.firstOKAfter.Round(time.Millisecond), s.maxGap.Round(time.Millisecond), s.maxLatency.Round(time.Millisecond), s.failures)
}

// runLoad sends non-streaming chat requests through entry from clients
// goroutines until stop, and reports what they saw; faultAt is when the
// fault was made (read after the load ends).
func (nc *netCluster) runLoad(entry *proc, model string, clients int, stop <-chan struct{}, faultAt *atomic.Int64) loadStats {
	var mu sync.Mutex
	var st loadStats
	var oks []time.Time
	var startedOKs [][2]time.Time // start and end of each success
	var wg sync.WaitGroup
	for range clients {
		wg.Go(func() {
			for {
				select {
				case <-stop:
					return
				default:
				}
				ctx, cancel := context.WithTimeout(context.Background(), 45*time.Second)
				sent := time.Now()
				resp, err := nc.chat(ctx, entry.httpAddr, model, "hi", false)
				code := 0
				var body []byte
				if err == nil {
					body, _ = io.ReadAll(resp.Body)
					resp.Body.Close()
					code = resp.StatusCode
				}
				cancel()
				mu.Lock()
				st.maxLatency = max(st.maxLatency, time.Since(sent))
				if code != 200 && len(st.failures) < 5 {
					st.failures = append(st.failures, fmt.Sprintf("%d %.200s %v", code, body, err))
				}
				switch {
				case code == 200:
					st.ok++
					oks = append(oks, time.Now())
					startedOKs = append(startedOKs, [2]time.Time{sent, time.Now()})
				case code == 404:
					st.notFound++
				case code >= 500:
					st.serverErr++
				default:
					st.other++
				}
				mu.Unlock()
			}
		})
	}
	wg.Wait()
	fault := time.Unix(0, faultAt.Load())
	slices.SortFunc(oks, func(a, b time.Time) int { return a.Compare(b) })
	for i, t := range oks {
		if i > 0 {
			st.maxGap = max(st.maxGap, t.Sub(oks[i-1]))
		}
	}
	for _, se := range startedOKs {
		if se[0].After(fault) && (st.firstOKAfter == 0 || se[1].Sub(fault) < st.firstOKAfter) {
			st.firstOKAfter = se[1].Sub(fault)
		}
	}
	return st
}

// queenWatch samples the queen a node names, and counts the changes.
type queenWatch struct {
	mu   sync.Mutex
	seen []string
}

func (nc *netCluster) watchQueen(p *proc, stop <-chan struct{}) (*queenWatch, *sync.WaitGroup) {
	w := &queenWatch{}
	var wg sync.WaitGroup
	wg.Go(func() {
		t := time.NewTicker(20 * time.Millisecond)
		defer t.Stop()
		for {
			select {
			case <-stop:
				return
			case <-t.C:
			}
			if q := nc.queenOf(p); q != "" {
				w.mu.Lock()
				if len(w.seen) == 0 || w.seen[len(w.seen)-1] != q {
					w.seen = append(w.seen, q)
				}
				w.mu.Unlock()
			}
		}
	})
	return w, &wg
}

func (w *queenWatch) handovers() (int, []string) {
	w.mu.Lock()
	defer w.mu.Unlock()
	return len(w.seen) - 1, append([]string(nil), w.seen...)
}

// faultUnderLoad builds queen a (no workers), hives b and c (a simulated
// worker each) and load through b, makes the fault, and after settle
// reports what the clients saw and the queens b named.
func faultUnderLoad(t *testing.T, fault func(a *proc, ha *netlab.Host), settle time.Duration) (loadStats, int, []string) {
	nc := newNetCluster(t)
	ha, hb, hc := nc.host("a"), nc.host("b"), nc.host("c")
	a := nc.node(ha, "")
	simArgs := []string{"--slots", "8", "--tokens-per-second", "0", "--max-tokens", "1"}
	b := nc.node(hb, a.gossipAddr, nc.sim(hb, "m", simArgs...)...)
	c := nc.node(hc, a.gossipAddr, nc.sim(hc, "m", simArgs...)...)
	if q := nc.waitConverged([]*proc{a, b, c}, 30*time.Second); q != "a" {
		t.Fatalf("queen %s, want a", q)
	}
	nc.waitServed(b.httpAddr, "m")

	stop := make(chan struct{})
	var faultAt atomic.Int64
	watch, watchWG := nc.watchQueen(b, stop)
	var st loadStats
	var loadWG sync.WaitGroup
	loadWG.Go(func() { st = nc.runLoad(b, "m", 8, stop, &faultAt) })
	// A second of load before the fault, then the fault, then time for
	// the cluster to settle: fixed lengths of time, not conditions.
	time.Sleep(time.Second)
	faultAt.Store(time.Now().UnixNano())
	fault(a, ha)
	time.Sleep(settle)
	if b.Exited() || c.Exited() {
		t.Fatal("a survivor exited")
	}
	close(stop)
	loadWG.Wait()
	watchWG.Wait()
	n, seen := watch.handovers()
	return st, n, seen
}

// TestFault_QueenCutOffUnderLoad: clients keep sending through a survivor
// while the queen's cable is pulled; no request fails (waiting ones are asked
// again of the new queen, which does not answer 404 before the hives have
// reported). Today's main stalled ~6 s (every session to the old queen hung in
// the close handshake) and answered 404s.
func TestFault_QueenCutOffUnderLoad(t *testing.T) {
	st, n, seen := faultUnderLoad(t, func(_ *proc, ha *netlab.Host) { ha.Cut() }, 8*time.Second)
	t.Logf("queen cut off under load: %s; queens seen through b: %v", st, seen)
	if st.notFound+st.serverErr+st.other > 0 || st.ok == 0 {
		t.Fatalf("clients saw failures: %s", st)
	}
	if n != 1 {
		t.Errorf("%d handovers (%v), want 1", n, seen)
	}
	// Failure detection takes 1 to 2 s; nothing else should add to it.
	// Today's main stalled about 6 s: every node's session to the old
	// queen waited 5 s in the close handshake before the new one opened.
	if st.maxGap > 4*time.Second {
		t.Errorf("no request completed for %v: sessions waited on the old queen", st.maxGap)
	}
}

// TestFault_FrozenQueenDoesNotTakeTheSeatBack: the queen is frozen
// (SIGSTOP) long enough to be replaced, then woken: it steps down instead of
// taking the seat back because it was there first, so a stall costs one
// handover, not two.
func TestFault_FrozenQueenDoesNotTakeTheSeatBack(t *testing.T) {
	for _, frozen := range []time.Duration{3 * time.Second, 10 * time.Second} {
		t.Run("frozen="+frozen.String(), func(t *testing.T) {
			st, n, seen := faultUnderLoad(t, func(a *proc, _ *netlab.Host) {
				_ = a.Signal(syscall.SIGSTOP)
				time.Sleep(frozen) // the freeze itself
				_ = a.Signal(syscall.SIGCONT)
			}, 5*time.Second)
			t.Logf("queen frozen %v under load: %s; queens seen through b: %v", frozen, st, seen)
			if n != 1 {
				t.Fatalf("%d handovers (%v), want 1: the woken queen took the seat back", n, seen)
			}
			if st.notFound > 0 || st.ok == 0 {
				t.Fatalf("clients saw failures: %s", st)
			}
		})
	}
}

// TestFault_SeedDiesRightAfterJoins: b and c join through a, which dies at
// once, before they may have heard of each other; when a comes back (joining
// b, as in the report), all three are one cluster again: every node keeps
// redialling its seeds. Today's main merged a and b only.
func TestFault_SeedDiesRightAfterJoins(t *testing.T) {
	for i := range 3 {
		t.Run(fmt.Sprint("trial=", i), func(t *testing.T) {
			nc := newNetCluster(t)
			ha, hb, hc := nc.host("a"), nc.host("b"), nc.host("c")
			a := nc.node(ha, "")
			var b, c *proc
			var wg sync.WaitGroup
			wg.Go(func() { b = nc.node(hb, a.gossipAddr) })
			wg.Go(func() { c = nc.node(hc, a.gossipAddr) })
			wg.Wait()
			a.signal(t, syscall.SIGKILL, 10*time.Second)
			a2 := nc.node(ha, b.gossipAddr)
			nc.waitConverged([]*proc{a2, b, c}, 30*time.Second)
		})
	}
}

// TestFault_NothingReadableOnTheWire: with a cluster key, nothing that
// crosses the network between nodes is readable: not the prompt, not the
// answer, not the cluster token. Today's main sent all three in cleartext
// between the entry node and the hive.
func TestFault_NothingReadableOnTheWire(t *testing.T) {
	nc := newNetCluster(t)
	ha, hb, hc := nc.host("a"), nc.host("b"), nc.host("c")
	a := nc.node(ha, "")
	b := nc.node(hb, a.gossipAddr, "--roles", "none")
	c := nc.node(hc, a.gossipAddr, nc.sim(hc, "m", "--tokens-per-second", "0")...)
	nc.waitConverged([]*proc{a, b, c}, 30*time.Second)
	nc.waitServed(b.httpAddr, "m")

	capture := nc.lab.Capture()
	testutil.Every(20*time.Millisecond).Eventually(t, 10*time.Second, "the capture sees packets", func() error {
		if capture.Size() <= 24 { // a pcap file header alone
			return errors.New("nothing captured yet")
		}
		return nil
	})
	// The control: plain HTTP from b's machine to c (the CLI without the
	// key). Seeing it readable shows the capture would see cleartext.
	const control = "GET /v1/cluster HTTP/1.1"
	ctlCmd := hb.Command(rbeeBin, "status", "--http-addr", c.httpAddr)
	ctlCmd.Env = envWithoutRbee()
	if out, err := ctlCmd.CombinedOutput(); err == nil {
		t.Fatalf("rbee status without the key from another machine succeeded: %s", out)
	}
	const prompt = "the-secret-prompt-8c1f3e"
	var answers []string
	for _, stream := range []bool{false, true} {
		resp, err := nc.chat(context.Background(), b.httpAddr, "m", prompt, stream)
		if err != nil {
			t.Fatal(err)
		}
		body, _ := io.ReadAll(resp.Body)
		resp.Body.Close()
		if resp.StatusCode != 200 {
			t.Fatalf("stream=%v: %d %s", stream, resp.StatusCode, body)
		}
		answers = append(answers, string(body))
	}
	// The simulator's made-up answer, as the client got it.
	var content string
	if i := strings.Index(answers[0], `"content":"`); i >= 0 {
		content = answers[0][i+len(`"content":"`):]
		content = content[:strings.IndexByte(content, '"')]
	}
	if len(content) < 8 {
		t.Fatalf("no answer text to look for in %q", answers[0])
	}
	// Captured packets reach the file a little after they cross the wire;
	// telemetry keeps flowing meanwhile.
	testutil.Every(50*time.Millisecond).Eventually(t, 15*time.Second, "the capture holds the traffic", func() error {
		if n := capture.Size(); n < 16<<10 {
			return fmt.Errorf("%d bytes captured", n)
		}
		return nil
	})
	wire := capture.Stop()
	if !bytes.Contains(wire, []byte(control)) {
		t.Fatal("the capture missed the control's cleartext: it proves nothing about the rest")
	}
	for what, secret := range map[string]string{"the prompt": prompt, "the answer": content,
		"the cluster token": nc.key.HTTPToken(), "the lease header": "X-Rbee-Lease", "telemetry": `"hive_telemetry"`} {
		if bytes.Contains(wire, []byte(secret)) {
			t.Errorf("%s (%q) crossed the wire between nodes readable", what, secret)
		}
	}
	t.Logf("captured %d bytes between the nodes; none readable", len(wire))
}

// TestFault_LocalhostBindsLoopbackOnly: without a key a node may listen on
// loopback only, and "localhost" must mean loopback; today's main bound
// gossip to every interface for it (memberlist reads a name as no address).
func TestFault_LocalhostBindsLoopbackOnly(t *testing.T) {
	nc := newNetCluster(t)
	h := nc.host("x")
	p := &proc{name: "x"}
	cmd := h.Command(rbeeBin, "node", "run", "--name", "x", "--gossip-addr", "localhost:7946", "--http-addr", "localhost:7833")
	if err := nc.launch(p, cmd); err != nil {
		t.Fatal(err)
	}
	testutil.Every(50*time.Millisecond).Eventually(t, 15*time.Second, "x started", func() error {
		if p.Exited() {
			return testutil.Stop(fmt.Errorf("exited: %v\n%s", p.Err(), p.log()))
		}
		if !strings.Contains(p.log(), "node started") {
			return errors.New("not yet")
		}
		return nil
	})
	for _, port := range []int{7946, 7833} {
		c, err := net.DialTimeout("tcp", h.Addr(port), 2*time.Second)
		if err == nil {
			c.Close()
			t.Errorf("port %d answers on %s, the namespace's network address: not loopback only", port, h.IP)
		}
	}
}

// TestFault_StreamThroughCutHiveEnds: the only hive of a model is cut off
// mid-stream: once the cluster declares it dead, the stream's continuation
// has nowhere to go and the client gets an error event saying so, instead of
// a stall for as long as the cut lasts.
func TestFault_StreamThroughCutHiveEnds(t *testing.T) {
	nc := newNetCluster(t)
	ha, hb, hc := nc.host("a"), nc.host("b"), nc.host("c")
	a := nc.node(ha, "")
	b := nc.node(hb, a.gossipAddr, "--roles", "none")
	c := nc.node(hc, a.gossipAddr, nc.sim(hc, "m", "--tokens-per-second", "200", "--max-tokens", "500")...)
	nc.waitConverged([]*proc{a, b, c}, 30*time.Second)
	nc.waitServed(b.httpAddr, "m")

	body := `{"model":"m","messages":[{"role":"user","content":"hi"}],"stream":true,"max_tokens":500}`
	req, _ := http.NewRequest(http.MethodPost, "http://"+b.httpAddr+"/v1/chat/completions", strings.NewReader(body))
	req.Header.Set("Authorization", "Bearer "+nc.key.HTTPToken())
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	if resp.StatusCode != 200 {
		t.Fatalf("stream: %d", resp.StatusCode)
	}
	sc := bufio.NewScanner(resp.Body)
	if !sc.Scan() {
		t.Fatalf("no first event: %v", sc.Err())
	}
	hc.Cut()
	defer hc.Heal()
	cutAt := time.Now()
	ended := make(chan error, 1)
	var last string
	go func() {
		for sc.Scan() {
			if strings.HasPrefix(sc.Text(), "data: ") {
				last = sc.Text()
			}
		}
		ended <- sc.Err()
	}()
	// The cut lasts longer than this wait: a stream that stalls until the
	// heal fails here.
	select {
	case err := <-ended:
		if err == nil && !strings.Contains(last, `"error"`) {
			t.Fatalf("the stream ended cleanly with %q; want an error for a cut-off hive", last)
		}
		if err == nil {
			err = errors.New(last)
		}
		t.Logf("stream through a cut-off hive broke %v after the cut: %v", time.Since(cutAt).Round(time.Millisecond), err)
	case <-time.After(30 * time.Second):
		t.Fatal("the stream still stalls 30 s after its hive was cut off")
	}
}

// TestE2E_BodyBounds: a node holds at most --body-memory of request bodies
// (more get 503 with Retry-After, in the OpenAI shape) and gives a trickled
// body --body-timeout (then 408). Today's main buffered every body twice over
// with no bound, and waited forever for a trickle.
func TestE2E_BodyBounds(t *testing.T) {
	c := newCluster(t)
	sim := slowWorker(t, 3*time.Second)
	p := c.start(nodeSpec{name: "n0", extra: []string{"--worker", sim.URL + ",model=m,slots=1",
		// 6 s, not less: the eight bodies come from this (race-built)
		// process, which under load took over 2 s to send them.
		"--body-memory", "64", "--body-timeout", "6s"}})[0]
	testutil.Every(50*time.Millisecond).Eventually(t, 20*time.Second, "m served", modelServed(c, p))

	big := bytes.Repeat([]byte(" "), 30<<20)
	copy(big, `{"model":"m","messages":[]}`)
	type result struct {
		code       int
		retryAfter string
		body       string
	}
	results := make(chan result, 8)
	var wg sync.WaitGroup
	for range 8 {
		wg.Go(func() {
			resp, err := http.Post("http://"+p.httpAddr+"/v1/chat/completions", "application/json", bytes.NewReader(big))
			if err != nil {
				results <- result{code: -1, body: err.Error()}
				return
			}
			b, _ := io.ReadAll(resp.Body)
			resp.Body.Close()
			results <- result{resp.StatusCode, resp.Header.Get("Retry-After"), string(b)}
		})
	}
	wg.Wait()
	close(results)
	var refused, served int
	for r := range results {
		switch r.code {
		case 503:
			if r.retryAfter == "" || !strings.Contains(r.body, "server_overloaded") {
				t.Errorf("503 without Retry-After or reason: %+v", r)
			}
			refused++
		case 200:
			served++
		default:
			t.Errorf("unexpected answer: %d %.200s", r.code, r.body)
		}
	}
	if refused == 0 || served == 0 {
		t.Fatalf("%d served, %d refused: want some of each with 64 MiB for eight 30 MiB bodies", served, refused)
	}
	rss := procRSS(t, p.Pid())
	t.Logf("eight 30 MiB bodies at once: %d served, %d refused (503), node RSS %d MiB", served, refused, rss>>20)

	// A body that trickles: headers, a few bytes, then nothing. Refused
	// (here for a DNS-rebinding Host) it is answered at once; accepted,
	// within --body-timeout.
	for _, tc := range []struct {
		host string
		want int
	}{{"evil.example", http.StatusForbidden}, {p.httpAddr, http.StatusRequestTimeout}} {
		conn, err := net.Dial("tcp", p.httpAddr)
		if err != nil {
			t.Fatal(err)
		}
		fmt.Fprintf(conn, "POST /v1/chat/completions HTTP/1.1\r\nHost: %s\r\nContent-Type: application/json\r\nContent-Length: 100000\r\n\r\n{\"model\":", tc.host)
		_ = conn.SetReadDeadline(time.Now().Add(30 * time.Second))
		resp, err := http.ReadResponse(bufio.NewReader(conn), nil)
		if err != nil {
			conn.Close()
			t.Fatalf("Host %s: no answer to a trickled body: %v", tc.host, err)
		}
		resp.Body.Close()
		conn.Close()
		if resp.StatusCode != tc.want {
			t.Fatalf("Host %s: trickled body answered %d, want %d", tc.host, resp.StatusCode, tc.want)
		}
	}
}

// procRSS reads a process's resident memory from /proc.
func procRSS(t *testing.T, pid int) int64 {
	t.Helper()
	b, err := os.ReadFile(fmt.Sprintf("/proc/%d/status", pid))
	if err != nil {
		t.Fatal(err)
	}
	for _, l := range strings.Split(string(b), "\n") {
		if f := strings.Fields(l); len(f) >= 2 && f[0] == "VmHWM:" {
			kb, _ := strconv.ParseInt(f[1], 10, 64)
			return kb << 10
		}
	}
	return 0
}
