package models

import (
	"syscall"
	"testing"
	"time"

	"github.com/rbee/rbee/wsapi"
)

func TestRestartDelay(t *testing.T) {
	const stable = 30 * time.Second
	for _, tc := range []struct {
		name      string
		readyFor  time.Duration
		restarts  int
		wantWait  time.Duration
		wantAgain bool
	}{
		{"crashed soon after ready: a failed start, the queen backs off", 5 * time.Second, 0, 0, false},
		{"crashed soon after ready, after restarts: still a failed start", stable - time.Millisecond, 3, 0, false},
		{"first crash after serving well: at once", stable, 0, 0, true},
		{"first crash after serving for hours: at once", 5 * time.Hour, 0, 0, true},
		{"second crash in the window: 1 s", time.Minute, 1, time.Second, true},
		{"third: 2 s", time.Minute, 2, 2 * time.Second, true},
		{"fourth: 4 s", time.Minute, 3, 4 * time.Second, true},
		{"many: capped", time.Minute, 20, restartMax, true},
	} {
		t.Run(tc.name, func(t *testing.T) {
			wait, again := restartDelay(tc.readyFor, stable, tc.restarts)
			if wait != tc.wantWait || again != tc.wantAgain {
				t.Errorf("restartDelay(%v, %v, %d) = %v, %v; want %v, %v", tc.readyFor, stable, tc.restarts, wait, again, tc.wantWait, tc.wantAgain)
			}
		})
	}
}

// waitReadyAgain waits until the one worker is ready on instance with
// another pid than old, and returns it.
func waitReadyAgain(t *testing.T, m *Manager, instance string, old int) wsapi.ManagedWorker {
	t.Helper()
	var got wsapi.ManagedWorker
	eventually(t, 10*time.Second, func() bool {
		ws := managed(m)
		if len(ws) == 1 && ws[0].State == wsapi.ManagedReady && ws[0].PID != old {
			got = ws[0]
			return true
		}
		return false
	}, "the worker ready again with a new engine")
	if got.Instance != instance {
		t.Fatalf("restarted on instance %s, want %s in place", got.Instance, instance)
	}
	return got
}

// TestManager_RestartsAnEngineThatCrashedAfterServing: an engine that served
// well and crashed is started again in place at once, its model not marked
// failed; a second crash soon after waits a second.
func TestManager_RestartsAnEngineThatCrashedAfterServing(t *testing.T) {
	const stable = 200 * time.Millisecond
	m, h := newManager(t, Config{StableAfter: stable}, fake("m"))
	m.Start(&wsapi.ModelStart{StartID: "s1", Model: "m"}, "q")
	w := waitState(t, m, wsapi.ManagedReady)
	for i, minWait := range []time.Duration{0, time.Second} {
		eventually(t, 5*time.Second, func() bool { return time.Since(w.ReadyAt) > stable+50*time.Millisecond }, "the engine served well")
		if err := syscall.Kill(w.PID, syscall.SIGKILL); err != nil {
			t.Fatal(err)
		}
		killed := time.Now()
		again := waitReadyAgain(t, m, w.Instance, w.PID)
		took := time.Since(killed)
		t.Logf("crash %d: ready again after %v (pid %d -> %d)", i+1, took.Round(time.Millisecond), w.PID, again.PID)
		if took < minWait || took > minWait+3*time.Second {
			t.Errorf("crash %d: ready again after %v, want %v plus the load", i+1, took, minWait)
		}
		if alive(w.PID) {
			t.Errorf("crash %d: the crashed engine %d still runs", i+1, w.PID)
		}
		if c := catalog(m, "m"); c.Failures != 0 {
			t.Errorf("crash %d: catalog says %d failures (%s); a crash after serving is no failed start", i+1, c.Failures, c.FailReason)
		}
		h.mu.Lock()
		pid := h.registered[w.Instance]
		h.mu.Unlock()
		if pid != again.PID {
			t.Errorf("crash %d: registered pid %d, want the new engine's %d", i+1, pid, again.PID)
		}
		w = again
	}
}

// TestManager_CrashSoonAfterReadyIsAFailedStart: an engine that crashes
// before it has served a while is not restarted in place, and its model's
// failures keep counting across the ready, so the queen backs off longer.
func TestManager_CrashSoonAfterReadyIsAFailedStart(t *testing.T) {
	m, _ := newManager(t, Config{StableAfter: time.Minute}, fake("m"))
	for i, id := range []string{"s1", "s2"} {
		m.Start(&wsapi.ModelStart{StartID: id, Model: "m"}, "q")
		w := waitState(t, m, wsapi.ManagedReady)
		if err := syscall.Kill(w.PID, syscall.SIGKILL); err != nil {
			t.Fatal(err)
		}
		eventually(t, 10*time.Second, func() bool { return len(managed(m)) == 0 && catalog(m, "m").Failures == i+1 },
			"the crash recorded as a failed start, the worker gone")
	}
}
