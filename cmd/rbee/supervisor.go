package main

import (
	"context"
	"fmt"
	"io"
	"log/slog"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"sync"
	"syscall"
	"time"
	"unicode/utf8"
)

// supervisor runs the demo's child processes (this binary, again, with other
// arguments), each logging to its own file, and stops them. It owns one
// goroutine per child, which stop waits for.
type supervisor struct {
	bin    string // the rbee binary the children run
	logDir string // where each child's <name>.log goes
	log    *slog.Logger

	exits chan *child   // a child that exited before stop
	quit  chan struct{} // closed by stop: exits are no longer reported
	wg    sync.WaitGroup

	mu       sync.Mutex
	children []*child
	stopped  bool
}

// child is one process the supervisor started.
type child struct {
	name    string
	proc    *os.Process
	logPath string
	done    chan struct{} // closed once the process has exited
	err     error         // how it exited; read only after done
}

func newSupervisor(bin, logDir string, log *slog.Logger) *supervisor {
	return &supervisor{bin: bin, logDir: logDir, log: log, exits: make(chan *child), quit: make(chan struct{})}
}

// start runs the binary with args, its output going to <logDir>/<name>.log,
// and returns the child's pid.
func (s *supervisor) start(name string, args ...string) (int, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.stopped {
		return 0, fmt.Errorf("start %s: demo stopping", name)
	}
	logPath := filepath.Join(s.logDir, name+".log")
	f, err := os.Create(logPath)
	if err != nil {
		return 0, err
	}
	cmd := exec.Command(s.bin, args...)
	cmd.Stdout, cmd.Stderr = f, f
	cmd.Env = envWithoutRbee()
	// The children die with the demo even if it is killed outright;
	// Setpgid keeps a terminal's Ctrl-C (sent to the foreground group) to
	// the demo, which stops them in order.
	cmd.SysProcAttr = &syscall.SysProcAttr{Pdeathsig: syscall.SIGTERM, Setpgid: true}
	if err := cmd.Start(); err != nil {
		f.Close()
		return 0, fmt.Errorf("start %s: %w", name, err)
	}
	p := &child{name: name, proc: cmd.Process, logPath: logPath, done: make(chan struct{})}
	s.children = append(s.children, p)
	s.wg.Add(1)
	go func() {
		defer s.wg.Done()
		p.err = cmd.Wait()
		f.Close()
		close(p.done)
		select {
		case s.exits <- p:
		case <-s.quit:
		}
	}()
	return p.proc.Pid, nil
}

// await polls ready every interval until it returns nil, ctx ends (then
// ctx's error with ready's last answer), or a child exits (then a
// *childExitError): a demo never waits on a process that is gone.
func (s *supervisor) await(ctx context.Context, interval time.Duration, ready func(context.Context) error) error {
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
		case p := <-s.exits:
			return &childExitError{child: p}
		case <-t.C:
		}
	}
}

// childExitError is a child that exited while the demo waited for it: its
// name, pid and status, and the end of its log, where it says why.
type childExitError struct{ child *child }

// childLogLines is how much of a child's log a childExitError shows: enough
// for the error and the lines that led to it.
const childLogLines = 8

func (e *childExitError) Error() string {
	p := e.child
	var b strings.Builder
	fmt.Fprintf(&b, "%s (pid %d) exited: %s", p.name, p.proc.Pid, exitText(p.err))
	tail, err := logTail(p.logPath, childLogLines)
	switch {
	case err != nil:
		fmt.Fprintf(&b, " (read its log: %v)", err)
	case len(tail) == 0:
		fmt.Fprintf(&b, " (its log %s is empty)", p.logPath)
	default:
		fmt.Fprintf(&b, "; the end of %s:", p.logPath)
		for _, l := range tail {
			b.WriteString("\n    " + printable(l))
		}
	}
	return b.String()
}

// printable makes a line of a child's log safe to print on a terminal:
// control characters (escape sequences among them) and invalid UTF-8 become
// '?'.
func printable(s string) string {
	return strings.Map(func(r rune) rune {
		if r < 0x20 || (r >= 0x7f && r < 0xa0) || r == utf8.RuneError {
			return '?'
		}
		return r
	}, s)
}

// logTail returns the last n lines of the file at path, reading at most its
// last 16 KiB.
func logTail(path string, n int) ([]string, error) {
	f, err := os.Open(path)
	if err != nil {
		return nil, err
	}
	defer f.Close()
	const most = 16 << 10
	if fi, err := f.Stat(); err == nil && fi.Size() > most {
		if _, err := f.Seek(-most, io.SeekEnd); err != nil {
			return nil, err
		}
	}
	b, err := io.ReadAll(f)
	if err != nil {
		return nil, err
	}
	lines := strings.Split(strings.TrimRight(string(b), "\n"), "\n")
	if len(lines) == 1 && lines[0] == "" {
		return nil, nil
	}
	return lines[max(len(lines)-n, 0):], nil
}

// exited yields each child that exits on its own, before stop, as it exits
// (one that exits before anyone reads waits for the next reader); exits
// during stop are not reported.
func (s *supervisor) exited() <-chan *child { return s.exits }

// stop stops the children: SIGTERM (nodes leave the cluster gracefully),
// then SIGKILL for any still running after 5 s. It returns once every child
// and every goroutine the supervisor started has ended; later calls do
// nothing.
func (s *supervisor) stop() {
	s.mu.Lock()
	if s.stopped {
		s.mu.Unlock()
		return
	}
	s.stopped = true
	close(s.quit)
	ps := s.children
	s.mu.Unlock()

	for _, p := range ps {
		_ = p.proc.Signal(syscall.SIGTERM)
	}
	deadline := time.NewTimer(5 * time.Second)
	defer deadline.Stop()
	for _, p := range ps {
		select {
		case <-p.done:
		case <-deadline.C:
			for _, q := range ps {
				_ = q.proc.Kill()
			}
			<-p.done
		}
	}
	s.wg.Wait()
	s.log.Debug("demo processes stopped", "count", len(ps))
}
