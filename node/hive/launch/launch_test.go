package launch

import (
	"context"
	"errors"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/rbee/rbee/internal/testutil"
	"github.com/rbee/rbee/node/hive/telemetry"
)

func TestRun_ExitCodeIsTheWorkers(t *testing.T) {
	tests := []struct {
		name string
		argv []string
		want error
	}{
		{"success", []string{"true"}, nil},
		{"status 7", []string{"sh", "-c", "exit 7"}, ExitError{Code: 7}},
		{"killed by SIGKILL", []string{"sh", "-c", "kill -9 $$"}, ExitError{Code: 128 + 9}},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			err := Run(context.Background(), Config{Argv: tc.argv, Group: "g", Instance: "1"})
			if err != tc.want {
				t.Fatalf("Run = %v, want %v", err, tc.want)
			}
		})
	}
}

func TestRun_NoCommandOrMissingBinaryIsAClearError(t *testing.T) {
	if err := Run(context.Background(), Config{}); err == nil || !strings.Contains(err.Error(), "no command") {
		t.Errorf("no argv: %v", err)
	}
	err := Run(context.Background(), Config{Argv: []string{"/no/such/worker"}})
	var ee ExitError
	if err == nil || errors.As(err, &ee) {
		t.Errorf("missing binary: %v, want a start error", err)
	}
}

func TestRun_ForwardsSignals(t *testing.T) {
	// The worker traps TERM and exits 42; we send TERM to ourselves, as a
	// supervisor stopping `rbee worker run` would.
	ready := filepath.Join(t.TempDir(), "ready")
	done := make(chan error, 1)
	go func() {
		done <- Run(context.Background(), Config{
			Argv:  []string{"sh", "-c", `trap "exit 42" TERM; touch ` + ready + `; while :; do sleep 0.05; done`},
			Group: "g",
		})
	}()
	// The trap must be set before the signal comes, or sh dies of it.
	testutil.Eventually(t, 10*time.Second, "worker gets ready", func() error {
		_, err := os.Stat(ready)
		return err
	})
	// Run installs its handler before starting the worker, so once the
	// worker is ready the signal is ours to forward, not the test binary's
	// death.
	if err := syscall.Kill(os.Getpid(), syscall.SIGTERM); err != nil {
		t.Fatal(err)
	}
	select {
	case err := <-done:
		if err != (ExitError{Code: 42}) {
			t.Fatalf("Run = %v, want the worker's trap status 42", err)
		}
	case <-time.After(10 * time.Second):
		t.Fatal("worker did not exit after SIGTERM was forwarded")
	}
}

func TestRun_NotACgroupFilesystemRunsOutside(t *testing.T) {
	var inside bool
	err := Run(context.Background(), Config{CgroupRoot: t.TempDir(), Group: "g", Instance: "1", Argv: []string{"true"},
		Started: func(_ int, in bool) { inside = in }})
	if err != nil {
		t.Fatal(err)
	}
	if inside {
		t.Fatal("a plain directory was taken for a cgroup")
	}
}

// TestRun_PutsTheWorkerInItsCgroup needs a writable cgroup v2 (root on most
// CI machines); elsewhere it says why it skips.
func TestRun_PutsTheWorkerInItsCgroup(t *testing.T) {
	root, err := telemetry.FindCgroupRoot()
	if err != nil {
		t.Skipf("no cgroup v2 here: %v", err)
	}
	group := "rbee-test-" + strconv.Itoa(os.Getpid())
	if _, err := prepareCgroup(root, group, "probe"); err != nil {
		t.Skipf("cgroup v2 at %s is not writable here (needs root or a delegated cgroup): %v", root, err)
	}
	_ = os.Remove(filepath.Join(root, "rbee.slice", group, "probe"))
	t.Cleanup(func() { _ = os.Remove(filepath.Join(root, "rbee.slice", group)) })

	out := filepath.Join(t.TempDir(), "cgroup")
	var inside bool
	err = Run(context.Background(), Config{CgroupRoot: root, Group: group, Instance: "8080",
		Argv:    []string{"sh", "-c", "cat /proc/self/cgroup > " + out},
		Started: func(_ int, in bool) { inside = in }})
	if err != nil {
		t.Fatal(err)
	}
	b, err := os.ReadFile(out)
	if err != nil {
		t.Fatal(err)
	}
	want := "0::/rbee.slice/" + group + "/8080"
	if !inside || !strings.Contains(string(b), want+"\n") {
		t.Fatalf("worker's cgroup:\n%s\nwant a line %q (inside=%v)", b, want, inside)
	}
	if _, err := os.Stat(filepath.Join(root, "rbee.slice", group, "8080")); !os.IsNotExist(err) {
		t.Errorf("the worker's cgroup was not removed after it exited: %v", err)
	}
}
