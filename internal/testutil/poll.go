package testutil

import (
	"errors"
	"fmt"
	"testing"
	"time"
)

// DefaultInterval is how often a Poll without Every looks again: short
// enough that a wait for something on loopback ends within a few ms of it
// happening, long enough that a condition costing an HTTP round trip does not
// load the machine it waits on.
const DefaultInterval = 10 * time.Millisecond

// Poll is how often the waits look at their condition; its zero value looks
// every DefaultInterval.
type Poll struct {
	interval time.Duration
}

// Every returns a Poll that calls the condition every d (DefaultInterval
// where d is not positive). It measures from the end of one call to the
// start of the next, and never waits past the deadline.
func Every(d time.Duration) Poll {
	return Poll{interval: d}
}

// Eventually calls cond every 10 ms until it returns nil, and fails the test
// with cond's last error when within passes.
func Eventually(tb testing.TB, within time.Duration, what string, cond func() error) {
	tb.Helper()
	Poll{}.Eventually(tb, within, what, cond)
}

// Consistently calls cond every 10 ms for d, and fails the test the first
// time it returns an error: it checks that something does not happen.
func Consistently(tb testing.TB, d time.Duration, what string, cond func() error) {
	tb.Helper()
	Poll{}.Consistently(tb, d, what, cond)
}

// Eventually calls cond until it returns nil, and fails the test with what,
// within and cond's last error when within passes, or at once when cond
// returns an error made by Stop.
func (p Poll) Eventually(tb testing.TB, within time.Duration, what string, cond func() error) {
	tb.Helper()
	if err := p.Until(within, cond); err != nil {
		tb.Fatalf("%s: %v", what, err)
	}
}

// Consistently calls cond for d, and fails the test with what, how long it
// held and cond's error the first time cond returns one.
func (p Poll) Consistently(tb testing.TB, d time.Duration, what string, cond func() error) {
	tb.Helper()
	start := time.Now()
	deadline := start.Add(d)
	wait := p.timer()
	defer wait.Stop()
	for {
		if err := cond(); err != nil {
			tb.Fatalf("%s: broke after %v of %v: %v", what, time.Since(start).Round(time.Millisecond), d, err)
			return // for a testing.TB whose Fatalf returns
		}
		if !p.sleep(wait, deadline) {
			return
		}
	}
}

// Until calls cond until it returns nil, and returns nil then. Once within
// has passed it returns cond's last error, saying how long it waited; when
// cond returns an error made by Stop it returns that error's cause at once.
// cond is always called at least once, and once more at the deadline.
func (p Poll) Until(within time.Duration, cond func() error) error {
	start := time.Now()
	deadline := start.Add(within)
	wait := p.timer()
	defer wait.Stop()
	for {
		err := cond()
		if err == nil {
			return nil
		}
		if s, ok := errors.AsType[stopError](err); ok {
			return fmt.Errorf("gave up after %v: %w", time.Since(start).Round(time.Millisecond), s.err)
		}
		if !p.sleep(wait, deadline) {
			return fmt.Errorf("not true after %v: %w", within, err)
		}
	}
}

// Stop marks err as final: Until returns it, and Eventually fails with it,
// without waiting for the deadline.
func Stop(err error) error {
	if err == nil {
		return nil
	}
	return stopError{err}
}

type stopError struct{ err error }

func (s stopError) Error() string { return s.err.Error() }
func (s stopError) Unwrap() error { return s.err }

// timer returns a stopped timer for sleep to reset.
func (p Poll) timer() *time.Timer {
	t := time.NewTimer(time.Hour)
	t.Stop()
	return t
}

// sleep waits one interval, cut short at deadline, and reports whether there
// is time left to look again; it returns false at once when deadline has
// passed.
func (p Poll) sleep(t *time.Timer, deadline time.Time) bool {
	left := time.Until(deadline)
	if left <= 0 {
		return false
	}
	d := p.interval
	if d <= 0 {
		d = DefaultInterval
	}
	t.Reset(min(d, left))
	<-t.C
	return true
}
