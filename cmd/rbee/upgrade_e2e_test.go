package main

import (
	"context"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/rbee/rbee/internal/testutil"
	"github.com/rbee/rbee/node/api"
	"github.com/rbee/rbee/wsapi"
)

// upgradeFrom is the build a rolling upgrade starts from: the last one
// before protocol revisions. RBEE_UPGRADE_FROM names another commit, say
// 1e3ead3^ (before usage accounting) to upgrade across usage_report.
const upgradeFrom = "d2f4061"

// buildAt builds the rbee binary of commit into dir and returns its path.
// Without git or the commit (a shallow clone, a source tarball) the test
// cannot run: it skips and says how to fix that, or fails under
// RBEE_REQUIRE_GIT_HISTORY, which CI sets once it has the history.
// -trimpath keys the build cache by import path, not by this temporary
// directory, so a second run builds only what changed.
func buildAt(tb testing.TB, commit, dir string) string {
	tb.Helper()
	cannot := tb.Skipf
	if os.Getenv("RBEE_REQUIRE_GIT_HISTORY") != "" {
		cannot = tb.Fatalf
	}
	if _, err := exec.LookPath("git"); err != nil {
		cannot("the upgrade test builds rbee at %s with git, which is not installed: %v", commit, err)
	}
	out, err := exec.Command("git", "rev-parse", "--verify", "--quiet", commit+"^{commit}").Output()
	if err != nil {
		cannot("commit %s is not in this clone (a shallow one, or no git repository); the upgrade test builds it as the old version. "+
			"Fetch it with `git fetch --unshallow` (or `git fetch origin %s`) and run again", commit, commit)
	}
	sha := strings.TrimSpace(string(out))
	src := filepath.Join(dir, "src-"+sha[:12])
	if err := os.MkdirAll(src, 0o755); err != nil {
		tb.Fatal(err)
	}
	top, err := exec.Command("git", "rev-parse", "--show-toplevel").Output()
	if err != nil {
		tb.Fatalf("find the repository's root: %v", err)
	}
	// From a subdirectory git archives only that subdirectory.
	archive := exec.Command("git", "-C", strings.TrimSpace(string(top)), "archive", "--format=tar", sha)
	untar := exec.Command("tar", "-x", "-C", src)
	pipe, err := archive.StdoutPipe()
	if err != nil {
		tb.Fatal(err)
	}
	untar.Stdin = pipe
	var stderr strings.Builder
	archive.Stderr, untar.Stderr = &stderr, &stderr
	if err := untar.Start(); err != nil {
		tb.Fatalf("tar: %v", err)
	}
	if err := archive.Run(); err != nil {
		tb.Fatalf("git archive %s: %v\n%s", commit, err, stderr.String())
	}
	if err := untar.Wait(); err != nil {
		tb.Fatalf("untar %s: %v\n%s", commit, err, stderr.String())
	}
	bin := filepath.Join(dir, "rbee-"+sha[:12])
	build := exec.Command("go", "build", "-trimpath", "-o", bin, "./cmd/rbee")
	build.Dir = src
	if out, err := build.CombinedOutput(); err != nil {
		tb.Fatalf("build rbee at %s: %v\n%s", commit, err, out)
	}
	return bin
}

// upgradeNode is one node of the upgrade test: its process now, and what it
// is started with every time.
type upgradeNode struct {
	*proc
	args []string // all but the binary
}

// startAs starts n's process from bin, on n's addresses, and waits until it
// answers /healthz.
func (c *cluster) startAs(n *upgradeNode, bin string) {
	c.tb.Helper()
	if err := c.tryStartAs(n, bin); err != nil {
		c.tb.Fatalf("%v\nlog:\n%s", err, tail(n.log(), 16<<10))
	}
}

// tryStartAs is startAs, returning what went wrong.
func (c *cluster) tryStartAs(n *upgradeNode, bin string) error {
	p := &proc{name: n.name, gossipAddr: n.gossipAddr, httpAddr: n.httpAddr}
	n.proc = p
	if err := c.launch(p, exec.Command(bin, n.args...)); err != nil {
		return err
	}
	return c.waitHealthy(p, 15*time.Second)
}

