package main

// The end-to-end harness: it builds the rbee binary once and runs real
// `rbee node run` processes on 127.0.0.1, talking to them only through their
// HTTP API, their WebSocket endpoints and the CLI, as an operator would.

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"net"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"go.uber.org/goleak"

	"github.com/rbee/rbee/internal/launcher"
	"github.com/rbee/rbee/internal/testutil"
	"github.com/rbee/rbee/node/api"
	"github.com/rbee/rbee/wsapi"
)

// rbeeBin is the binary built by TestMain.
var rbeeBin string

func TestMain(m *testing.M) {
	dir, err := os.MkdirTemp("", "rbee-e2e-")
	if err != nil {
		fmt.Fprintln(os.Stderr, "make temp dir:", err)
		os.Exit(1)
	}
	rbeeBin = filepath.Join(dir, "rbee")
	if bin := os.Getenv("RBEE_TEST_BIN"); bin != "" {
		// Another build under test, say an older one, to show that a
		// test fails there.
		rbeeBin = bin
	} else {
		// Built without -race even when the tests run with it: the
		// processes under test should run at production speed, and
		// the race detector covers the packages in their own tests.
		build := exec.Command("go", "build", "-o", rbeeBin, ".")
		build.Stdout, build.Stderr = os.Stderr, os.Stderr
		if err := build.Run(); err != nil {
			fmt.Fprintln(os.Stderr, "build rbee:", err)
			os.RemoveAll(dir)
			os.Exit(1)
		}
	}
	goleak.VerifyTestMain(m, goleak.Cleanup(func(code int) {
		os.RemoveAll(dir)
		os.Exit(code)
	}))
}

// proc is one `rbee node run` process, or a helper process (no addresses).
type proc struct {
	*launcher.Process
	name       string
	gossipAddr string
	httpAddr   string
	stopped    bool // killed or stopped on purpose by the test
}

// log returns what the process wrote so far.
func (p *proc) log() string {
	s, err := p.Log()
	if err != nil {
		return fmt.Sprintf("(read %s: %v)", p.LogPath(), err)
	}
	return s
}

// send sends sig without waiting; from then on the process no longer counts
// as live.
func (p *proc) send(tb testing.TB, sig syscall.Signal) {
	tb.Helper()
	p.stopped = true
	if err := p.Signal(sig); err != nil && !p.Exited() {
		tb.Fatalf("signal %s to %s: %v", sig, p.name, err)
	}
}

// signal sends sig and waits until the process has exited.
func (p *proc) signal(tb testing.TB, sig syscall.Signal, timeout time.Duration) {
	tb.Helper()
	p.send(tb, sig)
	select {
	case <-p.Done():
	case <-time.After(timeout):
		tb.Fatalf("%s did not exit within %s of %s", p.name, timeout, sig)
	}
}

// exitCode waits for the process to end and returns its exit status.
func (p *proc) exitCode(tb testing.TB, timeout time.Duration) int {
	tb.Helper()
	select {
	case <-p.Done():
	case <-time.After(timeout):
		tb.Fatalf("%s still running after %s", p.name, timeout)
	}
	p.stopped = true
	return p.ExitCode()
}

// cluster is a set of node processes sharing one key, and an HTTP client for
// talking to them.
type cluster struct {
	tb      testing.TB
	dir     string
	keyFile string
	key     wsapi.Key
	hc      *http.Client
	logLvl  string
	// group runs the processes, each with its log in dir, and kills them
	// at the end.
	group *launcher.Group

	closeOnce sync.Once

	mu    sync.Mutex
	procs []*proc
}

