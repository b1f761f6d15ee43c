package launch

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"os"
	"os/exec"
	"os/signal"
	"path/filepath"
	"strconv"
	"syscall"
)

// Config says what to run and where.
type Config struct {
	// CgroupRoot is the cgroup v2 mount; empty means run without a cgroup.
	CgroupRoot string
	Group      string
	Instance   string
	Argv       []string
	Logger     *slog.Logger
	// Started, if set, is called once the child runs, with its pid and
	// whether it is inside its cgroup (the caller registers it with the
	// node then).
	Started func(pid int, inCgroup bool)
}

// ExitError carries the child's exit status for the caller to exit with.
type ExitError struct{ Code int }

func (e ExitError) Error() string { return fmt.Sprintf("worker exited with status %d", e.Code) }

// forwarded are the signals a worker gets as if it had been sent them itself.
var forwarded = []os.Signal{syscall.SIGINT, syscall.SIGTERM, syscall.SIGHUP, syscall.SIGQUIT, syscall.SIGUSR1, syscall.SIGUSR2}

// Run starts the worker and waits for it. It returns nil when the worker
// exited 0, ExitError with its status otherwise (128+n when killed by signal
// n, as shells do), or an error when it could not start.
func Run(ctx context.Context, cfg Config) error {
	log := cfg.Logger
	if log == nil {
		log = slog.New(slog.DiscardHandler)
	}
	if len(cfg.Argv) == 0 {
		return errors.New("worker run: no command (give it after --)")
	}
	path, err := exec.LookPath(cfg.Argv[0])
	if err != nil {
		return fmt.Errorf("worker run: %w", err)
	}
	dir, cgErr := prepareCgroup(cfg.CgroupRoot, cfg.Group, cfg.Instance)
	cmd := exec.Command(path, cfg.Argv[1:]...)
	cmd.Args[0] = cfg.Argv[0]
	cmd.Stdin, cmd.Stdout, cmd.Stderr = os.Stdin, os.Stdout, os.Stderr
	// Its own process group, so a terminal's Ctrl-C reaches the worker once,
	// through us, rather than twice. Pdeathsig: if we are killed outright
	// (SIGKILL, OOM) the worker is told to stop instead of running on
	// unsupervised and unregistered.
	cmd.SysProcAttr = &syscall.SysProcAttr{Setpgid: true, Pdeathsig: syscall.SIGTERM}

	// Signals are ours to forward from before the worker starts: one that
	// came between its start and Notify would take the default action and
	// end us instead (the worker then learns of it only through Pdeathsig).
	sigs := make(chan os.Signal, 8)
	signal.Notify(sigs, forwarded...)
	defer signal.Stop(sigs)
	inCgroup := false
	if cgErr == nil {
		inCgroup, err = startInCgroup(cmd, dir)
		if err != nil {
			return fmt.Errorf("worker run: start %s: %w", cfg.Argv[0], err)
		}
	} else {
		log.Warn("cgroup not writable; starting the worker outside it and registering its pid with the node", "reason", cgErr)
		if err := cmd.Start(); err != nil {
			return fmt.Errorf("worker run: start %s: %w", cfg.Argv[0], err)
		}
	}
	if dir != "" {
		defer removeCgroup(dir, log)
	}
	if cfg.Started != nil {
		cfg.Started(cmd.Process.Pid, inCgroup)
	}
	done := make(chan error, 1)
	go func() { done <- cmd.Wait() }()
	for {
		select {
		case s := <-sigs:
			_ = cmd.Process.Signal(s)
		case <-ctx.Done():
			_ = cmd.Process.Signal(syscall.SIGTERM)
			ctx = context.Background() // forward once; then wait for the exit
		case err := <-done:
			return exitStatus(err)
		}
	}
}

func exitStatus(err error) error {
	if err == nil {
		return nil
	}
	var ee *exec.ExitError
	if !errors.As(err, &ee) {
		return fmt.Errorf("wait for worker: %w", err)
	}
	if ws, ok := ee.Sys().(syscall.WaitStatus); ok && ws.Signaled() {
		return ExitError{Code: 128 + int(ws.Signal())}
	}
	return ExitError{Code: ee.ExitCode()}
}