// upgradeArgs is the command line of upgrade node n (q0 and q1 may be queen,
// q0 first; the others are hives that join q0), serving worker.
func upgradeArgs(c *cluster, n *upgradeNode, worker string, started map[string]*upgradeNode) []string {
	roles, prio := "queen,hive", "0"
	switch n.name {
	case "q0":
		prio = "2"
	case "q1":
		prio = "1"
	default:
		roles = "hive"
	}
	args := []string{"node", "run", "--name", n.name, "--gossip-addr", n.gossipAddr, "--http-addr", n.httpAddr,
		"--cluster-key-file", c.keyFile, "--log-level", c.logLvl, "--data-dir", filepath.Join(c.dir, n.name+"-data"),
		"--roles", roles, "--queen-priority", prio, "--worker", worker + ",model=m,slots=4,instance=" + n.name}
	if n.name != "q0" {
		args = append(args, "--join", started["q0"].gossipAddr)
	}
	return args
}

// upgradeLoad is steady client traffic spread over the entry nodes in
// rotation, as a load balancer in front of the cluster sends it: a node
// leaves the rotation before it is stopped and rejoins once it serves again.
type upgradeLoad struct {
	hc *http.Client

	mu        sync.Mutex
	rotation  []string // HTTP addresses
	next      int
	inflight  map[string]int // requests picked for an address and not yet answered
	sent      int
	failed    []string // what failed, with when and where
	successes []time.Time
}

func (l *upgradeLoad) setRotation(addrs []string) {
	l.mu.Lock()
	defer l.mu.Unlock()
	l.rotation = slices.Clone(addrs)
}

func (l *upgradeLoad) pick() string {
	l.mu.Lock()
	defer l.mu.Unlock()
	l.next++
	addr := l.rotation[l.next%len(l.rotation)]
	l.inflight[addr]++
	return addr
}

// drained reports whether no request picked for addr is still unanswered:
// a balancer that takes a node out waits for that before stopping it, or a
// request picked a moment before would meet a node shutting down.
func (l *upgradeLoad) drained(addr string) error {
	l.mu.Lock()
	defer l.mu.Unlock()
	if n := l.inflight[addr]; n > 0 {
		return fmt.Errorf("%d requests in flight through %s", n, addr)
	}
	return nil
}

// run sends chat requests, half of them streamed, from clients goroutines
// until ctx ends.
func (l *upgradeLoad) run(ctx context.Context, clients int, start time.Time) {
	var wg sync.WaitGroup
	for i := range clients {
		wg.Go(func() {
			for n := 0; ctx.Err() == nil; n++ {
				addr := l.pick()
				sent := time.Now()
				err := l.one(addr, (i+n)%2 == 0)
				l.mu.Lock()
				l.inflight[addr]--
				l.sent++
				if err != nil {
					l.failed = append(l.failed, fmt.Sprintf("t=%v via %s: %v", sent.Sub(start).Round(time.Millisecond), addr, err))
				} else {
					l.successes = append(l.successes, time.Now())
				}
				l.mu.Unlock()
			}
		})
	}
	wg.Wait()
}

func (l *upgradeLoad) one(addr string, stream bool) error {
	body := fmt.Sprintf(`{"model":"m","messages":[{"role":"user","content":"hi"}],"stream":%v}`, stream)
	resp, err := l.hc.Post("http://"+addr+"/v1/chat/completions", "application/json", strings.NewReader(body))
	if err != nil {
		return err
	}
	defer resp.Body.Close()
	b, err := io.ReadAll(resp.Body)
	if err != nil {
		return fmt.Errorf("read answer: %w", err)
	}
	if resp.StatusCode != http.StatusOK || !(strings.Contains(string(b), "[DONE]") || strings.Contains(string(b), `"ok"`)) {
		return fmt.Errorf("status %d: %.200s", resp.StatusCode, b)
	}
	return nil
}

// longestGap is the longest time between two successes.
func (l *upgradeLoad) longestGap() time.Duration {
	l.mu.Lock()
	defer l.mu.Unlock()
	ts := slices.Clone(l.successes)
	slices.SortFunc(ts, func(a, b time.Time) int { return a.Compare(b) })
	var gap time.Duration
	for i := 1; i < len(ts); i++ {
		gap = max(gap, ts[i].Sub(ts[i-1]))
	}
	return gap
}

