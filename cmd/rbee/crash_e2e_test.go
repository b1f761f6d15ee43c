package main

// End-to-end tests of engines and hive crashes: a hive killed outright
// (SIGKILL) must not leave the engine a wrapper script forked running
// beside the copy the next hive starts.

import (
	"bytes"
	"errors"
	"fmt"
	"net"
	"net/http"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/rbee/rbee/internal/testutil"
)

// procsOf lists the processes whose command line starts with prefix.
func procsOf(prefix string) []int {
	ents, _ := os.ReadDir("/proc")
	var out []int
	for _, e := range ents {
		pid, err := strconv.Atoi(e.Name())
		if err != nil || processGone(pid) == nil {
			continue
		}
		b, err := os.ReadFile(filepath.Join("/proc", e.Name(), "cmdline"))
		if err != nil {
			continue
		}
		if strings.HasPrefix(string(bytes.ReplaceAll(b, []byte{0}, []byte{' '})), prefix) {
			out = append(out, pid)
		}
	}
	return out
}

// TestModels_HiveKilledLeavesNoEngine: the engine is a wrapper script that
// forks the real server and waits, as many deployments start vLLM. The hive
// is SIGKILLed: the kernel kills the wrapper (its death signal), not the
// server it forked. The next hive on the same --data-dir kills that server
// before it starts anything, so its port is free and a request is served by
// one engine, not two.
func TestModels_HiveKilledLeavesNoEngine(t *testing.T) {
	t.Parallel()
	c := newLCCluster(t)
	// Not *.gguf: the header check would refuse it before the engine runs.
	weights := filepath.Join(c.dir, "wrapped.bin")
	if err := os.WriteFile(weights, []byte("weights"), 0o644); err != nil {
		t.Fatal(err)
	}
	const model = "wrapped-e2e"
	server := rbeeBin + " worker simulate --model " + model + " "
	spec := lcNode(c, "n", "",
		"--engine", `wrapper=/bin/sh -c "`+rbeeBin+` worker simulate --model {name} --host {host} --port {port} --slots {slots} & wait"`,
		"--model", model+"="+weights+",engine=wrapper")
	t.Cleanup(func() {
		for _, pid := range procsOf(server) {
			_ = syscall.Kill(pid, syscall.SIGKILL) // what an old build leaves
		}
	})
	n := c.start(spec)[0]
	lc := newLCClient(c)
	waitModelState(t, c, n, model, "available")
	if r := lc.chat(n.httpAddr, model, 4, 30*time.Second); r.err != nil || r.status != http.StatusOK {
		t.Fatalf("request: %v", r)
	}
	ws := waitWorkerStart(t, n, model, time.Second)
	servers := procsOf(server)
	if len(servers) != 1 {
		t.Fatalf("%d servers of %s run, want 1: %v", len(servers), model, servers)
	}
	engine := servers[0]
	t.Logf("wrapper pid %d forked the server, pid %d, on port %s", ws.pid, engine, ws.instance)

	c.kill(n)
	killedAt := time.Now()
	waitProcessGone(t, ws.pid, 5*time.Second, fmt.Sprintf("the wrapper (pid %d) killed with its hive", ws.pid))
	if processGone(engine) == nil {
		t.Logf("the server died with its hive")
	} else {
		t.Logf("the server (pid %d) outlived its hive, as expected: the next hive kills it", engine)
	}

	n2 := c.start(spec)[0]
	err := testutil.Every(20*time.Millisecond).Until(5*time.Second, func() error { return processGone(engine) })
	if err != nil {
		t.Errorf("the server the killed hive left (pid %d) still runs %v after the hive restarted: %v",
			engine, time.Since(killedAt).Round(time.Millisecond), err)
	} else {
		t.Logf("the server the killed hive left is gone %v after the kill", time.Since(killedAt).Round(time.Millisecond))
		if got := logRecords(n2.log(), "killed an engine a crashed hive left running"); len(got) != 1 {
			t.Errorf(`the restarted hive logged "killed an engine a crashed hive left running" %d times, want 1: %v`, len(got), got)
		}
		// A Go server's leader thread shows as a zombie while its other
		// threads still exit and hold the socket: poll briefly.
		if err := testutil.Every(20*time.Millisecond).Until(2*time.Second, func() error {
			l, err := net.Listen("tcp", net.JoinHostPort("127.0.0.1", ws.instance))
			if err != nil {
				return err
			}
			return l.Close()
		}); err != nil {
			t.Errorf("port %s is still taken: %v", ws.instance, err)
		}
	}

	waitModelState(t, c, n2, model, "available")
	if r := lc.chat(n2.httpAddr, model, 4, 30*time.Second); r.err != nil || r.status != http.StatusOK {
		t.Fatalf("request after the restart: %v", r)
	}
	if s := procsOf(server); len(s) != 1 {
		t.Errorf("%d servers of %s run after the restarted hive served, want 1: %v", len(s), model, s)
	}
}