// newCluster returns an empty cluster with a fresh key from `rbee keygen`;
// every process it starts is killed and waited for when tb ends, and their
// logs are printed if tb failed. RBEE_TEST_LOG=1 makes the nodes log at
// debug level.
func newCluster(tb testing.TB) *cluster {
	tb.Helper()
	dir := tb.TempDir()
	c := &cluster{
		tb:     tb,
		dir:    dir,
		hc:     &http.Client{Timeout: 2 * time.Second, Transport: http.DefaultTransport.(*http.Transport).Clone()},
		logLvl: "info",
	}
	if os.Getenv("RBEE_TEST_LOG") != "" {
		c.logLvl = "debug"
	}
	// If the test binary dies (a -timeout panic skips cleanups), the
	// processes die with it; at the end they are killed, not stopped.
	c.group = launcher.New(launcher.Options{LogDir: dir, Env: envWithoutRbee(), DeathSignal: syscall.SIGKILL,
		StopSignal: syscall.SIGKILL})
	c.keyFile, c.key = c.keygen("key")
	tb.Cleanup(c.close)
	return c
}

// keygen runs `rbee keygen` into dir/file.
func (c *cluster) keygen(file string) (string, wsapi.Key) {
	c.tb.Helper()
	out := c.rbee("keygen")
	k, err := wsapi.ParseKey(out)
	if err != nil {
		c.tb.Fatalf("rbee keygen printed %q: %v", out, err)
	}
	path := filepath.Join(c.dir, file)
	if err := os.WriteFile(path, []byte(out), 0o600); err != nil {
		c.tb.Fatal(err)
	}
	return path, k
}

// rbee runs the CLI to completion and returns its stdout; a non-zero exit
// fails the test.
func (c *cluster) rbee(args ...string) string {
	c.tb.Helper()
	out, errOut, err := runRbee(args...)
	if err != nil {
		c.tb.Fatalf("rbee %s: %v\nstdout:\n%s\nstderr:\n%s", strings.Join(args, " "), err, out, errOut)
	}
	return out
}

// runRbee runs the CLI to completion (30 s at most).
func runRbee(args ...string) (stdout, stderr string, err error) { return runRbeeEnv(nil, args...) }

// runRbeeEnv is runRbee with env added to the CLI's environment.
func runRbeeEnv(env []string, args ...string) (stdout, stderr string, err error) {
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	cmd := exec.CommandContext(ctx, rbeeBin, args...)
	cmd.Env = append(envWithoutRbee(), env...)
	var o, e bytes.Buffer
	cmd.Stdout, cmd.Stderr = &o, &e
	err = cmd.Run()
	return o.String(), e.String(), err
}

// close kills every process the cluster started and waits for them; it runs
// when the test ends, and a benchmark calls it at the end of each trial.
func (c *cluster) close() { c.closeOnce.Do(c.cleanup) }

func (c *cluster) cleanup() {
	c.group.Stop()
	c.hc.CloseIdleConnections()
	if c.tb.Failed() {
		c.mu.Lock()
		procs := append([]*proc(nil), c.procs...)
		c.mu.Unlock()
		for _, p := range procs {
			c.tb.Logf("---- log of %s (gossip %s, http %s, exit %v) ----\n%s", p.name, p.gossipAddr, p.httpAddr, p.Err(), tail(p.log(), 64<<10))
		}
	}
}

func tail(s string, n int) string {
	if len(s) <= n {
		return s
	}
	return "...\n" + s[len(s)-n:]
}

// nodeSpec says how to start one node.
type nodeSpec struct {
	name    string
	join    string // gossip address of a seed; empty for none
	keyFile string // empty means the cluster's key
	extra   []string
}

// start starts the nodes of specs on free ports and waits until each answers
// /healthz. Nodes start concurrently; a node whose ports were taken in the
// meantime (other test runs share the machine) is restarted on new ones.
func (c *cluster) start(specs ...nodeSpec) []*proc {
	c.tb.Helper()
	out := make([]*proc, len(specs))
	errs := make([]error, len(specs))
	var wg sync.WaitGroup
	for i, s := range specs {
		wg.Go(func() { out[i], errs[i] = c.startOne(s) })
	}
	wg.Wait()
	if err := errors.Join(errs...); err != nil {
		c.tb.Fatal(err)
	}
	return out
}

