package launch

import (
	"errors"
	"fmt"
	"io"
	"log/slog"
	"os"
	"os/exec"
	"syscall"
	"time"
)

// StartConfig says what a hive starts on its own (an engine it was asked to
// load) and where its output goes.
type StartConfig struct {
	// CgroupRoot is the cgroup v2 mount; empty means run without a cgroup.
	CgroupRoot string
	Group      string
	Instance   string
	Argv       []string
	// Env is added to the hive's environment (CUDA_VISIBLE_DEVICES).
	Env []string
	// Output takes the process's stdout and stderr.
	Output io.Writer
	Logger *slog.Logger
}

// Process is a worker the hive started and supervises: unlike Run's, it
// gets no signals from the terminal and dies with the hive.
type Process struct {
	Pid      int
	InCgroup bool
	cmd      *exec.Cmd
	dir      string
	log      *slog.Logger
	done     chan struct{}
	err      error // exit status, set before done closes
}

// Start starts cfg.Argv in its cgroup (where writable) and returns at once.
func Start(cfg StartConfig) (*Process, error) {
	log := cfg.Logger
	if log == nil {
		log = slog.New(slog.DiscardHandler)
	}
	if len(cfg.Argv) == 0 {
		return nil, errors.New("start: no command")
	}
	path, err := exec.LookPath(cfg.Argv[0])
	if err != nil {
		return nil, fmt.Errorf("start %s: %w", cfg.Argv[0], err)
	}
	cmd := exec.Command(path, cfg.Argv[1:]...)
	cmd.Args[0] = cfg.Argv[0]
	cmd.Env = append(os.Environ(), cfg.Env...)
	cmd.Stdout, cmd.Stderr = cfg.Output, cfg.Output
	// A helper that left the process group and keeps the output pipe open
	// must not keep Wait (and so the hive's shutdown) waiting for it.
	cmd.WaitDelay = 5 * time.Second
	// Its own process group, so stopping it reaches the helpers an engine
	// forks (vLLM's workers). Pdeathsig SIGKILL: a hive killed outright
	// leaves no engine holding VRAM that nobody supervises or reports.
	cmd.SysProcAttr = &syscall.SysProcAttr{Setpgid: true, Pdeathsig: syscall.SIGKILL}
	p := &Process{cmd: cmd, log: log, done: make(chan struct{})}
	dir, cgErr := prepareCgroup(cfg.CgroupRoot, cfg.Group, cfg.Instance)
	if cgErr == nil {
		p.InCgroup, err = startInCgroup(cmd, dir)
		p.dir = dir
	} else {
		err = cmd.Start()
	}
	if err != nil {
		if p.dir != "" {
			removeCgroup(p.dir, log)
		}
		return nil, fmt.Errorf("start %s: %w", cfg.Argv[0], err)
	}
	p.Pid = cmd.Process.Pid
	go func() {
		p.err = exitStatus(cmd.Wait())
		// Helpers the engine forked (vLLM's workers) go with it: they
		// would hold VRAM that nobody reports or stops.
		_ = syscall.Kill(-p.Pid, syscall.SIGKILL)
		if p.dir != "" {
			removeCgroup(p.dir, log)
		}
		close(p.done)
	}()
	return p, nil
}

// Done is closed when the process has exited (and its cgroup is removed).
func (p *Process) Done() <-chan struct{} { return p.done }

// Err is the exit status once Done is closed: nil for 0, ExitError otherwise.
func (p *Process) Err() error {
	<-p.done
	return p.err
}

// Stop asks the process group to end (SIGTERM), kills it after grace, and
// returns once it has exited.
func (p *Process) Stop(grace time.Duration) {
	select {
	case <-p.done:
		return
	default:
	}
	_ = syscall.Kill(-p.Pid, syscall.SIGTERM)
	t := time.NewTimer(grace)
	defer t.Stop()
	select {
	case <-p.done:
		return
	case <-t.C:
	}
	p.log.Warn("worker did not stop in time; killing it", "pid", p.Pid, "grace", grace)
	_ = syscall.Kill(-p.Pid, syscall.SIGKILL)
	<-p.done
}
