package launcher

import (
	"context"
	"errors"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strings"
	"syscall"
	"testing"
	"time"

	"go.uber.org/goleak"

	"github.com/rbee/rbee/internal/testutil"
)

func TestMain(m *testing.M) { goleak.VerifyTestMain(m) }

// sh is a child that runs script.
func sh(script string) *exec.Cmd { return exec.Command("sh", "-c", script) }

// start starts script in g as name, failing t if it cannot.
func start(t *testing.T, g *Group, name, script string) *Process {
	t.Helper()
	p, err := g.Start(name, sh(script))
	if err != nil {
		t.Fatal(err)
	}
	return p
}

// next is the next child g reports exited.
func next(t *testing.T, g *Group) *Process {
	t.Helper()
	select {
	case p := <-g.Exited():
		return p
	case <-time.After(10 * time.Second):
		t.Fatal("no child reported exited")
		return nil
	}
}

// waitLog waits until p's log holds want.
func waitLog(t *testing.T, p *Process, want string) {
	t.Helper()
	testutil.Eventually(t, 10*time.Second, p.Name()+" logs "+want, func() error {
		log, err := p.Log()
		if err != nil || !strings.Contains(log, want) {
			return fmt.Errorf("log %q, err %v", log, err)
		}
		return nil
	})
}

// TestGroup_ReportsExits: a child that exits on its own is reported, with
// its status, whether that says it failed, and its log.
func TestGroup_ReportsExits(t *testing.T) {
	for _, tc := range []struct {
		name       string
		script     string
		wantCode   int
		wantStatus string
		wantFailed bool
	}{
		{"exit 0", "echo out; echo err >&2", 0, "exit 0", false},
		{"exit 3", "echo out; exit 3", 3, "exit status 3", true},
		{"killed by a signal", "echo out; kill -9 $$", -1, "signal: killed", false},
	} {
		t.Run(tc.name, func(t *testing.T) {
			g := New(Options{LogDir: t.TempDir()})
			defer g.Stop()
			p := start(t, g, "child", tc.script)
			if got := next(t, g); got != p {
				t.Fatalf("reported %s, want the child", got.Name())
			}
			if !p.Exited() || p.ExitCode() != tc.wantCode || p.Status() != tc.wantStatus || p.FailedOnItsOwn() != tc.wantFailed {
				t.Errorf("exited %v, code %d, status %q, failed %v; want code %d, status %q, failed %v",
					p.Exited(), p.ExitCode(), p.Status(), p.FailedOnItsOwn(), tc.wantCode, tc.wantStatus, tc.wantFailed)
			}
			if err := p.Wait(); (err == nil) != (tc.wantCode == 0) {
				t.Errorf("Wait: %v", err)
			}
			if log, err := p.Log(); err != nil || !strings.HasPrefix(log, "out\n") {
				t.Errorf("log %q, %v; want what the child wrote", log, err)
			}
		})
	}
}

// TestGroup_Stop: Stop sends StopSignal first, and kills a child still
// running after Grace; exits during Stop are not reported, and Stop waits
// for every child.
func TestGroup_Stop(t *testing.T) {
	for _, tc := range []struct {
		name   string
		opts   Options
		script string
		// wantStatus is how the child ended; wantKill says Stop had to
		// wait out the grace period.
		wantStatus string
		wantKill   bool
	}{
		{"SIGTERM by default", Options{Grace: time.Minute}, "echo ready; exec sleep 60", "signal: terminated", false},
		{"a child that ignores SIGTERM is killed after the grace", Options{Grace: 100 * time.Millisecond},
			`trap "" TERM; echo ready; exec sleep 60`, "signal: killed", true},
		{"another first signal", Options{StopSignal: syscall.SIGINT, Grace: time.Minute},
			`trap "" TERM; echo ready; exec sleep 60`, "signal: interrupt", false},
		{"SIGKILL at once", Options{StopSignal: syscall.SIGKILL, Grace: time.Minute},
			`trap "" TERM; echo ready; exec sleep 60`, "signal: killed", false},
	} {
		t.Run(tc.name, func(t *testing.T) {
			tc.opts.LogDir = t.TempDir()
			g := New(tc.opts)
			p := start(t, g, "child", tc.script)
			// The trap is set once the child says so; a signal before
			// that would test nothing.
			waitLog(t, p, "ready")
			begin := time.Now()
			g.Stop()
			took := time.Since(begin)
			if !p.Exited() || p.Status() != tc.wantStatus {
				t.Errorf("after Stop: exited %v, status %q; want %q", p.Exited(), p.Status(), tc.wantStatus)
			}
			if waited := took >= tc.opts.Grace; waited != tc.wantKill {
				t.Errorf("Stop took %v with a grace of %v", took, tc.opts.Grace)
			}
			select {
			case q := <-g.Exited():
				t.Errorf("%s reported exited during Stop", q.Name())
			default:
			}
			g.Stop() // again: nothing to do
			if _, err := g.Start("late", sh("true")); !errors.Is(err, ErrStopped) {
				t.Errorf("Start after Stop: %v, want ErrStopped", err)
			}
		})
	}
}

