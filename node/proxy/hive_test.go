package proxy

import (
	"context"
	"fmt"
	"testing"
	"time"

	"github.com/rbee/rbee/internal/testutil"
	"github.com/rbee/rbee/wsapi"
)

func TestLeaseTable_AdmitsNoMoreThanSlots(t *testing.T) {
	t0 := time.Date(2026, 1, 1, 0, 0, 0, 0, time.UTC)
	lt := newLeaseTable()
	lease := func(id, worker string) wsapi.LeaseInfo {
		return wsapi.LeaseInfo{LeaseID: id, Worker: worker, Model: "m", Entry: "e"}
	}
	if lt.start(lease("l0", "g/1")) {
		t.Fatal("a lease for a worker no report has named was admitted")
	}
	lt.report([]wsapi.ProcessStats{{Group: "g", Instance: "1", Slots: 2}, {Group: "g", Instance: "2"}}, t0)
	for _, tc := range []struct {
		name  string
		lease wsapi.LeaseInfo
		want  bool
	}{
		{"first slot", lease("l1", "g/1"), true},
		{"same lease twice", lease("l1", "g/1"), false},
		{"second slot", lease("l2", "g/1"), true},
		{"beyond the slots (a previous queen's grant)", lease("l3", "g/1"), false},
		{"no slots reported counts as one", lease("l4", "g/2"), true},
		{"and only one", lease("l5", "g/2"), false},
		{"unknown worker", lease("l6", "g/9"), false},
	} {
		if got := lt.start(tc.lease); got != tc.want {
			t.Errorf("%s: start = %v, want %v", tc.name, got, tc.want)
		}
	}
	listed := lt.report([]wsapi.ProcessStats{{Group: "g", Instance: "1", Slots: 2}, {Group: "g", Instance: "2"}}, t0)
	if len(listed) != 3 {
		t.Fatalf("report lists %d leases, want 3: %+v", len(listed), listed)
	}
	lt.end("l1")
	lt.end("l1") // twice is harmless
	if !lt.start(lease("l7", "g/1")) {
		t.Fatal("a slot freed by end was not admitted again")
	}
	if got := len(lt.report(nil, t0)); got != 3 {
		t.Fatalf("report lists %d leases, want 3", got)
	}
}

// TestLeaseTable_GoneWorkerForgetsFailing: a worker its hive restarts in
// place after a crash is absent from the reports while it loads; once back
// it is a new engine, not one that failed a request a moment ago.
func TestLeaseTable_GoneWorkerForgetsFailing(t *testing.T) {
	t0 := time.Date(2026, 1, 1, 0, 0, 0, 0, time.UTC)
	lt := newLeaseTable()
	lt.markFailing("g/1", t0)
	ws := []wsapi.ProcessStats{{Group: "g", Instance: "1"}}
	lt.report(ws, t0)
	if ws[0].Health != "failing" {
		t.Fatalf("health %q right after the failure, want failing", ws[0].Health)
	}
	lt.report(nil, t0.Add(time.Second)) // restarting: not listed
	ws = []wsapi.ProcessStats{{Group: "g", Instance: "1"}}
	lt.report(ws, t0.Add(2*time.Second))
	if ws[0].Health != "" {
		t.Errorf("health %q of the worker back after a restart, want none", ws[0].Health)
	}
}

func TestLeaseTable_MarksUnreachableWorkerFailingForAWhile(t *testing.T) {
	t0 := time.Date(2026, 1, 1, 0, 0, 0, 0, time.UTC)
	lt := newLeaseTable()
	lt.markFailing("g/1", t0)
	for _, tc := range []struct {
		at   time.Duration
		want string
	}{{0, "failing"}, {failingFor - time.Millisecond, "failing"}, {failingFor, ""}, {2 * failingFor, ""}} {
		ws := []wsapi.ProcessStats{{Group: "g", Instance: "1"}, {Group: "g", Instance: "2"}}
		lt.report(ws, t0.Add(tc.at))
		if ws[0].Health != tc.want || ws[1].Health != "" {
			t.Errorf("after %v: health %q and %q, want %q and none", tc.at, ws[0].Health, ws[1].Health, tc.want)
		}
	}
}

