package main

import (
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"syscall"
	"testing"
	"time"

	"github.com/rbee/rbee/internal/testutil"
	"github.com/rbee/rbee/node/api"
	"github.com/rbee/rbee/node/hive/telemetry"
	"github.com/rbee/rbee/wsapi"
)

// startWorkerRun starts `rbee worker run ... -- sleep 120` as one of the
// cluster's processes and returns it.
func startWorkerRun(t *testing.T, c *cluster, n *proc, extra ...string) *proc {
	t.Helper()
	args := append([]string{"worker", "run", "--http-addr", n.httpAddr, "--cluster-key-file", c.keyFile}, extra...)
	args = append(args, "--", "sleep", "120")
	p := &proc{name: "worker-run"}
	if err := c.launch(p, exec.Command(rbeeBin, args...)); err != nil {
		t.Fatal(err)
	}
	return p
}

// hiveWorker returns the worker group/instance as the hive reports it.
func hiveWorker(c *cluster, n *proc, hive, group, instance string) (wsapi.ProcessStats, bool, error) {
	var v api.ClusterView
	if err := c.getJSON(n.httpAddr, api.PathCluster, &v); err != nil {
		return wsapi.ProcessStats{}, false, err
	}
	for _, h := range v.Hives {
		if h.HiveID != hive {
			continue
		}
		for _, w := range h.Workers {
			if w.Group == group && w.Instance == instance {
				return w, true, nil
			}
		}
	}
	return wsapi.ProcessStats{}, false, nil
}

func waitWorker(t *testing.T, c *cluster, n *proc, group, instance string, present bool) wsapi.ProcessStats {
	t.Helper()
	var got wsapi.ProcessStats
	testutil.Eventually(t, 15*time.Second, "hive reports "+group+"/"+instance, func() error {
		w, ok, err := hiveWorker(c, n, n.name, group, instance)
		if err != nil {
			return err
		}
		got = w
		if ok != present {
			return fmt.Errorf("present=%t", ok)
		}
		return nil
	})
	return got
}

// TestE2E_WorkerRunOutsideCgroupRegistersByPid: where cgroups are not
// writable (here forced with a --cgroup-root that is a plain directory), the
// worker runs anyway and its hive reports it by pid, with the model the user
// named.
func TestE2E_WorkerRunOutsideCgroupRegistersByPid(t *testing.T) {
	c := newCluster(t)
	n := c.start(nodeSpec{name: "h0", extra: []string{"--cgroup-root", t.TempDir()}})[0]
	wr := startWorkerRun(t, c, n, "--cgroup-root", t.TempDir(), "--group", "llm", "--instance", "9999", "--model", "tiny-model", "--slots", "2")

	w := waitWorker(t, c, n, "llm", "9999", true)
	if w.PID == 0 || w.PID == uint32(wr.Pid()) || w.Model == nil || *w.Model != "tiny-model" || w.RSSMB == 0 {
		t.Fatalf("reported worker = %+v, want the child's pid (not rbee's %d), model tiny-model, its RSS", w, wr.Pid())
	}

	// Stopping `rbee worker run` stops the worker, with the worker's status.
	wr.stopped = true
	_ = wr.Signal(syscall.SIGTERM)
	err := wr.Wait()
	var ee *exec.ExitError
	if !asExit(err, &ee) || ee.ExitCode() != 128+int(syscall.SIGTERM) {
		t.Fatalf("rbee worker run exited with %v, want status %d (the worker killed by SIGTERM)", err, 128+int(syscall.SIGTERM))
	}
	waitWorker(t, c, n, "llm", "9999", false)
}

// TestE2E_WorkerRunInCgroupIsFoundByTheHive needs a writable cgroup v2 (root
// on most CI machines); elsewhere it says why it skips.
func TestE2E_WorkerRunInCgroupIsFoundByTheHive(t *testing.T) {
	root, err := telemetry.FindCgroupRoot()
	if err != nil {
		t.Skipf("no cgroup v2 here: %v", err)
	}
	probe := filepath.Join(root, "rbee.slice", "rbee-e2e-probe-"+strconv.Itoa(os.Getpid()))
	if err := os.MkdirAll(probe, 0o755); err != nil {
		t.Skipf("cgroup v2 at %s is not writable here (needs root or a delegated cgroup): %v", root, err)
	}
	_ = os.Remove(probe)

	c := newCluster(t)
	n := c.start(nodeSpec{name: "h0", extra: []string{"--cgroup-root", root}})[0]
	group, instance := "e2e"+strconv.Itoa(os.Getpid()), "8080"
	t.Cleanup(func() { _ = os.Remove(filepath.Join(root, "rbee.slice", group)) })
	wr := startWorkerRun(t, c, n, "--cgroup-root", root, "--group", group, "--instance", instance, "--model", "cg-model")
	// Cleanups run last first: this one ends the worker before its group
	// is removed. `rbee worker run` removes its own leaf when its worker
	// exits; killed with the cluster instead, it left the leaf, and so the
	// group, behind, and every hive on the machine listed them each second
	// from then on.
	t.Cleanup(func() { wr.signal(t, syscall.SIGTERM, 10*time.Second) })

	w := waitWorker(t, c, n, group, instance, true)
	procs, err := os.ReadFile(filepath.Join(root, "rbee.slice", group, instance, "cgroup.procs"))
	if err != nil {
		t.Fatal(err)
	}
	if w.PID == 0 || strconv.Itoa(int(w.PID))+"\n" != string(procs) {
		t.Fatalf("hive reports pid %d, the cgroup holds %q", w.PID, procs)
	}
	if w.Model == nil || *w.Model != "cg-model" {
		t.Errorf("model = %v, want the registered cg-model", w.Model)
	}
}

func asExit(err error, target **exec.ExitError) bool {
	ee, ok := err.(*exec.ExitError)
	if ok {
		*target = ee
	}
	return ok
}