// cgroup2Magic is CGROUP2_SUPER_MAGIC from linux/magic.h.
const cgroup2Magic = 0x63677270

// prepareCgroup makes root/rbee.slice/group/instance and enables the cpu,
// memory and io controllers on the way down where it can, so the leaf gets
// cpu.stat, memory.current and io.stat.
func prepareCgroup(root, group, instance string) (string, error) {
	if root == "" {
		return "", errors.New("no cgroup v2 mount")
	}
	// A plain directory would take the mkdir and the cgroup.procs write
	// as ordinary files and fool us into reporting success.
	var fs syscall.Statfs_t
	if err := syscall.Statfs(root, &fs); err != nil {
		return "", fmt.Errorf("cgroup root %s: %w", root, err)
	}
	if fs.Type != cgroup2Magic {
		return "", fmt.Errorf("cgroup root %s is not a cgroup v2 filesystem", root)
	}
	for _, n := range []string{group, instance} {
		if n == "" || n == "." || n == ".." || filepath.Base(n) != n {
			return "", fmt.Errorf("bad cgroup name %q", n)
		}
	}
	slice := filepath.Join(root, "rbee.slice")
	dir := filepath.Join(slice, group, instance)
	if err := os.MkdirAll(dir, 0o755); err != nil {
		return "", fmt.Errorf("create cgroup %s: %w", dir, err)
	}
	// Best effort: a hybrid host whose controllers belong to cgroup v1
	// refuses this, and the leaf still tracks its processes.
	for _, d := range []string{root, slice, filepath.Join(slice, group)} {
		for _, c := range []string{"+cpu", "+memory", "+io"} {
			_ = os.WriteFile(filepath.Join(d, "cgroup.subtree_control"), []byte(c), 0)
		}
	}
	return dir, nil
}

// startInCgroup starts cmd inside dir atomically (clone3 with
// CLONE_INTO_CGROUP, Linux 5.7+), so not even the worker's first
// instruction runs outside it; on older kernels it starts cmd and then moves
// it, which leaves a moment outside. It reports whether cmd is in dir.
func startInCgroup(cmd *exec.Cmd, dir string) (bool, error) {
	fd, err := os.Open(dir)
	if err == nil {
		cmd.SysProcAttr.UseCgroupFD = true
		cmd.SysProcAttr.CgroupFD = int(fd.Fd())
		err = cmd.Start()
		fd.Close()
		if err == nil {
			return true, nil
		}
		cmd.SysProcAttr.UseCgroupFD = false
		cmd.SysProcAttr.CgroupFD = 0
		// exec.Cmd cannot be started twice; a fresh one with the same setup.
		fresh := exec.Command(cmd.Path, cmd.Args[1:]...)
		fresh.Args[0] = cmd.Args[0]
		fresh.Stdin, fresh.Stdout, fresh.Stderr, fresh.SysProcAttr = cmd.Stdin, cmd.Stdout, cmd.Stderr, cmd.SysProcAttr
		fresh.Env, fresh.Dir, fresh.WaitDelay = cmd.Env, cmd.Dir, cmd.WaitDelay // CUDA_VISIBLE_DEVICES, for one
		*cmd = *fresh
	}
	if err := cmd.Start(); err != nil {
		return false, err
	}
	if err := os.WriteFile(filepath.Join(dir, "cgroup.procs"), []byte(strconv.Itoa(cmd.Process.Pid)), 0); err != nil {
		return false, nil
	}
	return true, nil
}

// removeCgroup removes the worker's leaf once it is empty; the group and
// slice stay for the next worker.
func removeCgroup(dir string, log *slog.Logger) {
	if err := os.Remove(dir); err != nil && !errors.Is(err, os.ErrNotExist) {
		log.Debug("remove worker cgroup", "dir", dir, "err", err)
	}
}
