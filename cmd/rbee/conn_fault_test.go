package main

// Fault tests of what one client may take of a node: connections (a flood
// of idle keep-alives) and request-body memory (bodies that trickle).

import (
	"bufio"
	"context"
	"fmt"
	"io"
	"net"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"runtime"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"syscall"
	"testing"
	"time"

	"golang.org/x/sys/unix"

	"github.com/rbee/rbee/internal/netlab"
	"github.com/rbee/rbee/internal/testutil"
)

// limitedNode runs `rbee node run` in h under an open-file limit of nofile,
// as a service manager would set it, and waits for its /healthz.
func (nc *netCluster) limitedNode(h *netlab.Host, nofile int, join string, extra ...string) *proc {
	nc.tb.Helper()
	p := &proc{name: h.Name, gossipAddr: h.Addr(netGossipPort), httpAddr: h.Addr(netHTTPPort)}
	args := []string{fmt.Sprintf("--nofile=%d:%d", nofile, nofile), rbeeBin, "node", "run", "--name", h.Name,
		"--gossip-addr", p.gossipAddr, "--http-addr", p.httpAddr, "--cluster-key-file", nc.keyFile, "--log-level", nc.logLvl}
	if join != "" {
		args = append(args, "--join", join)
	}
	args = append(args, extra...)
	if err := nc.launch(p, h.Command("prlimit", args...)); err != nil {
		nc.tb.Fatal(err)
	}
	if err := nc.waitHealthy(p, 15*time.Second); err != nil {
		nc.tb.Fatal(err)
	}
	return p
}

// inNetns runs f on an OS thread moved into h's network namespace: the
// sockets f opens belong to h (and stay there), as if another machine had
// opened them. Each call takes one thread.
func inNetns(h *netlab.Host, f func()) error {
	errc := make(chan error, 1)
	go func() {
		runtime.LockOSThread()
		// The thread is unlocked only once it is back home: a
		// thread left in h's namespace dies with this goroutine.
		self, err := os.Open("/proc/thread-self/ns/net")
		if err != nil {
			errc <- err
			return
		}
		defer self.Close()
		ns, err := os.Open(filepath.Join("/var/run/netns", h.NS))
		if err != nil {
			errc <- err
			return
		}
		defer ns.Close()
		if e := unix.Setns(int(ns.Fd()), unix.CLONE_NEWNET); e != nil {
			errc <- fmt.Errorf("setns %s: %w", h.NS, e)
			return
		}
		f()
		if e := unix.Setns(int(self.Fd()), unix.CLONE_NEWNET); e != nil {
			errc <- fmt.Errorf("setns back: %w", e)
			return
		}
		runtime.UnlockOSThread()
		errc <- nil
	}()
	return <-errc
}

// dialFrom dials addr from h.
func dialFrom(h *netlab.Host, addr string) (net.Conn, error) {
	var c net.Conn
	var derr error
	if err := inNetns(h, func() { c, derr = net.DialTimeout("tcp", addr, 3*time.Second) }); err != nil {
		return nil, err
	}
	return c, derr
}

// raiseOpenFiles lets this test process hold n more descriptors, as root
// may; it returns how many it may hold.
func raiseOpenFiles(n uint64) uint64 {
	var rl syscall.Rlimit
	_ = syscall.Getrlimit(syscall.RLIMIT_NOFILE, &rl)
	if rl.Cur >= n {
		return rl.Cur
	}
	want := syscall.Rlimit{Cur: n, Max: max(n, rl.Max)}
	if syscall.Setrlimit(syscall.RLIMIT_NOFILE, &want) == nil {
		return n
	}
	return rl.Cur
}

// connFlood is what an attacker's connections got.
type connFlood struct {
	opened, dialFailed, answered int
}

