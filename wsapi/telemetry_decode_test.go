package wsapi

import (
	"fmt"
	"reflect"
	"strconv"
	"testing"
	"time"
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
	f.Add([]byte(`{"type":"hive_telemetry","hive_id":"h","timestamp":"2025-10-30T20:15:30Z","workers":[{"pid":1,"group":"llm","instance":"1","model":"m","aliases":["M-Q4_K_M.gguf","m:latest"]}]}`))
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
	first, again := decodeRepeatedly(t, benchTelemetry(8))
	if !reflect.DeepEqual(first, again) {
		t.Errorf("second decode differs:\n%#v\n%#v", first, again)
	}
	if a, b := first.(*HiveTelemetry), again.(*HiveTelemetry); &a.Workers[0] == &b.Workers[0] {
		t.Error("two reports share their workers: the registry keeps the first while states are set on the second")
	}
}

// TestTelemetryDecoder_ReadsEveryWorkerField: a field added to ProcessStats
// that the fast decoder does not know would be skipped without a word (it
// skips unknown fields, as Decode does): every field, set, must come back.
func TestTelemetryDecoder_ReadsEveryWorkerField(t *testing.T) {
	var w ProcessStats
	v := reflect.ValueOf(&w).Elem()
	for i := range v.NumField() {
		f := v.Field(i)
		switch f.Kind() {
		case reflect.String:
			f.SetString("s" + v.Type().Field(i).Name)
		case reflect.Uint32, reflect.Uint64:
			f.SetUint(uint64(i + 1))
		case reflect.Int:
			f.SetInt(int64(i + 1))
		case reflect.Float64:
			f.SetFloat(float64(i) + 0.5)
		case reflect.Bool:
			f.SetBool(true)
		case reflect.Pointer:
			m := "model"
			f.Set(reflect.ValueOf(&m))
		case reflect.Slice:
			f.Set(reflect.ValueOf([]string{"a", v.Type().Field(i).Name}))
		default:
			t.Fatalf("field %s: kind %s: teach this test to fill it", v.Type().Field(i).Name, f.Kind())
		}
	}
	in := &HiveTelemetry{Type: TypeHiveTelemetry, HiveID: "h", Timestamp: time.Date(2026, 12, 6, 0, 0, 0, 0, time.UTC), Workers: []ProcessStats{w}}
	b, err := Encode(in)
	if err != nil {
		t.Fatal(err)
	}
	var d telemetryDecoder
	got, err := d.Decode(b)
	if err != nil {
		t.Fatal(err)
	}
	tel, ok := got.(*HiveTelemetry)
	if !ok || !reflect.DeepEqual(tel.Workers, in.Workers) {
		t.Fatalf("decoded\n%#v\nwant worker\n%#v", got, w)
	}
}

// An Ollama hive lists every installed model in every report, with slots
// and whether it is simulated: none of that allocates when it did not
// change.
func TestTelemetryDecoderReusesModelLists(t *testing.T) {
	ws := make([]ProcessStats, 8)
	for i := range ws {
		m := "m0:latest"
		ws[i] = ProcessStats{PID: uint32(i + 1), Group: "ext", Instance: strconv.Itoa(11434 + i), Model: &m, Slots: 4, Simulated: true}
		for j := range 20 {
			ws[i].Models = append(ws[i].Models, fmt.Sprintf("m%d:latest", j))
		}
		ws[i].Aliases = []string{"a", "b"}
	}
	data, err := Encode(&HiveTelemetry{Type: TypeHiveTelemetry, HiveID: "h", Timestamp: time.Unix(1, 0).UTC(), Workers: ws})
	if err != nil {
		t.Fatal(err)
	}
	_, got := decodeRepeatedly(t, data)
	if want, _ := Decode(data); !reflect.DeepEqual(got, want) {
		t.Errorf("decoded\n%#v\nDecode:\n%#v", got, want)
	}
}

// decodeRepeatedly decodes data with one decoder, first once, then over and
// over, checking that a report like the last allocates at most 3 times, and
// returns the first and the last result.
func decodeRepeatedly(t *testing.T, data []byte) (first, last any) {
	t.Helper()
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
	last, err = d.Decode(data)
	if err != nil {
		t.Fatal(err)
	}
	return first, last
}
