package launch

import (
	"bytes"
	"encoding/json"
	"fmt"
	"log/slog"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/rbee/rbee/internal/testutil"
)

// forkingEngine starts sh as a wrapper script does: it forks the "engine"
// (sleep) in the background and waits. It returns the wrapper and the
// engine's pid. setsid puts the engine out of the wrapper's process group,
// as a daemonising engine does.
func forkingEngine(t *testing.T, env []string, setsid bool) (*exec.Cmd, int) {
	t.Helper()
	pidFile := filepath.Join(t.TempDir(), "engine.pid")
	engine := "sleep 300"
	if setsid {
		engine = "setsid sleep 300"
	}
	cmd := exec.Command("sh", "-c", engine+" & echo $! > "+pidFile+"; wait")
	cmd.Env = append(os.Environ(), env...)
	cmd.SysProcAttr = &syscall.SysProcAttr{Setpgid: true}
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	var pid int
	testutil.Eventually(t, 10*time.Second, "the wrapper forks the engine", func() error {
		b, err := os.ReadFile(pidFile)
		if err == nil {
			pid, err = strconv.Atoi(strings.TrimSpace(string(b)))
		}
		return err
	})
	t.Cleanup(func() {
		_ = syscall.Kill(pid, syscall.SIGKILL)
		_ = cmd.Process.Kill()
		_ = cmd.Wait()
	})
	return cmd, pid
}

// deadHive is a pid and start time of a process that has exited: the hive
// that wrote a record and was killed.
func deadHive(t *testing.T) (int, uint64) {
	t.Helper()
	cmd := exec.Command("true")
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	st, _ := readStat(cmd.Process.Pid)
	if err := cmd.Wait(); err != nil {
		t.Fatal(err)
	}
	return cmd.Process.Pid, st.start
}

func stat(t *testing.T, pid int) procInfo {
	t.Helper()
	st, err := readStat(pid)
	if err != nil {
		t.Fatal(err)
	}
	return st
}

func TestKillLeftovers(t *testing.T) {
	hivePid, hiveStart := deadHive(t)
	selfPid, selfStart := hiveSelf()
	boot := bootID()
	tests := []struct {
		name string
		// setup starts what the case needs and returns the record and
		// the pids that must be killed and those that must survive.
		setup      func(t *testing.T) (r record, killed, spared []int)
		wantKilled int
		wantKept   bool // the record stays
	}{
		{"a wrapper killed with its hive left the engine it forked", func(t *testing.T) (record, []int, []int) {
			tok, _ := newToken()
			wrapper, engine := forkingEngine(t, []string{tokenEnv + "=" + tok}, false)
			r := record{Pid: wrapper.Process.Pid, StartTime: stat(t, wrapper.Process.Pid).start, BootID: boot, Token: tok,
				HivePid: hivePid, HiveStart: hiveStart}
			// Pdeathsig kills the wrapper when the hive dies; its
			// engine lives on, orphaned.
			_ = wrapper.Process.Kill()
			_ = wrapper.Wait()
			return r, []int{engine}, nil
		}, 1, false},
		{"the engine left the process group", func(t *testing.T) (record, []int, []int) {
			tok, _ := newToken()
			wrapper, engine := forkingEngine(t, []string{tokenEnv + "=" + tok}, true)
			r := record{Pid: wrapper.Process.Pid, StartTime: stat(t, wrapper.Process.Pid).start, BootID: boot, Token: tok,
				HivePid: hivePid, HiveStart: hiveStart}
			return r, []int{wrapper.Process.Pid, engine}, nil
		}, 1, false},
		{"a reused pid is not the engine", func(t *testing.T) (record, []int, []int) {
			// An unrelated process has the recorded pid and group, but
			// not the start time nor the token.
			tok, _ := newToken()
			other, child := forkingEngine(t, nil, false)
			r := record{Pid: other.Process.Pid, StartTime: stat(t, other.Process.Pid).start - 1, BootID: boot, Token: tok,
				HivePid: hivePid, HiveStart: hiveStart}
			return r, nil, []int{other.Process.Pid, child}
		}, 0, false},
		{"a live hive's engine is its own to stop", func(t *testing.T) (record, []int, []int) {
			tok, _ := newToken()
			wrapper, engine := forkingEngine(t, []string{tokenEnv + "=" + tok}, false)
			r := record{Pid: wrapper.Process.Pid, StartTime: stat(t, wrapper.Process.Pid).start, BootID: boot, Token: tok,
				HivePid: selfPid, HiveStart: selfStart}
			return r, nil, []int{wrapper.Process.Pid, engine}
		}, 0, true},
		{"a record from before a reboot names nothing that runs", func(t *testing.T) (record, []int, []int) {
			tok, _ := newToken()
			wrapper, engine := forkingEngine(t, []string{tokenEnv + "=" + tok}, false)
			r := record{Pid: wrapper.Process.Pid, StartTime: stat(t, wrapper.Process.Pid).start, BootID: "another boot", Token: tok,
				HivePid: hivePid, HiveStart: hiveStart}
			return r, nil, []int{wrapper.Process.Pid, engine}
		}, 0, false},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			dir := t.TempDir()
			r, killed, spared := tc.setup(t)
			path, err := writeRecord(dir, r)
			if err != nil {
				t.Fatal(err)
			}
			var logs bytes.Buffer
			n, err := KillLeftovers(dir, slog.New(slog.NewTextHandler(&logs, nil)))
			if err != nil || n != tc.wantKilled {
				t.Fatalf("KillLeftovers = %d, %v; want %d engines killed", n, err, tc.wantKilled)
			}
			for _, pid := range killed {
				if !gone(pid) {
					t.Errorf("pid %d still runs", pid)
				}
			}
			for _, pid := range spared {
				if gone(pid) {
					t.Errorf("pid %d was killed", pid)
				}
			}
			if _, err := os.Stat(path); (err == nil) != tc.wantKept {
				t.Errorf("record kept: %v, want %v", err == nil, tc.wantKept)
			}
			if lines := strings.Count(logs.String(), "killed an engine a crashed hive left running"); lines != tc.wantKilled {
				t.Errorf("%d lines logged for %d engines killed:\n%s", lines, tc.wantKilled, logs.String())
			}
		})
	}
}