// waitersOf is how many requests wait for worker's slots.
func (a *leaseTable) waitersOf(worker string) int {
	a.mu.Lock()
	defer a.mu.Unlock()
	return len(a.waiting[worker])
}

// holds reports whether id is being served.
func (a *leaseTable) holds(id string) bool {
	a.mu.Lock()
	defer a.mu.Unlock()
	_, ok := a.leases[id]
	return ok
}

// check verifies, under a.mu, what the table must keep true between
// changes: busy counts the leases, a lease waits or runs but not both, the
// queues and their index agree, and no request waits while its worker has a
// slot free for it.
func (a *leaseTable) check() error {
	count := map[string]int{}
	for id, l := range a.leases {
		count[l.Worker]++
		if _, w := a.queued[id]; w {
			return fmt.Errorf("lease %s both runs and waits", id)
		}
	}
	for w, n := range a.busy {
		if n <= 0 {
			return fmt.Errorf("busy[%s] = %d kept", w, n)
		}
	}
	for w, n := range count {
		if a.busy[w] != n {
			return fmt.Errorf("busy[%s] = %d with %d leases", w, a.busy[w], n)
		}
	}
	seen := 0
	for worker, q := range a.waiting {
		if len(q) == 0 {
			return fmt.Errorf("empty queue kept for %s", worker)
		}
		slots, known := a.slots[worker]
		if !known || a.draining[worker] {
			return fmt.Errorf("%d wait for %s, unknown (%v) or draining (%v)", len(q), worker, !known, a.draining[worker])
		}
		if a.busy[worker] < slots {
			return fmt.Errorf("%d wait for %s with %d of %d slots busy", len(q), worker, a.busy[worker], slots)
		}
		for _, w := range q {
			seen++
			if w.state != waitQueued || w.lease.Worker != worker || a.queued[w.lease.LeaseID] != w {
				return fmt.Errorf("waiter %s for %s: state %d, in index %v", w.lease.LeaseID, worker, w.state, a.queued[w.lease.LeaseID] == w)
			}
			if _, ok := a.leases[w.lease.LeaseID]; ok {
				return fmt.Errorf("lease %s both waits and runs", w.lease.LeaseID)
			}
		}
	}
	if seen != len(a.queued) {
		return fmt.Errorf("%d queued, %d indexed", seen, len(a.queued))
	}
	return nil
}

func testLease(id, worker string) wsapi.LeaseInfo {
	return wsapi.LeaseInfo{LeaseID: id, Worker: worker, Model: "m", Entry: "e"}
}

// waitFor starts a startSoon for lease id in the background and returns its
// answer's channel once it is queued, so that a test knows the order of
// arrival.
func waitFor(t *testing.T, lt *leaseTable, ctx context.Context, id, worker string, grace time.Duration) <-chan bool {
	t.Helper()
	got := make(chan bool, 1)
	go func() { got <- lt.startSoon(ctx, testLease(id, worker), grace) }()
	testutil.Every(time.Millisecond).Eventually(t, 5*time.Second, id+" queued", func() error {
		lt.mu.Lock()
		defer lt.mu.Unlock()
		if lt.queued[id] == nil {
			return fmt.Errorf("%d waiting for %s, %s not among them", len(lt.waiting[worker]), worker, id)
		}
		return nil
	})
	return got
}

// answer is what a startSoon returned, failing the test if it takes longer
// than a prompt answer may.
func answer(t *testing.T, got <-chan bool, what string) bool {
	t.Helper()
	select {
	case ok := <-got:
		return ok
	case <-time.After(5 * time.Second):
		t.Fatalf("%s: startSoon did not return", what)
		return false
	}
}

// pending fails the test if got already has an answer.
func pending(t *testing.T, got <-chan bool, what string) {
	t.Helper()
	select {
	case ok := <-got:
		t.Fatalf("%s: startSoon returned %v, want it still waiting", what, ok)
	default:
	}
}

func workerG1(slots int) []wsapi.ProcessStats {
	return []wsapi.ProcessStats{{Group: "g", Instance: "1", Slots: slots}}
}