// startCluster starts n nodes named n0, n1, ...: n0 alone first, then the
// others together, joining n0. It waits until every node sees all n members
// alive and they agree on a queen.
func (c *cluster) startCluster(n int) []*proc {
	c.tb.Helper()
	first := c.start(nodeSpec{name: "n0"})[0]
	specs := make([]nodeSpec, 0, n-1)
	for i := 1; i < n; i++ {
		specs = append(specs, nodeSpec{name: "n" + strconv.Itoa(i), join: first.gossipAddr})
	}
	ps := append([]*proc{first}, c.start(specs...)...)
	c.waitConverged(ps, 20*time.Second)
	return ps
}

const maxStartAttempts = 5

func (c *cluster) startOne(s nodeSpec) (*proc, error) {
	var last error
	for range maxStartAttempts {
		p, err := c.spawn(s)
		if err != nil {
			return nil, err
		}
		err = c.waitHealthy(p, 15*time.Second)
		if err == nil {
			return p, nil
		}
		last = err
		if !p.Exited() || !strings.Contains(p.log(), "address already in use") {
			return nil, fmt.Errorf("%w\nlog:\n%s", err, tail(p.log(), 16<<10))
		}
		// Lost a port to another process between picking and binding.
	}
	return nil, fmt.Errorf("start %s: %d attempts: %w", s.name, maxStartAttempts, last)
}

func (c *cluster) spawn(s nodeSpec) (*proc, error) {
	ports, err := freePorts(2)
	if err != nil {
		return nil, err
	}
	key := s.keyFile
	if key == "" {
		key = c.keyFile
	}
	p := &proc{
		name:       s.name,
		gossipAddr: net.JoinHostPort("127.0.0.1", strconv.Itoa(ports[0])),
		httpAddr:   net.JoinHostPort("127.0.0.1", strconv.Itoa(ports[1])),
	}
	args := []string{"node", "run", "--name", s.name, "--gossip-addr", p.gossipAddr, "--http-addr", p.httpAddr,
		"--cluster-key-file", key, "--log-level", c.logLvl}
	if s.join != "" {
		args = append(args, "--join", s.join)
	}
	args = append(args, s.extra...)
	if err := c.launch(p, exec.Command(rbeeBin, args...)); err != nil {
		return nil, err
	}
	return p, nil
}

// launch starts cmd as p, its output in a log file of the cluster's, and
// makes it the cluster's to kill at the end.
func (c *cluster) launch(p *proc, cmd *exec.Cmd) error {
	lp, err := c.group.Start(p.name, cmd)
	if err != nil {
		return err
	}
	p.Process = lp
	c.mu.Lock()
	c.procs = append(c.procs, p)
	c.mu.Unlock()
	return nil
}

func (c *cluster) health(p *proc) (api.Health, error) {
	var h api.Health
	err := c.getJSON(p.httpAddr, api.PathHealth, &h)
	return h, err
}

func (c *cluster) getJSON(addr, path string, out any) error {
	req, err := http.NewRequest(http.MethodGet, "http://"+addr+path, nil)
	if err != nil {
		return err
	}
	// Needed from another network namespace; loopback callers pass
	// without it.
	req.Header.Set("Authorization", "Bearer "+c.key.HTTPToken())
	resp, err := c.hc.Do(req)
	if err != nil {
		return err
	}
	defer resp.Body.Close()
	if resp.StatusCode != http.StatusOK {
		return fmt.Errorf("GET %s: %s", path, resp.Status)
	}
	return json.NewDecoder(resp.Body).Decode(out)
}

// pollInterval is how often the waits below look again: short enough that a
// failover measured with them is not rounded up by much, cheap on loopback.
const pollInterval = 5 * time.Millisecond

// waitHealthy waits until p answers /healthz naming itself, or exits.
func (c *cluster) waitHealthy(p *proc, timeout time.Duration) error {
	err := testutil.Every(pollInterval).Until(timeout, func() error {
		if p.Exited() {
			return testutil.Stop(fmt.Errorf("exited before answering: %v", p.Err()))
		}
		h, err := c.health(p)
		switch {
		case err != nil:
			return err
		case h.Status != "ok" || h.Node != p.name:
			return fmt.Errorf("/healthz says %+v", h)
		}
		return nil
	})
	if err != nil {
		return fmt.Errorf("%s: wait for /healthz: %w", p.name, err)
	}
	return nil
}