// flood opens n connections to addr from h, from the addresses srcs in turn,
// and sends one unauthenticated GET /healthz on each, keeping every
// connection open; close ends them.
func flood(tb testing.TB, h *netlab.Host, srcs []string, addr string, n int) (res connFlood, close func()) {
	tb.Helper()
	const workers = 64
	var (
		mu    sync.Mutex
		conns []net.Conn
		next  atomic.Int64
		dials atomic.Int64
		fails atomic.Int64
		ok    atomic.Int64
	)
	// The whole flood gets 20 s: against a node out of descriptors
	// dials wait for a backlog that no longer drains.
	deadline := time.Now().Add(20 * time.Second)
	var wg sync.WaitGroup
	for w := range workers {
		wg.Go(func() {
			_ = inNetns(h, func() {
				for {
					i := int(next.Add(1)) - 1
					if i >= n || time.Now().After(deadline) {
						return
					}
					d := net.Dialer{Timeout: time.Second, LocalAddr: &net.TCPAddr{IP: net.ParseIP(srcs[(i+w)%len(srcs)])}}
					c, err := d.Dial("tcp", addr)
					if err != nil {
						fails.Add(1)
						continue
					}
					dials.Add(1)
					mu.Lock()
					conns = append(conns, c)
					mu.Unlock()
					_ = c.SetDeadline(time.Now().Add(2 * time.Second))
					fmt.Fprintf(c, "GET /healthz HTTP/1.1\r\nHost: %s\r\n\r\n", addr)
					resp, err := http.ReadResponse(bufio.NewReader(c), nil)
					if err == nil {
						_, _ = io.Copy(io.Discard, resp.Body)
						resp.Body.Close()
						if resp.StatusCode == 200 {
							ok.Add(1)
						}
					}
					_ = c.SetDeadline(time.Time{})
				}
			})
		})
	}
	wg.Wait()
	return connFlood{opened: int(dials.Load()), dialFailed: int(fails.Load()), answered: int(ok.Load())}, func() {
		mu.Lock()
		defer mu.Unlock()
		for _, c := range conns {
			c.Close()
		}
	}
}

// nodeStatus reads Vm fields (kB) of a process.
func nodeStatus(tb testing.TB, pid int, field string) int64 {
	tb.Helper()
	b, err := os.ReadFile(fmt.Sprintf("/proc/%d/status", pid))
	if err != nil {
		tb.Fatal(err)
	}
	for _, l := range strings.Split(string(b), "\n") {
		if f := strings.Fields(l); len(f) >= 2 && f[0] == field+":" {
			kb, _ := strconv.ParseInt(f[1], 10, 64)
			return kb << 10
		}
	}
	return 0
}