func TestKillLeftovers_NoDirOrBadRecords(t *testing.T) {
	if n, err := KillLeftovers(filepath.Join(t.TempDir(), "none"), nil); n != 0 || err != nil {
		t.Errorf("missing dir: %d, %v", n, err)
	}
	dir := t.TempDir()
	for name, body := range map[string]string{"1.json": "{not json", "2.json": `{"pid":2}`, "3.json.tmp": "{}"} {
		if err := os.WriteFile(filepath.Join(dir, name), []byte(body), 0o644); err != nil {
			t.Fatal(err)
		}
	}
	if n, err := KillLeftovers(dir, nil); n != 0 || err != nil {
		t.Errorf("bad records: %d, %v", n, err)
	}
	if ents, _ := os.ReadDir(dir); len(ents) != 0 {
		t.Errorf("bad records kept: %v", ents)
	}
}

// TestStart_RecordsTheEngineAndKillsWhatItForked: while a process Start
// started runs, its record names it; when it exits, what it forked goes
// with it, even out of its process group, and the record goes too.
func TestStart_RecordsTheEngineAndKillsWhatItForked(t *testing.T) {
	dir := t.TempDir()
	pidFile := filepath.Join(t.TempDir(), "engine.pid")
	p, err := Start(StartConfig{Group: "g", Instance: "1", RecordDir: dir,
		Argv: []string{"sh", "-c", "setsid sleep 300 & echo $! > " + pidFile + "; wait"}})
	if err != nil {
		t.Fatal(err)
	}
	var engine int
	testutil.Eventually(t, 10*time.Second, "the wrapper forks the engine", func() error {
		b, err := os.ReadFile(pidFile)
		if err == nil {
			engine, err = strconv.Atoi(strings.TrimSpace(string(b)))
		}
		return err
	})
	t.Cleanup(func() { _ = syscall.Kill(engine, syscall.SIGKILL) })
	b, err := os.ReadFile(filepath.Join(dir, strconv.Itoa(p.Pid)+".json"))
	if err != nil {
		t.Fatalf("no record of the running engine: %v", err)
	}
	var r record
	if err := json.Unmarshal(b, &r); err != nil {
		t.Fatal(err)
	}
	self, _ := hiveSelf()
	if r.Pid != p.Pid || r.StartTime != stat(t, p.Pid).start || r.HivePid != self || r.Token == "" {
		t.Fatalf("record %+v does not name the engine (pid %d) and this hive (%d)", r, p.Pid, self)
	}
	// The forked engine may still be between fork and exec (setsid, then
	// sleep), when its environment reads empty for a moment.
	testutil.Eventually(t, 5*time.Second, "the forked engine carries the token", func() error {
		if !hasToken(engine, r.Token) {
			return fmt.Errorf("pid %d lacks token %s", engine, r.Token)
		}
		return nil
	})
	p.Stop(5 * time.Second)
	if !gone(engine) {
		t.Errorf("the engine the wrapper forked (pid %d, its own session) outlived it", engine)
	}
	if ents, _ := os.ReadDir(dir); len(ents) != 0 {
		t.Errorf("records left after the exit: %v", ents)
	}
}
