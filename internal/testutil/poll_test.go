package testutil

import (
	"errors"
	"fmt"
	"strings"
	"testing"
	"time"
)

// fakeTB records what a wait does to a test instead of doing it; a call it
// does not override reaches the real test.
type fakeTB struct {
	testing.TB
	helper int
	fatals []string
}

func (f *fakeTB) Helper() { f.helper++ }

func (f *fakeTB) Fatalf(format string, args ...any) {
	f.fatals = append(f.fatals, fmt.Sprintf(format, args...))
}

// after returns a condition that fails its first n calls and holds from
// then on, and a pointer to how often it was called.
func after(n int) (func() error, *int) {
	calls := 0
	return func() error {
		calls++
		if calls <= n {
			return fmt.Errorf("call %d of %d", calls, n)
		}
		return nil
	}, &calls
}

func TestEventually_ReturnsOnceTrue(t *testing.T) {
	cond, calls := after(3)
	tb := &fakeTB{TB: t}
	Every(time.Millisecond).Eventually(tb, 10*time.Second, "third time lucky", cond)
	if len(tb.fatals) != 0 || *calls != 4 {
		t.Fatalf("fatals %q after %d calls, want none after 4", tb.fatals, *calls)
	}
	if tb.helper == 0 {
		t.Error("Eventually did not call Helper")
	}

	// The package-level form, at the default interval.
	cond, calls = after(2)
	Eventually(t, 10*time.Second, "third time lucky", cond)
	if *calls != 3 {
		t.Errorf("%d calls, want 3", *calls)
	}
}

func TestEventually_FailsWithLastErrorAtDeadline(t *testing.T) {
	cond, calls := after(1 << 30)
	tb := &fakeTB{TB: t}
	const within = 50 * time.Millisecond
	start := time.Now()
	Eventually(tb, within, "never", cond)
	took := time.Since(start)

	want := fmt.Sprintf("never: not true after 50ms: call %d of %d", *calls, 1<<30)
	if len(tb.fatals) != 1 || tb.fatals[0] != want {
		t.Fatalf("fatals %q, want [%q]", tb.fatals, want)
	}
	if took < within {
		t.Errorf("failed after %v, before the %v deadline", took, within)
	}
	// Every 10 ms for 50 ms, plus the first call and one at the deadline; a
	// slow machine may manage fewer, never more.
	if *calls < 2 || *calls > 7 {
		t.Errorf("%d calls in %v, want 2 to 7", *calls, within)
	}
}

func TestUntil_NeverWaitsPastDeadline(t *testing.T) {
	cond, calls := after(1 << 30)
	start := time.Now()
	err := Every(time.Hour).Until(20*time.Millisecond, cond)
	if took := time.Since(start); took > 5*time.Second {
		t.Errorf("Until took %v with a 20ms deadline and an hour's interval", took)
	}
	// Once at the start and once at the deadline.
	if *calls != 2 || err == nil || !strings.HasPrefix(err.Error(), "not true after 20ms: call 2 of") {
		t.Errorf("Until = %v after %d calls, want not true after two", err, *calls)
	}
}

func TestUntil_StopEndsTheWait(t *testing.T) {
	died := errors.New("process exited")
	calls := 0
	start := time.Now()
	err := Poll{}.Until(10*time.Second, func() error {
		calls++
		if calls == 3 {
			return Stop(died)
		}
		return errors.New("not yet")
	})
	if time.Since(start) > 5*time.Second || calls != 3 {
		t.Errorf("Until returned after %v and %d calls, want at the third", time.Since(start), calls)
	}
	if !errors.Is(err, died) || !strings.HasPrefix(err.Error(), "gave up after ") {
		t.Errorf("Until = %v, want it to give up with %v", err, died)
	}
	if _, ok := errors.AsType[stopError](err); ok {
		t.Error("Until's error still carries Stop's mark: a wait around this one would stop too")
	}
	if Stop(nil) != nil {
		t.Error("Stop(nil) != nil")
	}
}

func TestConsistently(t *testing.T) {
	tb := &fakeTB{TB: t}
	calls := 0
	Consistently(tb, 30*time.Millisecond, "holds", func() error { calls++; return nil })
	if len(tb.fatals) != 0 || calls < 2 || tb.helper == 0 {
		t.Errorf("fatals %q after %d calls, helper %d; want none after 2 or more, and Helper called", tb.fatals, calls, tb.helper)
	}

	tb = &fakeTB{TB: t}
	calls = 0
	Every(time.Millisecond).Consistently(tb, 10*time.Second, "quiet", func() error {
		if calls++; calls == 3 {
			return errors.New("it happened")
		}
		return nil
	})
	if len(tb.fatals) != 1 || !strings.HasPrefix(tb.fatals[0], "quiet: broke after ") || !strings.HasSuffix(tb.fatals[0], " of 10s: it happened") {
		t.Errorf("fatals %q, want one saying quiet broke", tb.fatals)
	}
	if calls != 3 {
		t.Errorf("%d calls, want it to stop at the third", calls)
	}
}