// TestFault_ConnectionFlood: up to 20,000 idle keep-alive connections from
// another machine, each after one unauthenticated GET /healthz, against a
// node allowed 16,384 open files. The node must still answer authenticated API
// calls and take part in gossip. Before the connection cap the node ran out
// of descriptors: its API and gossip TCP stopped accepting while the
// cluster still listed it alive.
func TestFault_ConnectionFlood(t *testing.T) {
	// The node may open 16,384 files; the flood is 20,000 connections,
	// or as many as this process may hold beside its own files (root
	// may raise its limit, a container may forbid it).
	const nofile, sources = 16384, 16
	nc := newNetCluster(t)
	conns := min(20000, int(raiseOpenFiles(21000))-1000)
	if conns <= nofile {
		t.Skipf("this test process may open %d connections, not more than the node's %d files", conns, nofile)
	}
	h0, h1, h2, ha := nc.host("n0"), nc.host("n1"), nc.host("n2"), nc.host("attacker")
	// The attacker comes from several addresses, as a botnet or an IPv6
	// prefix would, so that the cap itself is reached, not only one
	// address's share.
	var srcs []string
	for i := range sources {
		ip := ha.IP[:strings.LastIndex(ha.IP, ".")+1] + strconv.Itoa(100+i)
		if out, err := exec.Command("ip", "-n", ha.NS, "addr", "add", ip+"/24", "dev", "eth0").CombinedOutput(); err != nil {
			t.Fatalf("add attacker address %s: %v: %s", ip, err, out)
		}
		srcs = append(srcs, ip)
	}
	n0 := nc.limitedNode(h0, nofile, "", nc.sim(h0, "m")...)
	n1 := nc.node(h1, n0.gossipAddr)
	nc.waitConverged([]*proc{n0, n1}, 20*time.Second)
	nc.waitServed(n0.httpAddr, "m")
	rssBefore := nodeStatus(t, n0.Pid(), "VmRSS")

	start := time.Now()
	res, closeFlood := flood(t, ha, srcs, n0.httpAddr, conns)
	defer closeFlood()
	floodTook := time.Since(start)

	// Authenticated API calls through the flooded node, each on a new
	// connection as a new client's would be.
	hc := &http.Client{Timeout: 3 * time.Second, Transport: &http.Transport{DisableKeepAlives: true}}
	const calls = 10
	var served int
	var lastErr string
	for i := range calls {
		ctx, cancel := context.WithTimeout(context.Background(), 3*time.Second)
		body := fmt.Sprintf(`{"model":"m","messages":[{"role":"user","content":"hi %d"}],"max_tokens":4}`, i)
		req, _ := http.NewRequestWithContext(ctx, http.MethodPost, "http://"+n0.httpAddr+"/v1/chat/completions", strings.NewReader(body))
		req.Header.Set("Authorization", "Bearer "+nc.key.HTTPToken())
		resp, err := hc.Do(req)
		if err == nil {
			b, _ := io.ReadAll(resp.Body)
			resp.Body.Close()
			if resp.StatusCode == 200 {
				served++
			} else {
				lastErr = fmt.Sprintf("%d %.200s", resp.StatusCode, b)
			}
		} else {
			lastErr = err.Error()
		}
		cancel()
	}
	// Gossip: a new node joins through the flooded node alone (memberlist's
	// TCP push-pull) and sees the whole cluster alive.
	n2 := nc.node(h2, n0.gossipAddr)
	joinErr := testutil.Every(100*time.Millisecond).Until(15*time.Second, func() error {
		ms, err := nc.members(n2)
		if err != nil {
			return err
		}
		alive := 0
		for _, m := range ms {
			if m.Status == "alive" {
				alive++
			}
		}
		if alive != 3 {
			return fmt.Errorf("%s sees %d of 3 alive: %+v", n2.name, alive, ms)
		}
		return nil
	})
	rss, hwm := nodeStatus(t, n0.Pid(), "VmRSS"), nodeStatus(t, n0.Pid(), "VmHWM")
	held := connMetrics(nc, n0)
	t.Logf("flood of %d connections from %d addresses in %v: %d opened, %d dials failed, %d answered /healthz; "+
		"then %d/%d authenticated chat calls served (last error: %s); join through the flooded node: %v; "+
		"node RSS %d MiB before, %d MiB after (peak %d MiB); node's connection metrics: %s",
		conns, sources, floodTook.Round(time.Millisecond), res.opened, res.dialFailed, res.answered,
		served, calls, lastErr, joinErr, rssBefore>>20, rss>>20, hwm>>20, held)
	if served != calls {
		t.Errorf("%d of %d authenticated calls served during the flood, want all", served, calls)
	}
	if joinErr != nil {
		t.Errorf("a node joining through the flooded node: %v", joinErr)
	}
}

// connMetrics is what the node's /metrics says of its HTTP connections.
func connMetrics(nc *netCluster, p *proc) string {
	req, _ := http.NewRequest(http.MethodGet, "http://"+p.httpAddr+"/metrics", nil)
	req.Header.Set("Authorization", "Bearer "+nc.key.HTTPToken())
	resp, err := (&http.Client{Timeout: 3 * time.Second}).Do(req)
	if err != nil {
		return err.Error()
	}
	defer resp.Body.Close()
	var out []string
	sc := bufio.NewScanner(resp.Body)
	for sc.Scan() {
		if strings.HasPrefix(sc.Text(), "rbee_http_connections") {
			out = append(out, sc.Text())
		}
	}
	if len(out) == 0 {
		return "(none)"
	}
	return strings.Join(out, ", ")
}