// TestGroup_StopWaitsForEveryChild: many children, some gone already,
// some stubborn: Stop returns with all of them ended.
func TestGroup_StopWaitsForEveryChild(t *testing.T) {
	g := New(Options{LogDir: t.TempDir(), Grace: 100 * time.Millisecond})
	var ps []*Process
	for i := range 6 {
		script := "echo ready; exec sleep 60"
		switch i % 3 {
		case 1:
			script = `trap "" TERM; echo ready; exec sleep 60`
		case 2:
			script = "echo ready"
		}
		p := start(t, g, fmt.Sprintf("child%d", i), script)
		waitLog(t, p, "ready")
		ps = append(ps, p)
	}
	next(t, g) // one of those that exit on their own; the others wait
	g.Stop()
	for _, p := range ps {
		if !p.Exited() {
			t.Errorf("%s still runs after Stop", p.Name())
		}
	}
}

// TestGroup_AwaitFailsWhenAChildExits: a child that exits while the parent
// waits fails the wait at once, naming the child, its status and the end of
// its log.
func TestGroup_AwaitFailsWhenAChildExits(t *testing.T) {
	g := New(Options{LogDir: t.TempDir()})
	defer g.Stop()
	start(t, g, "sleeper", "sleep 60")
	start(t, g, "crasher", "for i in 1 2 3 4 5 6 7 8 9 10; do echo line $i; done; printf 'bind: address already in use\\033[2J\\n' >&2; exit 3")
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	begin := time.Now()
	err := g.Await(ctx, 10*time.Millisecond, func(context.Context) error { return errors.New("not yet") })
	var ee *ExitError
	if !errors.As(err, &ee) || time.Since(begin) > 10*time.Second {
		t.Fatalf("Await: %v after %v, want the crasher's exit at once", err, time.Since(begin))
	}
	msg := err.Error()
	for _, want := range []string{"crasher (pid ", "exited: exit status 3", "crasher.log:", "line 4", "line 10", "bind: address already in use?[2J"} {
		if !strings.Contains(msg, want) {
			t.Errorf("error lacks %q:\n%s", want, msg)
		}
	}
	if strings.Contains(msg, "line 3\n") {
		t.Errorf("error quotes more than the log's last %d lines:\n%s", ExitLogLines, msg)
	}
	if strings.Contains(msg, "\x1b") {
		t.Errorf("error holds the child's escape sequence: %q", msg)
	}
}

// TestGroup_AwaitGivesUpWithTheLastAnswer: when time runs out, the error
// says what was still missing.
func TestGroup_AwaitGivesUpWithTheLastAnswer(t *testing.T) {
	g := New(Options{LogDir: t.TempDir()})
	defer g.Stop()
	ctx, cancel := context.WithTimeout(context.Background(), 100*time.Millisecond)
	defer cancel()
	err := g.Await(ctx, 10*time.Millisecond, func(context.Context) error { return errors.New("entry: model m not served yet") })
	if !errors.Is(err, context.DeadlineExceeded) || !strings.Contains(err.Error(), "last answer: entry: model m not served yet") {
		t.Errorf("Await: %v, want the deadline and the last answer", err)
	}
}

