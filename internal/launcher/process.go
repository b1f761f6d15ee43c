package launcher

import (
	"errors"
	"io"
	"os"
	"os/exec"
	"strings"
	"syscall"
)

// Process is one child a Group started.
type Process struct {
	name    string
	cmd     *exec.Cmd
	logPath string
	done    chan struct{} // closed once the process has exited
	err     error         // how it exited (cmd.Wait); read only after done
}

// Name is the name the child was started under.
func (p *Process) Name() string { return p.name }

// Pid is the child's process id.
func (p *Process) Pid() int { return p.cmd.Process.Pid }

// LogPath is the file that holds the child's stdout and stderr.
func (p *Process) LogPath() string { return p.logPath }

// Signal sends sig to the child; it fails once the child has exited.
func (p *Process) Signal(sig os.Signal) error { return p.cmd.Process.Signal(sig) }

// Done is closed once the child has exited.
func (p *Process) Done() <-chan struct{} { return p.done }

// Exited reports whether the child has exited.
func (p *Process) Exited() bool {
	select {
	case <-p.done:
		return true
	default:
		return false
	}
}

// Wait waits for the child to exit and returns how it did, as
// exec.Cmd.Wait: nil for status 0, else an *exec.ExitError.
func (p *Process) Wait() error {
	<-p.done
	return p.err
}

// Err is how the child exited (see Wait), or nil while it runs.
func (p *Process) Err() error {
	if !p.Exited() {
		return nil
	}
	return p.err
}

// ExitCode is the child's exit status, or -1 while it runs or when a signal
// ended it.
func (p *Process) ExitCode() int {
	if !p.Exited() {
		return -1
	}
	return p.cmd.ProcessState.ExitCode()
}

// Status says how the child exited, for a person: "exit 0", "exit status
// 3", "signal: killed".
func (p *Process) Status() string {
	if err := p.Err(); err != nil {
		return err.Error()
	}
	return "exit 0"
}

// FailedOnItsOwn reports whether the child exited with a status that says
// it failed: not 0, and not a signal (its parent's, or a user's kill -9).
func (p *Process) FailedOnItsOwn() bool {
	err := p.Err()
	var ee *exec.ExitError
	if !errors.As(err, &ee) {
		return err != nil
	}
	ws, ok := ee.Sys().(syscall.WaitStatus)
	return !ok || !ws.Signaled()
}

// Log is what the child has written so far.
func (p *Process) Log() (string, error) {
	b, err := os.ReadFile(p.logPath)
	return string(b), err
}

// logTailMost bounds what LogTail reads: the end of a log that a person
// reads in an error message, not a log that may have grown for hours.
const logTailMost = 16 << 10

// LogTail returns the last n lines of the child's log, reading at most its
// last 16 KiB.
func (p *Process) LogTail(n int) ([]string, error) {
	f, err := os.Open(p.logPath)
	if err != nil {
		return nil, err
	}
	defer f.Close()
	if fi, err := f.Stat(); err == nil && fi.Size() > logTailMost {
		if _, err := f.Seek(-logTailMost, io.SeekEnd); err != nil {
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