// TestModels_EngineCrashAfterServingRestarts: an engine that served well
// and crashed is started again by its hive at once, and the requests that
// come meanwhile wait for it rather than getting 503s.
func TestModels_EngineCrashAfterServingRestarts(t *testing.T) {
	t.Parallel()
	c := newLCCluster(t)
	const stable = time.Second
	n := c.start(lcNode(c, "n", "", "--stable-after", stable.String(),
		"--model", simModel("crashy", "load_ms=500,args=--tokens-per-second 0")))[0]
	lc := newLCClient(c)
	waitModelState(t, c, n, "crashy", "available")
	if r := lc.chat(n.httpAddr, "crashy", 4, 30*time.Second); r.err != nil || r.status != http.StatusOK {
		t.Fatalf("request: %v", r)
	}
	ws := waitWorkerStart(t, n, "crashy", time.Second)
	servedAt := time.Now()
	testutil.Eventually(t, 5*time.Second, "the engine served well", func() error {
		if time.Since(servedAt) < stable+200*time.Millisecond {
			return errors.New("not yet")
		}
		return nil
	})
	if err := syscall.Kill(ws.pid, syscall.SIGKILL); err != nil {
		t.Fatal(err)
	}
	killedAt := time.Now()

	// Requests one after the other for 3 s after the crash: each waits
	// for the restarted engine (500 ms to load) instead of a 503. Only
	// those that come before the hive's report of the crash reaches the
	// queen (milliseconds) may be refused: the queen still grants the dead
	// engine, and the entry node gives up after 3 tries.
	const early = 200 * time.Millisecond
	sent, ok, refusedEarly, slowest := 0, 0, 0, time.Duration(0)
	for time.Since(killedAt) < 3*time.Second {
		at := time.Since(killedAt)
		r := lc.chat(n.httpAddr, "crashy", 4, 20*time.Second)
		sent++
		slowest = max(slowest, r.took)
		switch {
		case r.err == nil && r.status == http.StatusOK:
			ok++
		case at < early && r.status == http.StatusServiceUnavailable && strings.Contains(r.body, "worker_unavailable"):
			refusedEarly++
		default:
			t.Errorf("request sent %v after the crash: %v", at.Round(time.Millisecond), r)
		}
	}
	t.Logf("%d requests in the 3 s after the crash: %d answered (slowest %v), %d refused before the queen heard of the crash",
		sent, ok, slowest.Round(time.Millisecond), refusedEarly)
	if ok == 0 {
		t.Error("no request answered after the crash")
	}
	starts := workerStarts(n, "crashy")
	if len(starts) != 2 || starts[1].instance != ws.instance {
		t.Errorf("engine starts %+v, want the first and one restart on port %s", starts, ws.instance)
	}
	if got := logRecords(n.log(), "worker exited after serving; restarting it", "model", "crashy"); len(got) != 1 {
		t.Errorf(`"worker exited after serving; restarting it" logged %d times, want 1: %v`, len(got), got)
	}
}