// TestGroup_Options: the environment, the death signal and the process
// group reach the child; what its command set itself and the Options do not
// say is kept.
func TestGroup_Options(t *testing.T) {
	g := New(Options{LogDir: t.TempDir(), Env: []string{"ONLY=this"}, DeathSignal: syscall.SIGTERM, ProcessGroup: true})
	defer g.Stop()
	cmd := sh(`echo "ONLY=$ONLY HOME=$HOME"; exec sleep 60`)
	cmd.Env = []string{"HOME=/nowhere"}
	p, err := g.Start("child", cmd)
	if err != nil {
		t.Fatal(err)
	}
	waitLog(t, p, "ONLY=this HOME=\n")
	if a := cmd.SysProcAttr; a == nil || a.Pdeathsig != syscall.SIGTERM || !a.Setpgid {
		t.Errorf("SysProcAttr %+v, want Pdeathsig SIGTERM and Setpgid", a)
	}
	if pgid, err := syscall.Getpgid(p.Pid()); err != nil || pgid != p.Pid() {
		t.Errorf("process group %d (%v), want its own, %d", pgid, err, p.Pid())
	}

	// A command that sets its own death signal (netlab's) keeps it.
	grouped := New(Options{LogDir: t.TempDir(), ProcessGroup: true})
	defer grouped.Stop()
	cmd = sh("true")
	cmd.SysProcAttr = &syscall.SysProcAttr{Pdeathsig: syscall.SIGKILL}
	if _, err := grouped.Start("grouped", cmd); err != nil {
		t.Fatal(err)
	}
	if a := cmd.SysProcAttr; a.Pdeathsig != syscall.SIGKILL || !a.Setpgid {
		t.Errorf("SysProcAttr %+v, want the command's SIGKILL and Setpgid", a)
	}

	// The zero Options leave the command alone.
	plain := New(Options{LogDir: t.TempDir()})
	defer plain.Stop()
	cmd = sh("true")
	cmd.Env = []string{"KEEP=1"}
	if _, err := plain.Start("plain", cmd); err != nil {
		t.Fatal(err)
	}
	if cmd.SysProcAttr != nil || !slices.Equal(cmd.Env, []string{"KEEP=1"}) {
		t.Errorf("zero Options changed the command: attrs %+v, env %q", cmd.SysProcAttr, cmd.Env)
	}
}

// TestGroup_LogNames: a child's log is <name>.log in LogDir, and a name
// whose log is there already gets <name>-2.log, ...
func TestGroup_LogNames(t *testing.T) {
	dir := t.TempDir()
	g := New(Options{LogDir: dir})
	other := New(Options{LogDir: dir})
	defer g.Stop()
	defer other.Stop()
	var got []string
	for _, gr := range []*Group{g, g, other} {
		p := start(t, gr, "node", "echo hello")
		got = append(got, filepath.Base(p.LogPath()))
		if err := p.Wait(); err != nil {
			t.Fatal(err)
		}
	}
	if want := []string{"node.log", "node-2.log", "node-3.log"}; !slices.Equal(got, want) {
		t.Errorf("logs %q, want %q", got, want)
	}
	if _, err := g.Start("x", exec.Command(filepath.Join(dir, "no-such-binary"))); err == nil || !strings.Contains(err.Error(), "start x: ") {
		t.Errorf("Start of a missing binary: %v", err)
	}
}

// TestProcess_LogTail: the last lines of a log, read from its last 16 KiB
// at most.
func TestProcess_LogTail(t *testing.T) {
	dir := t.TempDir()
	long := strings.Repeat("x", 1000)
	// 100 lines of 1001 bytes: the last 16 KiB are the last 367 bytes of
	// a line, then 16 whole lines.
	big := strings.Repeat(long+"\n", 100)
	for _, tc := range []struct {
		name string
		log  string
		n    int
		want []string
	}{
		{"empty", "", 8, nil},
		{"fewer lines than asked", "a\nb\n", 8, []string{"a", "b"}},
		{"the last n", "a\nb\nc\nd\n", 2, []string{"c", "d"}},
		{"no final newline", "a\nb", 1, []string{"b"}},
		{"a big log", big + "last\n", 2, []string{long, "last"}},
		{"more lines asked than 16 KiB hold", big, 1000, append([]string{long[:367]}, slices.Repeat([]string{long}, 16)...)},
	} {
		t.Run(tc.name, func(t *testing.T) {
			path := filepath.Join(dir, strings.ReplaceAll(tc.name, " ", "_")+".log")
			if err := os.WriteFile(path, []byte(tc.log), 0o644); err != nil {
				t.Fatal(err)
			}
			p := &Process{logPath: path}
			got, err := p.LogTail(tc.n)
			if err != nil || !slices.Equal(got, tc.want) {
				t.Errorf("LogTail(%d) = %d lines %.40q, %v; want %d lines %.40q", tc.n, len(got), got, err, len(tc.want), tc.want)
			}
		})
	}
}
