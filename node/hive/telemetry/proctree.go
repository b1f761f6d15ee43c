package telemetry

import (
	"bytes"
	"errors"
	"fmt"
	"io/fs"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"syscall"
)

// A worker is its process tree: `ollama serve` does its work in the
// `ollama runner` it starts, vLLM in its EngineCore process, which also holds
// the GPU memory. A worker rbee started lives in a cgroup, whose pids are the
// whole tree already (a child is born in its parent's cgroup, and the cgroup's
// counters cover every task it ever held). A worker found otherwise (a
// --worker server, `rbee worker run` outside a cgroup) is one pid, so its
// descendants are found here, once a tick, and measured with it.

// maxTreePIDs bounds one worker's tree: a worker that forks without limit
// (a fork bomb, a build farm behind an API) must not make a tick walk the
// whole process table. Real engines have a handful of processes.
const maxTreePIDs = 512

// childLister returns the direct children of pid; none, with no error, for a
// process that has exited.
type childLister func(pid int32) ([]int32, error)

// expandTree returns the roots followed by their descendants, breadth first,
// each pid once, at most maxTreePIDs in all. A descendant in skip (a pid
// another worker reports: one in a worker's cgroup) is left out with its own
// descendants. A process that exits during the walk simply has no children;
// a pid listed under two parents (reused while we walked) counts once. The
// error says whose children could not be read; the pids found are returned
// beside it.
func expandTree(roots []int32, children childLister, skip map[int32]bool) ([]int32, error) {
	seen := make(map[int32]bool, len(roots))
	var out []int32
	for _, r := range roots {
		if r > 0 && !seen[r] && len(out) < maxTreePIDs {
			seen[r] = true
			out = append(out, r)
		}
	}
	var errs []error
	for i := 0; i < len(out) && len(out) < maxTreePIDs; i++ {
		kids, err := children(out[i])
		if err != nil {
			errs = append(errs, err)
			continue
		}
		for _, k := range kids {
			if k <= 0 || seen[k] || skip[k] || len(out) >= maxTreePIDs {
				continue
			}
			seen[k] = true
			out = append(out, k)
		}
	}
	return out, errors.Join(errs...)
}

// procChildren is a childLister over procfs: the union of
// /proc/<pid>/task/<tid>/children over the process's threads (the kernel
// lists a child under the thread that forked it). Kernels built without
// CONFIG_PROC_CHILDREN lack the file; newChildLister then scans PPids.
func procChildren(proc string) childLister {
	return func(pid int32) ([]int32, error) {
		taskDir := filepath.Join(proc, strconv.Itoa(int(pid)), "task")
		tasks, err := os.ReadDir(taskDir)
		if errors.Is(err, fs.ErrNotExist) || errors.Is(err, syscall.ESRCH) {
			return nil, nil
		}
		if err != nil {
			return nil, fmt.Errorf("list threads of %d: %w", pid, err)
		}
		var kids []int32
		for _, t := range tasks {
			data, err := os.ReadFile(filepath.Join(taskDir, t.Name(), "children"))
			if err != nil {
				// The thread exited since the listing: it forks no more.
				if errors.Is(err, fs.ErrNotExist) || errors.Is(err, syscall.ESRCH) {
					continue
				}
				return kids, fmt.Errorf("read children of %d: %w", pid, err)
			}
			kids = appendPIDs(kids, data)
		}
		return kids, nil
	}
}

// appendPIDs parses space-separated pids, skipping anything else.
func appendPIDs(dst []int32, data []byte) []int32 {
	for _, f := range bytes.Fields(data) {
		if n, err := strconv.ParseInt(string(f), 10, 32); err == nil && n > 0 {
			dst = append(dst, int32(n))
		}
	}
	return dst
}

// ppidChildren is a childLister built from one scan of every process's PPid
// (/proc/<pid>/stat field 4): for kernels without the children files. Build
// it once a tick; it costs a read per process on the machine.
func ppidChildren(proc string) (childLister, error) {
	entries, err := os.ReadDir(proc)
	if err != nil {
		return nil, fmt.Errorf("list processes: %w", err)
	}
	byParent := make(map[int32][]int32)
	for _, e := range entries {
		pid, err := strconv.ParseInt(e.Name(), 10, 32)
		if err != nil {
			continue
		}
		data, err := os.ReadFile(filepath.Join(proc, e.Name(), "stat"))
		if err != nil {
			continue // exited since the listing
		}
		if ppid, ok := statPPid(data); ok {
			byParent[ppid] = append(byParent[ppid], int32(pid))
		}
	}
	return func(pid int32) ([]int32, error) { return byParent[pid], nil }, nil
}

// statPPid reads the parent pid from /proc/<pid>/stat: the second field
// after the command, which is parenthesised and may hold spaces and ')'.
func statPPid(data []byte) (int32, bool) {
	i := bytes.LastIndexByte(data, ')')
	if i < 0 {
		return 0, false
	}
	f := strings.Fields(string(data[i+1:]))
	if len(f) < 2 {
		return 0, false
	}
	n, err := strconv.ParseInt(f[1], 10, 32)
	return int32(n), err == nil && n >= 0
}

// hasChildrenFiles reports whether this kernel has
// /proc/<pid>/task/<tid>/children.
func hasChildrenFiles(proc string) bool {
	self := strconv.Itoa(os.Getpid())
	_, err := os.Stat(filepath.Join(proc, self, "task", self, "children"))
	return err == nil
}

// treeWalker finds the descendants of workers outside cgroups, once a tick.
// Not safe for concurrent use.
type treeWalker struct {
	proc string // the procfs mount, /proc
	// scan: the kernel has no children files, so each tick that needs a
	// tree scans every process's parent once.
	scan   bool
	lister childLister // this tick's; nil until a tree is asked for
	log    func(msg string, args ...any)
}

func newTreeWalker(proc string, debug func(msg string, args ...any)) *treeWalker {
	return &treeWalker{proc: proc, scan: !hasChildrenFiles(proc), log: debug}
}

// tick forgets the previous tick's process table.
func (w *treeWalker) tick() { w.lister = nil }

// tree returns root and its descendants but those in skip, root first; just
// root when they cannot be listed.
func (w *treeWalker) tree(root int32, skip map[int32]bool) []int32 {
	if w.lister == nil {
		w.lister = procChildren(w.proc)
		if w.scan {
			l, err := ppidChildren(w.proc)
			if err != nil {
				w.log("worker process trees not walked; measuring their main process only", "reason", err)
				l = func(int32) ([]int32, error) { return nil, nil }
			}
			w.lister = l
		}
	}
	pids, err := expandTree([]int32{root}, w.lister, skip)
	if err != nil {
		w.log("worker process tree partly read", "pid", root, "reason", err)
	}
	return pids
}
