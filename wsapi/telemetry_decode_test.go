package wsapi

import (
	"reflect"
	"testing"
)

// FuzzTelemetryDecoder holds the fast decoder to Decode: for any bytes, on a
// fresh decoder and on one that just decoded another report (whose strings
// it reuses), it returns what Decode returns, or the same failure.
func FuzzTelemetryDecoder(f *testing.F) {
	seeds := [][]byte{readSeed(f, "hive_telemetry.json"), benchTelemetry(8)}
	for _, t := range []*HiveTelemetry{validTelemetry(3), lifecycleTelemetry()} {
		b, err := Encode(t)
		if err != nil {
			f.Fatal(err)
		}
		seeds = append(seeds, b)
	}
	for _, s := range seeds {
		f.Add(s)
	}
	f.Add([]byte(`{"type":"hive_telemetry","hive_id":"h","timestamp":"2025-10-30T20:15:30.5Z","workers":[{"pid":1,"group":"llm","instance":"1","model":null,"slots":2,"simulated":true,"x":[1,{"a":2}]}],"extra":{}}  `))
	f.Add([]byte(`{"type":"hive_telemetry","hive_id":"h","timestamp":"2025-10-30T20:15:30+02:00","workers":null}`))
	f.Add([]byte(`{"type":"hive_telemetry","hive_id":"h","timestamp":"2025-10-30T20:15:30Z","workers":[{"pid":-1}]}`))
	f.Add([]byte(`{"type":"hive_telemetry","hive_id":"h","hive_id":"i","workers":[]}`))
	f.Add([]byte(`{"type":"hive_telemetry","hive_\u0069d":"h","workers":[{"group":"a\u0062"}]} x`))
	warm := benchTelemetry(8)
	f.Fuzz(func(t *testing.T, data []byte) {
		want, wantErr := Decode(data)
		var fresh telemetryDecoder
		var used telemetryDecoder
		if _, err := used.Decode(warm); err != nil {
			t.Fatal(err)
		}
		for name, d := range map[string]*telemetryDecoder{"fresh": &fresh, "warm": &used} {
			got, err := d.Decode(data)
			if (err == nil) != (wantErr == nil) || err != nil && err.Error() != wantErr.Error() {
				t.Fatalf("%s: error %v, Decode's %v", name, err, wantErr)
			}
			if !reflect.DeepEqual(got, want) {
				t.Fatalf("%s: decoded\n%#v\nDecode:\n%#v", name, got, want)
			}
		}
	})
}

// TestTelemetryDecoderReuses shows the point of the decoder: a report like
// the last one allocates the message and its workers, not each string.
func TestTelemetryDecoderReuses(t *testing.T) {
	data := benchTelemetry(8)
	var d telemetryDecoder
	first, err := d.Decode(data)
	if err != nil {
		t.Fatal(err)
	}
	allocs := testing.AllocsPerRun(100, func() {
		if _, err := d.Decode(data); err != nil {
			t.Fatal(err)
		}
	})
	if allocs > 3 {
		t.Errorf("%.0f allocations per report, want at most 3", allocs)
	}
	again, err := d.Decode(data)
	if err != nil {
		t.Fatal(err)
	}
	if !reflect.DeepEqual(first, again) {
		t.Errorf("second decode differs:\n%#v\n%#v", first, again)
	}
	if a, b := first.(*HiveTelemetry), again.(*HiveTelemetry); &a.Workers[0] == &b.Workers[0] {
		t.Error("two reports share their workers: the registry keeps the first while states are set on the second")
	}
}
