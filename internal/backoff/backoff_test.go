package backoff

import (
	"context"
	"testing"
	"time"
)

func TestPolicy_DelayDoublesUpToMax(t *testing.T) {
	p := Policy{First: 100 * time.Millisecond, Max: 5 * time.Second}
	for _, tc := range []struct {
		n    int
		want time.Duration
	}{
		{0, 100 * time.Millisecond},
		{1, 200 * time.Millisecond},
		{4, 1600 * time.Millisecond},
		{5, 3200 * time.Millisecond},
		{6, 5 * time.Second},
		{1000, 5 * time.Second},
		{-1, 100 * time.Millisecond},
	} {
		if got := p.Delay(tc.n); got != tc.want {
			t.Errorf("Delay(%d) = %v, want %v", tc.n, got, tc.want)
		}
	}
}

func TestRetry_AdvanceAndReset(t *testing.T) {
	r := New(Policy{First: time.Second, Max: 4 * time.Second})
	var got []time.Duration
	for range 5 {
		got = append(got, r.Delay())
		r.Advance()
	}
	want := []time.Duration{time.Second, 2 * time.Second, 4 * time.Second, 4 * time.Second, 4 * time.Second}
	for i := range want {
		if got[i] != want[i] {
			t.Fatalf("delays %v, want %v", got, want)
		}
	}
	if r.n != 2 {
		t.Errorf("n = %d after reaching Max, want it to stop counting at 2", r.n)
	}
	r.Reset()
	if d := r.Delay(); d != time.Second {
		t.Errorf("after Reset: %v, want %v", d, time.Second)
	}
}

func TestRetry_JitterStaysWithinBounds(t *testing.T) {
	r := New(Policy{First: time.Second, Max: time.Second, Jitter: 0.2})
	lo, hi := 800*time.Millisecond, 1200*time.Millisecond
	seen := map[bool]bool{}
	for range 1000 {
		d := r.jittered(time.Second)
		if d < lo || d > hi {
			t.Fatalf("jittered %v outside [%v, %v]", d, lo, hi)
		}
		seen[d < time.Second] = true
	}
	if !seen[true] || !seen[false] {
		t.Errorf("1000 jittered waits all on one side of the delay")
	}
}

func TestRetry_WaitCutResetsAndCtxStops(t *testing.T) {
	r := New(Policy{First: time.Hour, Max: time.Hour})
	r.n = 3
	cut := make(chan struct{})
	close(cut)
	if !r.Wait(context.Background(), cut) {
		t.Fatal("Wait returned false on a cut")
	}
	if r.n != 0 {
		t.Errorf("a cut left n = %d, want a reset", r.n)
	}
	ctx, cancel := context.WithCancel(context.Background())
	cancel()
	if r.Wait(ctx, nil) {
		t.Error("Wait returned true with its context ended")
	}
}

func TestRetry_WaitAdvancesAfterSleeping(t *testing.T) {
	r := New(Policy{First: time.Millisecond, Max: time.Second})
	if !r.Wait(context.Background(), nil) {
		t.Fatal("Wait returned false")
	}
	if d := r.Delay(); d != 2*time.Millisecond {
		t.Errorf("after one wait the next delay is %v, want 2ms", d)
	}
}