// TestLeaseTable_WaitersGetSlotsInArrivalOrder: standby leases queued for a
// full worker take its slots in the order they came as leases end.
func TestLeaseTable_WaitersGetSlotsInArrivalOrder(t *testing.T) {
	lt := newLeaseTable()
	lt.report(workerG1(1), time.Now())
	if !lt.start(testLease("l0", "g/1")) {
		t.Fatal("first lease refused")
	}
	ctx := t.Context()
	var got []<-chan bool
	for _, id := range []string{"w1", "w2", "w3"} {
		got = append(got, waitFor(t, lt, ctx, id, "g/1", time.Minute))
	}
	prev := "l0"
	for i, id := range []string{"w1", "w2", "w3"} {
		for _, later := range got[i:] {
			pending(t, later, "before "+prev+" ended")
		}
		lt.end(prev)
		if !answer(t, got[i], id) {
			t.Fatalf("%s refused when %s ended", id, prev)
		}
		if !lt.holds(id) || lt.holds(prev) {
			t.Fatalf("after %s ended: %s held %v, %s held %v", prev, id, lt.holds(id), prev, lt.holds(prev))
		}
		prev = id
	}
	lt.end(prev)
	if n, _ := (&Proxy{table: lt}).WorkerLeases("g/1"); n != 0 {
		t.Fatalf("%d leases left", n)
	}
}

// TestLeaseTable_NewcomerDoesNotOvertakeWaiters: a slot that frees while
// others wait is theirs, whether the newcomer asks to start at once or to
// wait.
func TestLeaseTable_NewcomerDoesNotOvertakeWaiters(t *testing.T) {
	lt := newLeaseTable()
	lt.report(workerG1(1), time.Now())
	lt.start(testLease("l0", "g/1"))
	w1 := waitFor(t, lt, t.Context(), "w1", "g/1", time.Minute)
	if lt.start(testLease("n0", "g/1")) {
		t.Fatal("start took a slot others wait for")
	}
	if lt.startSoon(t.Context(), testLease("n1", "g/1"), 0) {
		t.Fatal("startSoon without grace took a slot others wait for")
	}
	n2 := waitFor(t, lt, t.Context(), "n2", "g/1", time.Minute)
	lt.end("l0")
	if !answer(t, w1, "w1") {
		t.Fatal("w1 refused")
	}
	if lt.start(testLease("n3", "g/1")) {
		t.Fatal("start took the slot handed to w1")
	}
	pending(t, n2, "n2 while w1 runs")
	lt.end("w1")
	if !answer(t, n2, "n2") {
		t.Fatal("n2 refused")
	}
	lt.end("n2")
}

// TestLeaseTable_WaiterGivesUp: a waiter that runs out of grace or whose
// client goes away is refused, holds nothing, and leaves the slot to the
// next in line.
func TestLeaseTable_WaiterGivesUp(t *testing.T) {
	for _, tc := range []struct {
		name   string
		grace  time.Duration
		cancel bool
	}{
		{"grace expires", 300 * time.Millisecond, false},
		{"context cancelled", time.Minute, true},
	} {
		t.Run(tc.name, func(t *testing.T) {
			lt := newLeaseTable()
			lt.report(workerG1(1), time.Now())
			lt.start(testLease("l0", "g/1"))
			ctx, cancel := context.WithCancel(t.Context())
			defer cancel()
			w1 := waitFor(t, lt, ctx, "w1", "g/1", tc.grace)
			w2 := waitFor(t, lt, t.Context(), "w2", "g/1", time.Minute)
			if tc.cancel {
				cancel()
			}
			if answer(t, w1, "w1") {
				t.Fatal("w1 started on a full worker")
			}
			if lt.holds("w1") || lt.waitersOf("g/1") != 1 {
				t.Fatalf("w1 refused but holds a lease (%v), or %d wait, want 1", lt.holds("w1"), lt.waitersOf("g/1"))
			}
			lt.end("l0")
			if !answer(t, w2, "w2") {
				t.Fatal("the slot did not go to w2 after w1 gave up")
			}
			lt.end("w2")
		})
	}
}

