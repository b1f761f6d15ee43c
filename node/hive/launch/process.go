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
	// RecordDir, when set, keeps a record of the process while it runs,
	// so that the next hive kills it (and what it forked) if this one is
	// killed outright (see KillLeftovers).
	RecordDir string
	Logger    *slog.Logger
}

// Process is a worker the hive started and supervises: unlike Run's, it
// gets no signals from the terminal and dies with the hive.
type Process struct {
	Pid      int
	InCgroup bool
	cmd      *exec.Cmd
	dir      string
	token    string // in the environment of the process and what it forks
	start    uint64 // its /proc start time
	record   string // its record's path, "" when not recorded
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
	token, err := newToken()
	if err != nil {
		return nil, fmt.Errorf("start %s: %w", cfg.Argv[0], err)
	}
	cmd := exec.Command(path, cfg.Argv[1:]...)
	cmd.Args[0] = cfg.Argv[0]
	cmd.Env = append(append(os.Environ(), cfg.Env...), tokenEnv+"="+token)
	cmd.Stdout, cmd.Stderr = cfg.Output, cfg.Output
	// A helper that left the process group and keeps the output pipe open
	// must not keep Wait (and so the hive's shutdown) waiting for it.
	cmd.WaitDelay = 5 * time.Second
	// Its own process group, so stopping it reaches the helpers an engine
	// forks (vLLM's workers). Pdeathsig SIGKILL: a hive killed outright
	// leaves no engine holding VRAM that nobody supervises or reports.
	cmd.SysProcAttr = &syscall.SysProcAttr{Setpgid: true, Pdeathsig: syscall.SIGKILL}
	p := &Process{cmd: cmd, log: log, token: token, done: make(chan struct{})}
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
	if st, err := readStat(p.Pid); err == nil {
		p.start = st.start
	}
	if cfg.RecordDir != "" {
		hive, hiveStart := hiveSelf()
		r := record{Pid: p.Pid, StartTime: p.start, BootID: bootID(), Token: token, HivePid: hive, HiveStart: hiveStart,
			Cgroup: p.dir, Instance: cfg.Instance, Argv: cfg.Argv}
		if p.record, err = writeRecord(cfg.RecordDir, r); err != nil {
			log.Warn("engine not recorded: a crash of this hive would leave it running", "pid", p.Pid, "err", err)
		}
	}
	go func() {
		p.err = exitStatus(cmd.Wait())
		p.killRest()
		if p.dir != "" {
			removeCgroup(p.dir, log)
		}
		if p.record != "" {
			if err := os.Remove(p.record); err != nil {
				log.Warn("remove engine record", "file", p.record, "err", err)
			}
		}
		close(p.done)
	}()
	return p, nil
}

// killRest kills what the process forked once it has exited, and waits for
// it to exit: helpers the engine forked (vLLM's workers, the engine a
// wrapper script started) would hold a port and VRAM that nobody reports
// or stops, and a restart on the same port would find it taken.
func (p *Process) killRest() {
	_ = syscall.Kill(-p.Pid, syscall.SIGKILL)
	// The token also finds what left the process group (setsid).
	r := record{Pid: p.Pid, StartTime: p.start, Token: p.token}
	pids := r.victims(scanProcs())
	for _, pid := range pids {
		_ = syscall.Kill(pid, syscall.SIGKILL)
	}
	if left := waitGone(pids, leftoverWait); len(left) > 0 {
		p.log.Warn("processes the worker forked did not exit after SIGKILL", "pid", p.Pid, "left", left)
	}
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
