// Package backoff is rbee's one capped exponential backoff. It spaces out the
// redials of a node's session to the queen and of the feed relay, the gossip
// join loop, the listener's retries after an accept error, the probes of a
// worker that does not answer, and the scheduler's wait before a model whose
// starts failed is started again.
//
// Policy is pure arithmetic (the scheduler, which has no clock, uses only
// Delay); Retry is the state of one retry loop, and Wait the only place that
// sleeps.
package backoff

import (
	"context"
	"math/rand/v2"
	"time"
)

// Policy is a capped exponential backoff: First, doubling with each retry, at
// most Max.
type Policy struct {
	First, Max time.Duration
	// Jitter spreads each wait Retry.Wait takes by up to ±Jitter of it
	// (0.2: ±20%), so that many nodes retrying the same thing do not all
	// hit it in the same millisecond. Delay itself is never jittered.
	Jitter float64
}

// Delay is the wait before retry n (0: the first): First·2ⁿ, at most Max.
func (p Policy) Delay(n int) time.Duration {
	d := p.First
	for i := 0; i < n && d < p.Max; i++ {
		d *= 2
	}
	return min(d, p.Max)
}

// Retry is one retry loop under a Policy. The zero Retry of a Policy waits
// First before its first retry.
type Retry struct {
	Policy
	n int // retries waited for since the last Reset
}

// New returns a retry loop under p.
func New(p Policy) *Retry { return &Retry{Policy: p} }

// Delay is the wait before the next retry, before jitter.
func (r *Retry) Delay() time.Duration { return r.Policy.Delay(r.n) }

// Advance counts a retry: the next wait is twice this one, at most Max.
func (r *Retry) Advance() {
	if r.Delay() < r.Max {
		r.n++
	}
}

// Reset starts over: the next wait is First again (after a success, or when
// there is something new to retry against).
func (r *Retry) Reset() { r.n = 0 }

// Wait sleeps the next delay, jittered, then counts the retry. A receive on
// cut (nil: none) ends the wait early and resets the backoff: something
// changed, so the next retry is worth making at once. It returns false when
// ctx ended.
func (r *Retry) Wait(ctx context.Context, cut <-chan struct{}) bool {
	t := time.NewTimer(r.jittered(r.Delay()))
	defer t.Stop()
	select {
	case <-ctx.Done():
		return false
	case <-cut:
		r.Reset()
	case <-t.C:
		r.Advance()
	}
	return true
}

func (r *Retry) jittered(d time.Duration) time.Duration {
	spread := time.Duration(float64(d) * r.Jitter)
	if spread <= 0 {
		return d
	}
	return d - spread + rand.N(2*spread+1)
}
