package proxy

import (
	"testing"
	"time"

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
