package queen

import (
	"testing"
	"time"

	"github.com/rbee/rbee/wsapi"
)

func telemetry(hive string, workers ...wsapi.ProcessStats) *wsapi.HiveTelemetry {
	if workers == nil {
		workers = []wsapi.ProcessStats{}
	}
	t := &wsapi.HiveTelemetry{Type: wsapi.TypeHiveTelemetry, HiveID: hive, Workers: workers}
	setStates(t, nil) // as the queen does before it records a report
	return t
}

func TestRegistry_OnlineWhileReportedWithinTTL(t *testing.T) {
	t0 := time.Date(2026, 1, 1, 0, 0, 0, 0, time.UTC)
	r := NewRegistry(3*time.Second, time.Minute)
	r.Update(telemetry("h"), t0)
	tests := []struct {
		name       string
		at         time.Duration
		wantOnline bool
		wantListed bool
	}{
		{"just reported", 0, true, true},
		{"within ttl", 3 * time.Second, true, true},
		{"past ttl", 3*time.Second + time.Millisecond, false, true},
		{"forgotten", time.Minute + time.Millisecond, false, false},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			r := NewRegistry(3*time.Second, time.Minute)
			r.Update(telemetry("h"), t0)
			hives := r.Hives(t0.Add(tc.at))
			if listed := len(hives) == 1; listed != tc.wantListed {
				t.Fatalf("listed = %v, want %v", listed, tc.wantListed)
			}
			if tc.wantListed && hives[0].Online != tc.wantOnline {
				t.Fatalf("online = %v, want %v", hives[0].Online, tc.wantOnline)
			}
		})
	}
}

func TestRegistry_SummaryCountsOnlyOnlineHives(t *testing.T) {
	t0 := time.Date(2026, 1, 1, 0, 0, 0, 0, time.UTC)
	r := NewRegistry(3*time.Second, time.Minute)
	idle := wsapi.ProcessStats{Group: "llm", Instance: "8080", GPUUtilPct: 0}
	busy := wsapi.ProcessStats{Group: "llm", Instance: "8081", GPUUtilPct: 99}
	r.Update(telemetry("h1", idle, busy), t0)
	r.Update(telemetry("h2", busy), t0)
	r.Update(telemetry("h3"), t0)
	r.Update(telemetry("gone", idle), t0.Add(-10*time.Second))

	ev := r.Summary(t0.Add(time.Second), "q")
	want := wsapi.QueenEvent{WorkersOnline: 3, WorkersAvailable: 1, HivesOnline: 3, HivesAvailable: 1}
	if ev.WorkersOnline != want.WorkersOnline || ev.WorkersAvailable != want.WorkersAvailable ||
		ev.HivesOnline != want.HivesOnline || ev.HivesAvailable != want.HivesAvailable {
		t.Errorf("summary = %+v, want counts %+v", ev, want)
	}
	if got, w := len(ev.HiveIDs), 3; got != w || ev.HiveIDs[0] != "h1" {
		t.Errorf("hive_ids = %v", ev.HiveIDs)
	}
	if ev.WorkerIDs[0] != "h1/llm/8080" || ev.Type != wsapi.TypeQueen || ev.QueenID != "q" {
		t.Errorf("summary = %+v", ev)
	}
	r.Reset()
	if n := len(r.Hives(t0)); n != 0 {
		t.Errorf("%d hives after reset", n)
	}
}
