package launch

import (
	"bytes"
	"crypto/rand"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"io/fs"
	"log/slog"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"time"
)

// A hive killed outright (SIGKILL, the OOM killer) runs no cleanup: Pdeathsig
// reaches only an engine's first process, so the engine a wrapper script
// forked keeps its port and its VRAM, and the next hive would start a second
// copy beside it. So each engine is recorded on disk while it runs, and the
// next hive kills what the records name (KillLeftovers).
//
// Which processes are an engine's is decided by a token in their
// environment, which whatever the engine forks inherits: a pid, and a
// process group id, may belong to an unrelated process by then.

// tokenEnv names the environment variable that marks an engine's processes.
const tokenEnv = "RBEE_ENGINE_TOKEN"

// leftoverWait bounds the wait for killed processes to exit: SIGKILL cannot
// be caught, but a process in uninterruptible sleep (a GPU driver call)
// exits only when that ends.
const leftoverWait = 5 * time.Second

// record is what the hive keeps on disk of one running engine.
type record struct {
	Pid int `json:"pid"`
	// StartTime is field 22 of /proc/<pid>/stat (clock ticks since boot):
	// with BootID it tells the engine's first process from a later one
	// given the same pid.
	StartTime uint64 `json:"start_time"`
	BootID    string `json:"boot_id"`
	Token     string `json:"token"`
	// HivePid and HiveStart are the hive that runs the engine: while it
	// lives the engine is its to stop, not another hive's to kill (hives
	// without --data-dir share one directory of records).
	HivePid   int      `json:"hive_pid"`
	HiveStart uint64   `json:"hive_start_time"`
	Cgroup    string   `json:"cgroup,omitempty"`
	Instance  string   `json:"instance,omitempty"`
	Argv      []string `json:"argv"`
}

func newToken() (string, error) {
	b := make([]byte, 16)
	if _, err := rand.Read(b); err != nil {
		return "", fmt.Errorf("engine token: %w", err)
	}
	return hex.EncodeToString(b), nil
}

// hiveSelf is this process's pid and start time, read once.
var hiveSelf = sync.OnceValues(func() (int, uint64) {
	pid := os.Getpid()
	st, _ := readStat(pid)
	return pid, st.start
})

// bootID tells one boot from another: after a reboot no record names a
// live process, whatever its pid and start time.
func bootID() string {
	b, _ := os.ReadFile("/proc/sys/kernel/random/boot_id")
	return strings.TrimSpace(string(b))
}

// writeRecord keeps r in dir as <pid>.json, atomically, and returns its path.
func writeRecord(dir string, r record) (string, error) {
	if err := os.MkdirAll(dir, 0o755); err != nil {
		return "", fmt.Errorf("record engine: %w", err)
	}
	b, err := json.Marshal(r)
	if err != nil {
		return "", fmt.Errorf("record engine: %w", err)
	}
	path := filepath.Join(dir, strconv.Itoa(r.Pid)+".json")
	tmp := path + ".tmp"
	if err := os.WriteFile(tmp, b, 0o644); err != nil {
		return "", fmt.Errorf("record engine: %w", err)
	}
	if err := os.Rename(tmp, path); err != nil {
		return "", fmt.Errorf("record engine: %w", err)
	}
	return path, nil
}

// KillLeftovers kills the engines recorded in dir whose hive is gone (it was
// killed outright and could not stop them), waits for them to exit, removes
// their empty cgroups and forgets them. It logs one line per engine it
// killed, and returns how many those were. Records of a live hive are left
// alone.
func KillLeftovers(dir string, log *slog.Logger) (int, error) {
	if log == nil {
		log = slog.New(slog.DiscardHandler)
	}
	ents, err := os.ReadDir(dir)
	if errors.Is(err, fs.ErrNotExist) {
		return 0, nil
	}
	if err != nil {
		return 0, fmt.Errorf("read engine records: %w", err)
	}
	boot := bootID()
	var recs []record
	var paths []string
	for _, e := range ents {
		path := filepath.Join(dir, e.Name())
		if strings.HasSuffix(e.Name(), ".json.tmp") {
			_ = os.Remove(path) // a hive killed while it wrote the record
			continue
		}
		if e.IsDir() || !strings.HasSuffix(e.Name(), ".json") {
			continue
		}
		b, err := os.ReadFile(path)
		var r record
		if err == nil {
			err = json.Unmarshal(b, &r)
		}
		if err != nil || r.Pid <= 0 || r.Token == "" {
			log.Warn("drop unreadable engine record", "file", path, "err", err)
			_ = os.Remove(path)
			continue
		}
		if r.BootID == boot && alive(r.HivePid, r.HiveStart) {
			continue
		}
		if r.BootID != boot {
			_ = os.Remove(path) // a reboot ended every process it names
			continue
		}
		recs = append(recs, r)
		paths = append(paths, path)
	}
	if len(recs) == 0 {
		return 0, nil
	}
	procs := scanProcs()
	killed := 0
	for i, r := range recs {
		pids := r.victims(procs)
		for _, pid := range pids {
			_ = syscall.Kill(pid, syscall.SIGKILL)
		}
		left := waitGone(pids, leftoverWait)
		if r.Cgroup != "" {
			_ = os.Remove(r.Cgroup) // only once empty; an earlier hive's, so no longer in use
		}
		if len(pids) > 0 {
			killed++
			log.Warn("killed an engine a crashed hive left running", "instance", r.Instance, "pid", r.Pid,
				"processes", pids, "still_exiting", left, "hive_pid", r.HivePid, "argv", strings.Join(r.Argv, " "))
		} else {
			log.Debug("engine a crashed hive recorded is gone already", "instance", r.Instance, "pid", r.Pid)
		}
		if err := os.Remove(paths[i]); err != nil {
			log.Warn("remove engine record", "file", paths[i], "err", err)
		}
	}
	return killed, nil
}