// TestE2E_RollingUpgrade: a cluster of the previous build under steady load
// is upgraded to this one node by node, each stopped gracefully (SIGTERM) and
// started again with the same name, addresses and data directory, the queen
// last and the queen first. No request fails in either order: new nodes send
// an old queen nothing it cannot read, and a new queen sends old nodes
// nothing they cannot read, and no session closes over a message type.
// Upgrading from 1e3ead3^ to d2f4061 (RBEE_UPGRADE_FROM=1e3ead3^ with
// RBEE_TEST_BIN a d2f4061 build), queen last, the old queen closed each new
// node's session on its usage_report, again after every redial; the entry
// nodes' retries hid it from the clients at this load.
func TestE2E_RollingUpgrade(t *testing.T) {
	from := upgradeFrom
	if c := os.Getenv("RBEE_UPGRADE_FROM"); c != "" {
		from = c
	}
	started := time.Now()
	oldBin := buildAt(t, from, t.TempDir())
	t.Logf("built rbee at %s in %v", from, time.Since(started).Round(time.Millisecond))

	// q0 is queen (the highest priority), q1 its successor; h2 and h3 are
	// hives that may not be queen. Every node serves a worker of its own
	// and takes client requests.
	names := []string{"q0", "q1", "h2", "h3"}
	for _, order := range []struct {
		name  string
		steps []string
	}{
		// The old queen serves new nodes until the end.
		{"queen last", []string{"h2", "h3", "q1", "q0"}},
		// After q0 the new q1 holds the seat and serves old hives.
		{"queen first", []string{"q1", "q0", "h2", "h3"}},
	} {
		t.Run(order.name, func(t *testing.T) {
			c := newCluster(t)
			nodes := map[string]*upgradeNode{}
			for _, name := range names {
				w := slowWorker(t, 20*time.Millisecond)
				n := &upgradeNode{}
				for attempt := 1; ; attempt++ {
					ports, err := freePorts(2)
					if err != nil {
						t.Fatal(err)
					}
					n.proc = &proc{name: name,
						gossipAddr: net.JoinHostPort("127.0.0.1", strconv.Itoa(ports[0])),
						httpAddr:   net.JoinHostPort("127.0.0.1", strconv.Itoa(ports[1]))}
					n.args = upgradeArgs(c, n, w.URL, nodes)
					err = c.tryStartAs(n, oldBin)
					if err == nil {
						break
					}
					// Lost a port to another process between picking
					// and binding (as startOne).
					if attempt == maxStartAttempts || !n.Exited() || !strings.Contains(n.log(), "address already in use") {
						t.Fatalf("%v\nlog:\n%s", err, tail(n.log(), 16<<10))
					}
				}
				nodes[name] = n
			}
			procs := func() []*proc {
				var ps []*proc
				for _, name := range names {
					ps = append(ps, nodes[name].proc)
				}
				return ps
			}
			if q := c.waitConverged(procs(), 20*time.Second); q != "q0" {
				t.Fatalf("queen %s, want q0", q)
			}
			c.waitServing(nodes["q0"].proc, names, time.Time{})

			load := &upgradeLoad{inflight: map[string]int{}, hc: &http.Client{Timeout: 30 * time.Second,
				Transport: &http.Transport{MaxIdleConnsPerHost: 8}}}
			defer load.hc.CloseIdleConnections()
			rotation := func(except string) []string {
				var addrs []string
				for _, name := range names {
					if name != except {
						addrs = append(addrs, nodes[name].httpAddr)
					}
				}
				return addrs
			}
			load.setRotation(rotation(""))
			ctx, stopLoad := context.WithCancel(context.Background())
			var loadDone sync.WaitGroup
			begin := time.Now()
			loadDone.Go(func() { load.run(ctx, 4, begin) })
			// Cancel on any exit, so a failed step does not leave the
			// clients running past the test.
			defer func() {
				stopLoad()
				loadDone.Wait()
			}()
			// Load on the old cluster first, so that every node has
			// usage to report when the upgrade begins.
			testutil.Every(pollInterval).Eventually(t, 10*time.Second, "requests succeed before the upgrade", func() error {
				load.mu.Lock()
				defer load.mu.Unlock()
				if len(load.successes) < 50 {
					return fmt.Errorf("%d successes", len(load.successes))
				}
				return nil
			})

			for _, name := range order.steps {
				n := nodes[name]
				load.setRotation(rotation(name))
				testutil.Every(pollInterval).Eventually(t, 10*time.Second, "requests through "+name+" answered",
					func() error { return load.drained(n.httpAddr) })
				stopAt := time.Now()
				n.signal(t, syscall.SIGTERM, 20*time.Second)
				if code := n.ExitCode(); code != 0 {
					t.Fatalf("%s exited with %d after SIGTERM, want 0", name, code)
				}
				stopped := time.Now()
				c.startAs(n, rbeeBin)
				q := c.waitConverged(procs(), 20*time.Second)
				c.waitServing(n.proc, names, stopped)
				load.setRotation(rotation(""))
				t.Logf("t=%v %s: stopped in %v, serving again %v later; queen %s",
					stopAt.Sub(begin).Round(time.Millisecond), name, stopped.Sub(stopAt).Round(time.Millisecond),
					time.Since(stopped).Round(time.Millisecond), q)
			}
			// A second of load on the upgraded cluster.
			load.mu.Lock()
			n0 := len(load.successes)
			load.mu.Unlock()
			testutil.Every(pollInterval).Eventually(t, 10*time.Second, "requests succeed after the upgrade", func() error {
				load.mu.Lock()
				defer load.mu.Unlock()
				if len(load.successes) < n0+50 {
					return fmt.Errorf("%d successes since the last step", len(load.successes)-n0)
				}
				return nil
			})
			stopLoad()
			loadDone.Wait()

			gap := load.longestGap()
			t.Logf("%s, upgrading from %s: %d requests sent, %d failed, longest gap between successes %v",
				order.name, from, load.sent, len(load.failed), gap.Round(time.Millisecond))
			if len(load.failed) > 0 {
				t.Errorf("%d of %d requests failed; the first:\n%s", len(load.failed), load.sent,
					strings.Join(load.failed[:min(len(load.failed), 10)], "\n"))
			}
			c.mu.Lock()
			every := slices.Clone(c.procs) // old and new processes
			c.mu.Unlock()
			for _, p := range every {
				if s := skippedOrClosed(p); s != "" {
					t.Errorf("%s (pid %d): %s", p.name, p.Pid(), s)
				}
			}
			ms, err := c.members(nodes["h2"].proc)
			if err != nil {
				t.Fatal(err)
			}
			for _, m := range ms {
				if m.Status == "alive" && m.Revision != wsapi.Revision {
					t.Errorf("member %s announces revision %d after the upgrade, want %d", m.Name, m.Revision, wsapi.Revision)
				}
			}
		})
	}
}