// TestLeaseTable_CancelledWaiterGivesTheSlotOn: a waiter handed a slot as
// its client goes away gives the slot back rather than holding it for
// nobody, and the next waiter gets it.
func TestLeaseTable_CancelledWaiterGivesTheSlotOn(t *testing.T) {
	lt := newLeaseTable()
	lt.report(workerG1(1), time.Now())
	lt.start(testLease("l0", "g/1"))
	ctx, cancel := context.WithCancel(t.Context())
	defer cancel()
	w1 := waitFor(t, lt, ctx, "w1", "g/1", time.Minute)
	w2 := waitFor(t, lt, t.Context(), "w2", "g/1", time.Minute)
	// Both happen before w1 can look: it wakes handed a slot with its
	// context done, whichever of the two it sees first.
	lt.mu.Lock()
	cancel()
	lt.endLocked("l0")
	if _, handed := lt.leases["w1"]; !handed || lt.queued["w1"] != nil {
		t.Error("the freed slot did not go to w1 first")
	}
	lt.mu.Unlock()
	if answer(t, w1, "w1") {
		t.Fatal("w1 kept a slot after its client went away")
	}
	if !answer(t, w2, "w2") {
		t.Fatal("w2 did not get the slot w1 gave back")
	}
	if lt.holds("w1") || !lt.holds("w2") {
		t.Fatalf("w1 holds %v, w2 holds %v", lt.holds("w1"), lt.holds("w2"))
	}
	lt.end("w2")
}

// TestLeaseTable_WaitersRefusedWhenTheirWorkerGoes: a worker gone from the
// report or draining will give no slot, so its waiters hear so at once, not
// at the end of their grace.
func TestLeaseTable_WaitersRefusedWhenTheirWorkerGoes(t *testing.T) {
	for _, tc := range []struct {
		name string
		gone func(lt *leaseTable)
	}{
		{"vanished from the report", func(lt *leaseTable) { lt.report(nil, time.Now()) }},
		{"draining", func(lt *leaseTable) { (&Proxy{table: lt}).Drain("g/1") }},
	} {
		t.Run(tc.name, func(t *testing.T) {
			lt := newLeaseTable()
			lt.report(workerG1(1), time.Now())
			lt.start(testLease("l0", "g/1"))
			w1 := waitFor(t, lt, t.Context(), "w1", "g/1", time.Hour)
			w2 := waitFor(t, lt, t.Context(), "w2", "g/1", time.Hour)
			tc.gone(lt)
			for i, w := range []<-chan bool{w1, w2} {
				if answer(t, w, "a waiter") {
					t.Fatalf("waiter %d started", i+1)
				}
			}
			if lt.holds("w1") || lt.holds("w2") || lt.waitersOf("g/1") != 0 {
				t.Fatalf("refused waiters hold leases or still wait")
			}
			lt.end("l0")
			if lt.holds("w1") || lt.holds("w2") {
				t.Fatal("a refused waiter got the freed slot")
			}
		})
	}
}

// TestLeaseTable_MoreSlotsStartWaiters: a report raising a worker's slots
// starts its waiters without waiting for a lease to end.
func TestLeaseTable_MoreSlotsStartWaiters(t *testing.T) {
	lt := newLeaseTable()
	lt.report(workerG1(1), time.Now())
	lt.start(testLease("l0", "g/1"))
	var got []<-chan bool
	for _, id := range []string{"w1", "w2", "w3"} {
		got = append(got, waitFor(t, lt, t.Context(), id, "g/1", time.Minute))
	}
	listed := lt.report(workerG1(3), time.Now())
	if len(listed) != 3 {
		t.Errorf("report lists %d leases, want the 3 running", len(listed))
	}
	for i, id := range []string{"w1", "w2"} {
		if !answer(t, got[i], id) {
			t.Fatalf("%s refused when the worker got more slots", id)
		}
	}
	pending(t, got[2], "w3 beyond the slots")
	if n, _ := (&Proxy{table: lt}).WorkerLeases("g/1"); n != 3 {
		t.Fatalf("WorkerLeases = %d, want 3", n)
	}
	lt.end("w1")
	if !answer(t, got[2], "w3") {
		t.Fatal("w3 refused")
	}
	for _, id := range []string{"l0", "w2", "w3"} {
		lt.end(id)
	}
}

// start is startQueued without waiting: a lease for a full worker is refused.
func (a *leaseTable) start(l wsapi.LeaseInfo) bool {
	ok, _ := a.startQueued(context.Background(), l, 0)
	return ok
}

// startSoon is startQueued, reporting only whether l started.
func (a *leaseTable) startSoon(ctx context.Context, l wsapi.LeaseInfo, grace time.Duration) bool {
	ok, _ := a.startQueued(ctx, l, grace)
	return ok
}