// live returns the processes of ps the test has not stopped; one that died
// on its own fails the test.
func (c *cluster) live(ps []*proc) []*proc {
	c.tb.Helper()
	var out []*proc
	for _, p := range ps {
		if p.stopped {
			continue
		}
		if p.Exited() {
			c.tb.Fatalf("%s exited unexpectedly: %v", p.name, p.Err())
		}
		out = append(out, p)
	}
	return out
}

// queens asks every process in ps for its queen; ok is true when all answer
// and name the same non-empty queen.
func (c *cluster) queens(ps []*proc) (queen string, ok bool, state string) {
	var b strings.Builder
	ok = true
	for i, p := range ps {
		h, err := c.health(p)
		if err != nil {
			fmt.Fprintf(&b, "%s: %v; ", p.name, err)
			ok = false
			continue
		}
		fmt.Fprintf(&b, "%s: queen %q; ", p.name, h.Queen)
		if h.Queen == "" || (i > 0 && h.Queen != queen) {
			ok = false
		}
		queen = h.Queen
	}
	return queen, ok, b.String()
}

// waitAgree waits until every live node of ps names the same non-empty queen,
// and returns it.
func (c *cluster) waitAgree(ps []*proc, timeout time.Duration) string {
	c.tb.Helper()
	var queen string
	testutil.Every(pollInterval).Eventually(c.tb, timeout, "nodes agree on a queen", func() error {
		q, ok, state := c.queens(c.live(ps))
		if !ok {
			return errors.New(state)
		}
		queen = q
		return nil
	})
	return queen
}

// waitNewQueen waits until the live nodes of ps agree on a queen other than
// old, and returns it.
func (c *cluster) waitNewQueen(ps []*proc, old string, timeout time.Duration) string {
	c.tb.Helper()
	var queen string
	testutil.Every(pollInterval).Eventually(c.tb, timeout, "nodes agree on a queen other than "+old, func() error {
		q, ok, state := c.queens(c.live(ps))
		if !ok || q == old {
			return errors.New(state)
		}
		queen = q
		return nil
	})
	return queen
}

// members is a node's /v1/admin/members.
func (c *cluster) members(p *proc) ([]api.MemberView, error) {
	var ms []api.MemberView
	err := c.getJSON(p.httpAddr, api.PathAdminMembers, &ms)
	return ms, err
}

// waitConverged waits until every live node of ps sees every live node of ps
// alive and they agree on a queen; it returns the queen.
func (c *cluster) waitConverged(ps []*proc, timeout time.Duration) string {
	c.tb.Helper()
	testutil.Every(pollInterval).Eventually(c.tb, timeout, "every node sees every other alive", func() error {
		live := c.live(ps)
		for _, p := range live {
			ms, err := c.members(p)
			if err != nil {
				return fmt.Errorf("%s: %w", p.name, err)
			}
			alive := map[string]bool{}
			for _, m := range ms {
				alive[m.Name] = m.Status == "alive"
			}
			for _, o := range live {
				if !alive[o.name] {
					return fmt.Errorf("%s does not see %s alive: %+v", p.name, o.name, ms)
				}
			}
		}
		return nil
	})
	return c.waitAgree(ps, timeout)
}

// byName returns the process of ps named name.
func byName(tb testing.TB, ps []*proc, name string) *proc {
	tb.Helper()
	for _, p := range ps {
		if p.name == name {
			return p
		}
	}
	tb.Fatalf("no node named %q", name)
	return nil
}

// kill SIGKILLs p and waits for it to exit.
func (c *cluster) kill(p *proc) { c.tb.Helper(); p.signal(c.tb, syscall.SIGKILL, 10*time.Second) }