// victims are the processes of r's engine among procs: those that carry its
// token, its first process if it still runs, and the rest of the process
// group of either. A process group is taken whole only when one of its
// members is known to be the engine's: while the group has members its id
// cannot be given to a new process, so no unrelated group can bear it.
func (r record) victims(procs []procInfo) []int {
	ours := map[int]bool{}
	groups := map[int]bool{}
	for _, p := range procs {
		if p.zombie {
			continue
		}
		if (p.pid == r.Pid && p.start == r.StartTime) || hasToken(p.pid, r.Token) {
			ours[p.pid] = true
			groups[p.pgid] = true
		}
	}
	var out []int
	for _, p := range procs {
		if !p.zombie && (ours[p.pid] || (groups[p.pgid] && p.pgid == r.Pid && p.start >= r.StartTime)) {
			out = append(out, p.pid)
		}
	}
	return out
}

// procInfo is what /proc/<pid>/stat says of one process.
type procInfo struct {
	pid, pgid int
	start     uint64
	zombie    bool
}

// readStat parses /proc/<pid>/stat: the command name may hold spaces and
// parentheses, so the fields are counted from the last ')'.
func readStat(pid int) (procInfo, error) {
	b, err := os.ReadFile("/proc/" + strconv.Itoa(pid) + "/stat")
	if err != nil {
		return procInfo{}, err
	}
	i := bytes.LastIndexByte(b, ')')
	if i < 0 {
		return procInfo{}, fmt.Errorf("parse /proc/%d/stat", pid)
	}
	f := strings.Fields(string(b[i+1:]))
	// f[0] is field 3 (state), f[2] field 5 (pgrp), f[19] field 22 (starttime).
	if len(f) < 20 {
		return procInfo{}, fmt.Errorf("parse /proc/%d/stat: %d fields", pid, len(f))
	}
	pgid, err1 := strconv.Atoi(f[2])
	start, err2 := strconv.ParseUint(f[19], 10, 64)
	if err := errors.Join(err1, err2); err != nil {
		return procInfo{}, fmt.Errorf("parse /proc/%d/stat: %w", pid, err)
	}
	return procInfo{pid: pid, pgid: pgid, start: start, zombie: f[0] == "Z" || f[0] == "X"}, nil
}

// scanProcs lists every process this hive can see.
func scanProcs() []procInfo {
	ents, _ := os.ReadDir("/proc")
	out := make([]procInfo, 0, len(ents))
	for _, e := range ents {
		pid, err := strconv.Atoi(e.Name())
		if err != nil {
			continue
		}
		if p, err := readStat(pid); err == nil {
			out = append(out, p)
		}
	}
	return out
}

// alive reports whether pid runs and is the process that started at start.
func alive(pid int, start uint64) bool {
	p, err := readStat(pid)
	return err == nil && !p.zombie && p.start == start
}

// hasToken reports whether pid's environment marks it as the engine with
// token. A process of another user reads as not ours.
func hasToken(pid int, token string) bool {
	b, err := os.ReadFile("/proc/" + strconv.Itoa(pid) + "/environ")
	if err != nil {
		return false
	}
	want := []byte(tokenEnv + "=" + token)
	for kv := range bytes.SplitSeq(b, []byte{0}) {
		if bytes.Equal(kv, want) {
			return true
		}
	}
	return false
}

// gone reports whether pid has exited: a zombie nobody reaped yet holds no
// port and no memory.
func gone(pid int) bool {
	p, err := readStat(pid)
	return err != nil || p.zombie
}

// waitGone polls until every pid has exited or within passes, and returns
// those still running.
func waitGone(pids []int, within time.Duration) []int {
	deadline := time.Now().Add(within)
	for {
		var left []int
		for _, pid := range pids {
			if !gone(pid) {
				left = append(left, pid)
			}
		}
		if len(left) == 0 || time.Now().After(deadline) {
			return left
		}
		pids = left
		time.Sleep(10 * time.Millisecond) // no event tells a process's exit to a non-parent
	}
}
