package launcher

import (
	"context"
	"errors"
	"fmt"
	"io/fs"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"sync"
	"syscall"
	"time"
)

// Options say how a Group starts and stops its children; the zero value
// logs to the current folder, leaves each command's environment and
// attributes alone, and stops with SIGTERM, then SIGKILL after DefaultGrace.
type Options struct {
	// LogDir is the folder of the children's logs: <name>.log, or
	// <name>-2.log, <name>-3.log... for a name whose log is there already.
	LogDir string
	// Env, when not nil, is every child's environment, replacing the
	// command's own.
	Env []string
	// DeathSignal, when not 0, is sent to a child when the thread that
	// started it dies (Linux's Pdeathsig): the children do not outlive a
	// parent killed outright, whose Stop never ran.
	DeathSignal syscall.Signal
	// ProcessGroup puts each child in a process group of its own
	// (Setpgid), out of the terminal's foreground group: a Ctrl-C reaches
	// the parent alone, which stops the children in its own order.
	ProcessGroup bool
	// StopSignal is what Stop sends first; 0 means SIGTERM, which lets a
	// node leave its cluster gracefully.
	StopSignal syscall.Signal
	// Grace is how long Stop waits after StopSignal before it kills the
	// children left; 0 means DefaultGrace.
	Grace time.Duration
}

// DefaultGrace is long enough for a node to tell the cluster it leaves and
// finish its open streams on loopback, short enough that a stuck child does
// not hold up a demo's Ctrl-C for long.
const DefaultGrace = 5 * time.Second

// ErrStopped is returned by Start once Stop has begun.
var ErrStopped = errors.New("process group stopped")

// Group is a set of child processes started together and stopped together.
// Its methods are safe for concurrent use.
type Group struct {
	opts Options

	exits chan *Process  // a child that exited on its own, before Stop
	quit  chan struct{}  // closed by Stop: exits are no longer reported
	wg    sync.WaitGroup // one goroutine per child, waiting for it

	mu      sync.Mutex
	procs   []*Process
	stopped bool
}

// New returns a Group that has started nothing yet.
func New(opts Options) *Group {
	if opts.StopSignal == 0 {
		opts.StopSignal = syscall.SIGTERM
	}
	if opts.Grace <= 0 {
		opts.Grace = DefaultGrace
	}
	return &Group{opts: opts, exits: make(chan *Process), quit: make(chan struct{})}
}

// Start runs cmd as the child name, its stdout and stderr going to its log
// file, with the Group's environment and process attributes added to what
// cmd already sets.
func (g *Group) Start(name string, cmd *exec.Cmd) (*Process, error) {
	g.mu.Lock()
	defer g.mu.Unlock()
	if g.stopped {
		return nil, fmt.Errorf("start %s: %w", name, ErrStopped)
	}
	f, err := g.createLog(name)
	if err != nil {
		return nil, fmt.Errorf("start %s: %w", name, err)
	}
	// The child holds its own copy of the file.
	defer f.Close()
	cmd.Stdout, cmd.Stderr = f, f
	if g.opts.Env != nil {
		cmd.Env = g.opts.Env
	}
	if g.opts.DeathSignal != 0 || g.opts.ProcessGroup {
		if cmd.SysProcAttr == nil {
			cmd.SysProcAttr = &syscall.SysProcAttr{}
		}
		if g.opts.DeathSignal != 0 {
			cmd.SysProcAttr.Pdeathsig = g.opts.DeathSignal
		}
		cmd.SysProcAttr.Setpgid = cmd.SysProcAttr.Setpgid || g.opts.ProcessGroup
	}
	if err := cmd.Start(); err != nil {
		return nil, fmt.Errorf("start %s: %w", name, err)
	}
	p := &Process{name: name, cmd: cmd, logPath: f.Name(), done: make(chan struct{})}
	g.procs = append(g.procs, p)
	g.wg.Go(func() {
		p.err = cmd.Wait()
		close(p.done)
		select {
		case g.exits <- p:
		case <-g.quit:
		}
	})
	return p, nil
}

// createLog creates the log file of the child name: <name>.log, or
// <name>-2.log, <name>-3.log... when that name is taken, by a child started
// before under the same name or by another Group logging to the same folder.
func (g *Group) createLog(name string) (*os.File, error) {
	for n := 1; ; n++ {
		file := name + ".log"
		if n > 1 {
			file = name + "-" + strconv.Itoa(n) + ".log"
		}
		f, err := os.OpenFile(filepath.Join(g.opts.LogDir, file), os.O_WRONLY|os.O_CREATE|os.O_EXCL, 0o644)
		if !errors.Is(err, fs.ErrExist) {
			return f, err
		}
	}
}

// Len is how many children the Group has started.
func (g *Group) Len() int {
	g.mu.Lock()
	defer g.mu.Unlock()
	return len(g.procs)
}

// Exited yields each child that exits on its own, before Stop, as it exits;
// one that exits while nobody reads waits for the next reader (or Await).
// Exits during Stop are not reported.
func (g *Group) Exited() <-chan *Process { return g.exits }

// Await calls ready every interval until it returns nil, ctx ends (then
// ctx's error with ready's last answer), or a child exits (then an
// *ExitError): a wait for children to come up never outlasts one of them.
func (g *Group) Await(ctx context.Context, interval time.Duration, ready func(context.Context) error) error {
	t := time.NewTicker(interval)
	defer t.Stop()
	for {
		last := ready(ctx)
		if last == nil {
			return nil
		}
		select {
		case <-ctx.Done():
			return fmt.Errorf("%w (last answer: %w)", ctx.Err(), last)
		case p := <-g.exits:
			return &ExitError{Process: p}
		case <-t.C:
		}
	}
}

// Stop stops the children: StopSignal to each, then SIGKILL to those still
// running after Grace. It returns once every child and every goroutine the
// Group started has ended; later calls return at once.
func (g *Group) Stop() {
	g.mu.Lock()
	if g.stopped {
		g.mu.Unlock()
		return
	}
	g.stopped = true
	close(g.quit)
	ps := g.procs
	g.mu.Unlock()

	for _, p := range ps {
		_ = p.Signal(g.opts.StopSignal) // one that has exited already has nothing to stop
	}
	deadline := time.NewTimer(g.opts.Grace)
	defer deadline.Stop()
	for _, p := range ps {
		select {
		case <-p.done:
		case <-deadline.C:
			for _, q := range ps {
				_ = q.Signal(syscall.SIGKILL)
			}
			<-p.done
		}
	}
	g.wg.Wait()
}