// TestFault_BodyTrickle: sixteen connections from another machine each
// declare a 32 MiB body and send a byte a second, half with an uncapped API
// key, half with a batch key capped at two requests; each is sent again a
// second after it is answered. Before, the declared lengths took the node's
// whole 256 MiB body budget for the 60 s body timeout and other clients got
// 503; now they hold what they sent, are cut at the minimum rate, and other
// clients see no error.
func TestFault_BodyTrickle(t *testing.T) {
	const trickles, attack = 16, 12 * time.Second
	nc := newNetCluster(t)
	keys := filepath.Join(nc.dir, "keys.toml")
	writeKeysFile(t, keys, `
[[key]]
name = "alice"
key = "sk-alice-00000001"

[[key]]
name = "bulk"
key = "sk-bulk-000000001"

[[key]]
name = "batch"
key = "sk-batch-00000001"
priority = "batch"
max_concurrent = 2
`)
	h0, ha := nc.host("n0"), nc.host("attacker")
	n0 := nc.node(h0, "", append(nc.sim(h0, "m", "--slots", "8", "--tokens-per-second", "1000"), "--api-keys-file", keys)...)
	testutil.Every(50*time.Millisecond).Eventually(t, 20*time.Second, "m served", modelServed(nc.cluster, n0))

	start := time.Now()
	stop := make(chan struct{})
	var (
		mu       sync.Mutex
		byStatus = map[int]int{}
		longest  time.Duration
		sample   string
	)
	// trickle sends one body a byte a second until the node answers (or
	// the attack ends, -1), and records the answer.
	trickle := func(key string) {
		c, err := dialFrom(ha, n0.httpAddr)
		if err != nil {
			mu.Lock()
			byStatus[-2]++ // could not even connect
			mu.Unlock()
			return
		}
		defer c.Close()
		began := time.Now()
		fmt.Fprintf(c, "POST /v1/chat/completions HTTP/1.1\r\nHost: %s\r\nAuthorization: Bearer %s\r\nContent-Type: application/json\r\nContent-Length: %d\r\n\r\n{",
			n0.httpAddr, key, 32<<20)
		answered := make(chan struct{})
		go func() {
			tick := time.NewTicker(time.Second)
			defer tick.Stop()
			for {
				select {
				case <-stop:
					c.Close()
					return
				case <-answered:
					return
				case <-tick.C:
					_, _ = c.Write([]byte(" "))
				}
			}
		}()
		resp, err := http.ReadResponse(bufio.NewReader(c), nil)
		close(answered)
		status, msg := -1, ""
		if err == nil {
			b, _ := io.ReadAll(resp.Body)
			resp.Body.Close()
			status, msg = resp.StatusCode, string(b)
		}
		mu.Lock()
		defer mu.Unlock()
		byStatus[status]++
		if status == http.StatusRequestTimeout {
			longest, sample = max(longest, time.Since(began)), msg
		}
	}
	var wg sync.WaitGroup
	for i := range trickles {
		key := "sk-bulk-000000001"
		if i%2 == 1 {
			key = "sk-batch-00000001"
		}
		wg.Go(func() {
			// A refused trickle is tried again a second later.
			tick := time.NewTicker(time.Second)
			defer tick.Stop()
			for {
				trickle(key)
				select {
				case <-stop:
					return
				case <-tick.C:
				}
			}
		})
	}
	// Meanwhile another client sends ordinary requests, one at a time.
	var sent, failed int
	var firstErr string
	hc := &http.Client{Timeout: 5 * time.Second}
	for time.Since(start) < attack {
		sent++
		body := fmt.Sprintf(`{"model":"m","messages":[{"role":"user","content":"hi %d"}],"max_tokens":2}`, sent)
		req, _ := http.NewRequest(http.MethodPost, "http://"+n0.httpAddr+"/v1/chat/completions", strings.NewReader(body))
		req.Header.Set("Authorization", "Bearer sk-alice-00000001")
		req.Header.Set("Content-Type", "application/json")
		resp, err := hc.Do(req)
		if err != nil {
			failed++
			firstErr = firstOf(firstErr, err.Error())
			continue
		}
		b, _ := io.ReadAll(resp.Body)
		resp.Body.Close()
		if resp.StatusCode != 200 {
			failed++
			firstErr = firstOf(firstErr, fmt.Sprintf("%d %.200s", resp.StatusCode, b))
		}
	}
	close(stop)
	wg.Wait()
	t.Logf("%d trickles of declared 32 MiB bodies at a time for %v: answers by status %v (-1: none before the attack ended), "+
		"slowest 408 after %v (%s); another client meanwhile: %d of %d requests failed (first: %s)",
		trickles, attack, byStatus, longest.Round(100*time.Millisecond), strings.TrimSpace(sample), failed, sent, firstErr)
	if failed != 0 {
		t.Errorf("%d of %d ordinary requests failed during the trickle attack, want 0", failed, sent)
	}
	if longest > attack/2 {
		t.Errorf("a trickled body was cut only after %v, want the minimum rate's grace (5 s)", longest)
	}
}

// firstOf keeps the first non-empty of a and b.
func firstOf(a, b string) string {
	if a != "" {
		return a
	}
	return b
}