// waitServing waits until p lists model m and the queen has telemetry of
// every hive in hives, each with its worker (instance: the hive's name),
// reported since after. Other workers may show up: the collector also sees
// those other tests on this machine run in rbee.slice.
func (c *cluster) waitServing(p *proc, hives []string, after time.Time) {
	c.tb.Helper()
	testutil.Every(pollInterval).Eventually(c.tb, 20*time.Second, p.name+" serves through the queen", func() error {
		var models struct{ Data []struct{ ID string } }
		if err := c.getJSON(p.httpAddr, api.PathModels, &models); err != nil {
			return err
		}
		if !slices.ContainsFunc(models.Data, func(m struct{ ID string }) bool { return m.ID == "m" }) {
			return fmt.Errorf("/v1/models of %s: %+v", p.name, models)
		}
		var v api.ClusterView
		if err := c.getJSON(p.httpAddr, api.PathCluster, &v); err != nil {
			return err
		}
		var errs []error
		for _, name := range hives {
			i := slices.IndexFunc(v.Hives, func(h api.HiveView) bool { return h.HiveID == name })
			switch {
			case i < 0:
				errs = append(errs, fmt.Errorf("queen %s lists no hive %s", v.Queen, name))
			case !v.Hives[i].Online || !v.Hives[i].LastSeen.After(after) ||
				!slices.ContainsFunc(v.Hives[i].Workers, func(w wsapi.ProcessStats) bool { return w.Instance == name }):
				errs = append(errs, fmt.Errorf("queen %s: hive %s online %v, last seen %v, workers %+v",
					v.Queen, name, v.Hives[i].Online, v.Hives[i].LastSeen, v.Hives[i].Workers))
			}
		}
		return errors.Join(errs...)
	})
}

// skippedOrClosed says what in p's log shows a session that broke over a
// message type (the old failure) or a message held back for one, or "" when
// nothing does.
func skippedOrClosed(p *proc) string {
	var bad []string
	for _, line := range strings.Split(p.log(), "\n") {
		if strings.Contains(line, "unknown message type") || strings.Contains(line, "not expected from a hive") ||
			strings.Contains(line, "unknown to the node's revision") {
			bad = append(bad, line)
		}
	}
	if len(bad) == 0 {
		return ""
	}
	return fmt.Sprintf("%d log lines about message types, the first: %s", len(bad), bad[0])
}
