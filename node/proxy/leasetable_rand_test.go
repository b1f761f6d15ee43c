package proxy

import (
	"context"
	"fmt"
	"math/rand/v2"
	"os"
	"strconv"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/rbee/rbee/wsapi"
	"go.uber.org/goleak"
)

// TestLeaseTable_Randomized drives the table from many goroutines at once
// (starts, waits with and without grace or a live client, ends, reports
// changing slots and dropping workers, drains) and checks its invariants
// under its lock after every change. The seed is logged; RBEE_SEED replays
// the same choices (not the same interleaving).
func TestLeaseTable_Randomized(t *testing.T) {
	defer goleak.VerifyNone(t, goleak.IgnoreCurrent())
	seed := uint64(time.Now().UnixNano())
	if s := os.Getenv("RBEE_SEED"); s != "" {
		v, err := strconv.ParseUint(s, 10, 64)
		if err != nil {
			t.Fatalf("RBEE_SEED=%q: %v", s, err)
		}
		seed = v
	}
	t.Logf("seed %d (set RBEE_SEED to replay)", seed)

	const (
		goroutines = 16
		ops        = 2000
	)
	workers := []string{"g/1", "g/2", "g/3"}
	lt := newLeaseTable()

	// Written under lt.mu only (the hook runs there).
	var broken []string
	lt.changed = func(started string) {
		if len(broken) >= 10 {
			return
		}
		if started == "" {
			if err := lt.check(); err != nil {
				broken = append(broken, err.Error())
			}
			return
		}
		// Mid-change (a hand-off may start several): only what holds
		// at every step.
		n := 0
		for _, l := range lt.leases {
			if l.Worker == started {
				n++
			}
		}
		if lt.busy[started] != n || lt.busy[started] > lt.slots[started] {
			broken = append(broken, fmt.Sprintf("a lease started on %s: %d leases, %d of %d slots busy", started, n, lt.busy[started], lt.slots[started]))
		}
	}
	fail := func(format string, args ...any) {
		lt.mu.Lock()
		defer lt.mu.Unlock()
		if len(broken) < 10 {
			broken = append(broken, fmt.Sprintf(format, args...))
		}
	}

	report := func(r *rand.Rand) {
		var ws []wsapi.ProcessStats
		for i := range workers {
			if r.IntN(8) == 0 {
				continue // gone for this tick
			}
			ws = append(ws, wsapi.ProcessStats{Group: "g", Instance: strconv.Itoa(i + 1), Slots: 1 + r.IntN(4)})
		}
		lt.report(ws, time.Now())
	}
	report(rand.New(rand.NewPCG(seed, 0)))

	var next atomic.Int64
	var started, refused atomic.Int64
	var wg sync.WaitGroup
	for g := range goroutines {
		wg.Go(func() {
			r := rand.New(rand.NewPCG(seed, uint64(g)+1))
			for {
				op := next.Add(1)
				if op > ops {
					return
				}
				switch p := r.IntN(100); {
				case p < 8:
					report(r)
					continue
				case p < 10:
					lt.drain(workers[r.IntN(len(workers))])
					continue
				}
				l := testLease("l"+strconv.FormatInt(op, 10), workers[r.IntN(len(workers))])
				var ok bool
				switch p := r.IntN(100); {
				case p < 20:
					ok = lt.start(l)
				case p < 30:
					ctx, cancel := context.WithCancel(context.Background())
					cancel()
					ok = lt.startSoon(ctx, l, time.Duration(r.IntN(20))*time.Millisecond)
				case p < 45:
					// Its client goes away while it may be waiting.
					ctx, cancel := context.WithTimeout(context.Background(), time.Duration(r.IntN(10000))*time.Microsecond)
					ok = lt.startSoon(ctx, l, time.Duration(r.IntN(20))*time.Millisecond)
					cancel()
				default:
					ok = lt.startSoon(context.Background(), l, time.Duration(r.IntN(21))*time.Millisecond)
				}
				if held := lt.holds(l.LeaseID); held != ok {
					fail("startSoon/start of %s returned %v, holds a lease %v", l.LeaseID, ok, held)
				}
				if !ok {
					refused.Add(1)
					continue
				}
				started.Add(1)
				time.Sleep(time.Duration(r.IntN(3000)) * time.Microsecond) // serving: lets others queue
				lt.end(l.LeaseID)
				if r.IntN(10) == 0 {
					lt.end(l.LeaseID) // twice is harmless
				}
			}
		})
	}

	finished := make(chan struct{})
	go func() { wg.Wait(); close(finished) }()
	select {
	case <-finished:
	case <-time.After(60 * time.Second):
		t.Fatalf("seed %d: the goroutines did not finish (a startSoon never returned?)", seed)
	}

	lt.mu.Lock()
	defer lt.mu.Unlock()
	for _, b := range broken {
		t.Errorf("seed %d: %s", seed, b)
	}
	if len(lt.leases) != 0 || len(lt.busy) != 0 || len(lt.waiting) != 0 || len(lt.queued) != 0 {
		t.Errorf("seed %d: left %d leases, %d busy workers, %d queues, %d queued", seed, len(lt.leases), len(lt.busy), len(lt.waiting), len(lt.queued))
	}
	t.Logf("%d leases started, %d refused", started.Load(), refused.Load())
	if started.Load() == 0 || refused.Load() == 0 {
		t.Errorf("seed %d: %d started and %d refused: the run did not exercise both", seed, started.Load(), refused.Load())
	}
}
