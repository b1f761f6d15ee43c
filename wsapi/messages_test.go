package wsapi

import (
	"bytes"
	"encoding/json"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"reflect"
	"slices"
	"strings"
	"testing"
	"time"
	"unicode/utf8"

	"github.com/coder/websocket"
)

// seedDir holds the JSON examples copied verbatim from the seed design note.
const seedDir = "../testdata/seeds"

func readSeed(t testing.TB, name string) []byte {
	t.Helper()
	b, err := os.ReadFile(filepath.Join(seedDir, name))
	if err != nil {
		t.Fatalf("read seed: %v", err)
	}
	return b
}

// generic decodes b into map[string]any (numbers as float64), the way a
// third-party dashboard written in JavaScript sees it.
func generic(t testing.TB, b []byte) map[string]any {
	t.Helper()
	var m map[string]any
	if err := json.Unmarshal(b, &m); err != nil {
		t.Fatalf("decode %s as generic JSON: %v", b, err)
	}
	return m
}

// jsonDiff lists every path where two generic JSON values differ: a missing or
// extra key, a type change (null vs string), or a different value.
func jsonDiff(path string, want, got any) []string {
	switch w := want.(type) {
	case map[string]any:
		g, ok := got.(map[string]any)
		if !ok {
			return []string{fmt.Sprintf("%s: want object, got %T (%v)", path, got, got)}
		}
		var diffs []string
		for k := range w {
			if _, ok := g[k]; !ok {
				diffs = append(diffs, fmt.Sprintf("%s.%s: missing", path, k))
				continue
			}
			diffs = append(diffs, jsonDiff(path+"."+k, w[k], g[k])...)
		}
		for k := range g {
			if _, ok := w[k]; !ok {
				diffs = append(diffs, fmt.Sprintf("%s.%s: unexpected key (value %v)", path, k, g[k]))
			}
		}
		slices.Sort(diffs)
		return diffs
	case []any:
		g, ok := got.([]any)
		if !ok {
			return []string{fmt.Sprintf("%s: want array, got %T (%v)", path, got, got)}
		}
		if len(w) != len(g) {
			return []string{fmt.Sprintf("%s: want %d elements, got %d", path, len(w), len(g))}
		}
		var diffs []string
		for i := range w {
			diffs = append(diffs, jsonDiff(fmt.Sprintf("%s[%d]", path, i), w[i], g[i])...)
		}
		return diffs
	default:
		if !reflect.DeepEqual(want, got) {
			return []string{fmt.Sprintf("%s: want %T %v, got %T %v", path, want, want, got, got)}
		}
		return nil
	}
}

// roundTrip decodes data with Decode, re-encodes the result with Encode and
// returns both the decoded message and the new bytes.
func roundTrip(t *testing.T, data []byte) (any, []byte) {
	t.Helper()
	msg, err := Decode(data)
	if err != nil {
		t.Fatalf("Decode: %v", err)
	}
	out, err := Encode(msg)
	if err != nil {
		t.Fatalf("Encode(%T): %v", msg, err)
	}
	return msg, out
}

// withModel returns the hive_telemetry seed with the first worker's model
// replaced by model (nil means JSON null).
func withModel(t *testing.T, model any) []byte {
	t.Helper()
	m := generic(t, readSeed(t, "hive_telemetry.json"))
	m["workers"].([]any)[0].(map[string]any)["model"] = model
	b, err := json.Marshal(m)
	if err != nil {
		t.Fatal(err)
	}
	return b
}

func TestMessages_SeedExamplesRoundTripFieldForField(t *testing.T) {
	tests := []struct {
		name     string
		data     func(t *testing.T) []byte
		wantType reflect.Type
	}{
		{"hive_telemetry seed", func(t *testing.T) []byte { return readSeed(t, "hive_telemetry.json") }, reflect.TypeFor[*HiveTelemetry]()},
		{"queen seed", func(t *testing.T) []byte { return readSeed(t, "queen.json") }, reflect.TypeFor[*QueenEvent]()},
		{"hive_telemetry with null model", func(t *testing.T) []byte { return withModel(t, nil) }, reflect.TypeFor[*HiveTelemetry]()},
		{"hive_telemetry with empty model", func(t *testing.T) []byte { return withModel(t, "") }, reflect.TypeFor[*HiveTelemetry]()},
		{"hive_telemetry with no workers", func(t *testing.T) []byte {
			return []byte(`{"type":"hive_telemetry","hive_id":"h","timestamp":"2025-10-30T20:15:30Z","workers":[]}`)
		}, reflect.TypeFor[*HiveTelemetry]()},
		{"queen with queen_id", func(t *testing.T) []byte {
			m := generic(t, readSeed(t, "queen.json"))
			m["queen_id"] = "node-a"
			b, _ := json.Marshal(m)
			return b
		}, reflect.TypeFor[*QueenEvent]()},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			in := tt.data(t)
			msg, out := roundTrip(t, in)
			if got := reflect.TypeOf(msg); got != tt.wantType {
				t.Fatalf("Decode returned %v, want %v", got, tt.wantType)
			}
			if d := jsonDiff("$", generic(t, in), generic(t, out)); len(d) > 0 {
				t.Errorf("re-encoded JSON differs from input:\n%s\nin:  %s\nout: %s", strings.Join(d, "\n"), in, out)
			}
		})
	}
}

func TestMessages_SeedTelemetryDecodesToExpectedValues(t *testing.T) {
	msg, err := Decode(readSeed(t, "hive_telemetry.json"))
	if err != nil {
		t.Fatal(err)
	}
	model := "llama-3.2-1b"
	want := &HiveTelemetry{
		Type:      TypeHiveTelemetry,
		HiveID:    "hive-gpu-1",
		Timestamp: time.Date(2025, 10, 30, 20, 15, 30, 0, time.UTC),
		Workers: []ProcessStats{{
			PID: 12345, Group: "llm", Instance: "8080",
			CPUPct: 0, RSSMB: 2048, IOReadMBs: 0, IOWriteMBs: 0, UptimeS: 300,
			GPUUtilPct: 85.5, VRAMMB: 4096, TotalVRAMMB: 24576, Model: &model,
		}},
	}
	got := msg.(*HiveTelemetry)
	if !got.Timestamp.Equal(want.Timestamp) {
		t.Errorf("timestamp = %v, want %v", got.Timestamp, want.Timestamp)
	}
	got.Timestamp = want.Timestamp
	if !reflect.DeepEqual(got, want) {
		t.Errorf("decoded\n%+v\nwant\n%+v", got, want)
	}
	if id := GlobalWorkerID(got.HiveID, &got.Workers[0]); id != "hive-gpu-1/llm/8080" {
		t.Errorf("WorkerID = %q", id)
	}
}

func TestMessages_ProcessStatsSeedRoundTrips(t *testing.T) {
	in := readSeed(t, "process_stats.json")
	var ps ProcessStats
	dec := json.NewDecoder(bytes.NewReader(in))
	dec.DisallowUnknownFields() // every seed field has a Go field
	if err := dec.Decode(&ps); err != nil {
		t.Fatalf("decode ProcessStats: %v", err)
	}
	out, err := json.Marshal(ps)
	if err != nil {
		t.Fatal(err)
	}
	if d := jsonDiff("$", generic(t, in), generic(t, out)); len(d) > 0 {
		t.Errorf("ProcessStats JSON differs:\n%s", strings.Join(d, "\n"))
	}
	// The seed worker is the one inside the hive_telemetry example.
	tel := generic(t, readSeed(t, "hive_telemetry.json"))
	if d := jsonDiff("$", tel["workers"].([]any)[0], generic(t, in)); len(d) > 0 {
		t.Errorf("process_stats.json is not the hive_telemetry worker:\n%s", strings.Join(d, "\n"))
	}
}

func TestMessages_NullModelStaysNullAndEmptyStaysString(t *testing.T) {
	for _, tt := range []struct {
		name  string
		model any
		want  any
	}{
		{"null", nil, nil},
		{"empty string", "", ""},
		{"name", "qwen2.5:7b", "qwen2.5:7b"},
	} {
		t.Run(tt.name, func(t *testing.T) {
			msg, out := roundTrip(t, withModel(t, tt.model))
			w := msg.(*HiveTelemetry).Workers[0]
			if (w.Model == nil) != (tt.model == nil) {
				t.Fatalf("decoded Model = %v, want nil=%v", w.Model, tt.model == nil)
			}
			worker := generic(t, out)["workers"].([]any)[0].(map[string]any)
			got, ok := worker["model"]
			if !ok {
				t.Fatalf("model key dropped: %s", out)
			}
			if !reflect.DeepEqual(got, tt.want) {
				t.Errorf("model = %#v, want %#v", got, tt.want)
			}
		})
	}
}

func TestMessages_HandshakeMessagesRoundTrip(t *testing.T) {
	tests := []any{
		&Challenge{Type: TypeChallenge, Nonce: "00ff", Queen: "queen-1", Version: "v0.1.0", Protocol: ProtocolVersion},
		&Hello{Type: TypeHello, Name: "hive-1", Version: "v0.1.0", Protocol: ProtocolVersion, Nonce: "abcd", Proof: "beef"},
		&Welcome{Type: TypeWelcome, Proof: "cafe", IntervalMS: 1000},
		&QueenEvent{Type: TypeQueen, WorkersOnline: 1, WorkerIDs: []string{"h/llm/1"}, HiveIDs: []string{"h"}, Timestamp: time.Date(2025, 1, 2, 3, 4, 5, 6, time.UTC), QueenID: "q"},
	}
	for _, msg := range tests {
		t.Run(reflect.TypeOf(msg).Elem().Name(), func(t *testing.T) {
			b, err := Encode(msg)
			if err != nil {
				t.Fatal(err)
			}
			got, err := Decode(b)
			if err != nil {
				t.Fatalf("Decode(%s): %v", b, err)
			}
			if !reflect.DeepEqual(got, msg) {
				t.Errorf("round trip\n got %+v\nwant %+v", got, msg)
			}
		})
	}
}

func TestMessages_EncodedTypeTagsAreSnakeCase(t *testing.T) {
	for _, tt := range []struct {
		msg  any
		want string
	}{
		{HiveTelemetry{Type: TypeHiveTelemetry}, "hive_telemetry"},
		{QueenEvent{Type: TypeQueen}, "queen"},
		{Challenge{Type: TypeChallenge}, "challenge"},
		{Hello{Type: TypeHello}, "hello"},
		{Welcome{Type: TypeWelcome}, "welcome"},
	} {
		b, err := Encode(tt.msg)
		if err != nil {
			t.Fatal(err)
		}
		if got := generic(t, b)["type"]; got != tt.want {
			t.Errorf("%T encodes type %v, want %q", tt.msg, got, tt.want)
		}
	}
}

func TestDecode_RejectsBadInput(t *testing.T) {
	tel := string(readSeed(t, "hive_telemetry.json"))
	tests := []struct {
		name    string
		in      string
		wantErr error
		// wantText is a substring the error must contain, so a reader of
		// the close reason learns what was wrong.
		wantText string
	}{
		{"missing type", `{"hive_id":"h","workers":[]}`, ErrMalformed, `missing "type"`},
		{"empty type", `{"type":""}`, ErrMalformed, `missing "type"`},
		{"null document", `null`, ErrMalformed, `missing "type"`},
		{"unknown type", `{"type":"model_load"}`, ErrUnknownType, `"model_load"`},
		{"type in wrong case", `{"type":"Hive_Telemetry"}`, ErrUnknownType, `Hive_Telemetry`},
		{"type not a string", `{"type":5}`, ErrMalformed, "type"},
		{"empty input", ``, ErrMalformed, "unexpected EOF"},
		{"truncated object", `{"type":"queen"`, ErrMalformed, "unexpected EOF"},
		{"array", `[{"type":"queen"}]`, ErrMalformed, "array"},
		{"bare string", `"queen"`, ErrMalformed, "string"},
		{"not JSON", `type=queen`, ErrMalformed, "invalid character"},
		{"trailing garbage", `{"type":"queen"} x`, ErrMalformed, "after top-level value"},
		{"two objects", `{"type":"queen"}{"type":"queen"}`, ErrMalformed, "after top-level value"},
		{"trailing comma", `{"type":"queen",}`, ErrMalformed, "invalid character"},
		{"pid is a string", strings.Replace(tel, `"pid": 12345`, `"pid": "x"`, 1), ErrMalformed, "pid"},
		{"pid is negative", strings.Replace(tel, `"pid": 12345`, `"pid": -1`, 1), ErrMalformed, "pid"},
		{"pid overflows uint32", strings.Replace(tel, `"pid": 12345`, `"pid": 4294967296`, 1), ErrMalformed, "pid"},
		{"pid is fractional", strings.Replace(tel, `"pid": 12345`, `"pid": 1.5`, 1), ErrMalformed, "pid"},
		{"rss is negative", strings.Replace(tel, `"rss_mb": 2048`, `"rss_mb": -2048`, 1), ErrMalformed, "rss_mb"},
		{"cpu is a string", strings.Replace(tel, `"cpu_pct": 0.0`, `"cpu_pct": "0"`, 1), ErrMalformed, "cpu_pct"},
		{"model is a number", strings.Replace(tel, `"model": "llama-3.2-1b"`, `"model": 7`, 1), ErrMalformed, "model"},
		{"workers is an object", `{"type":"hive_telemetry","hive_id":"h","workers":{}}`, ErrMalformed, "workers"},
		{"worker is a string", `{"type":"hive_telemetry","hive_id":"h","workers":["w"]}`, ErrMalformed, "workers"},
		{"hive_id is a number", `{"type":"hive_telemetry","hive_id":7}`, ErrMalformed, "hive_id"},
		{"timestamp not RFC 3339", `{"type":"hive_telemetry","hive_id":"h","timestamp":"yesterday"}`, ErrMalformed, "hive_telemetry"},
		{"worker_ids holds numbers", `{"type":"queen","worker_ids":[1,2]}`, ErrMalformed, "worker_ids"},
		{"workers_online is a string", `{"type":"queen","workers_online":"3"}`, ErrMalformed, "workers_online"},
		{"count in exponent form", `{"type":"queen","hives_online":2e0}`, ErrMalformed, "hives_online"},
		{"interval_ms is a string", `{"type":"welcome","interval_ms":"1000"}`, ErrMalformed, "interval_ms"},
		{"protocol is a float", `{"type":"hello","protocol":1.5}`, ErrMalformed, "protocol"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			msg, err := Decode([]byte(tt.in))
			if err == nil {
				t.Fatalf("Decode(%q) = %#v, want error", tt.in, msg)
			}
			if msg != nil {
				t.Errorf("Decode returned a message with the error: %#v", msg)
			}
			if !errors.Is(err, tt.wantErr) {
				t.Errorf("error %q is not %v", err, tt.wantErr)
			}
			if !strings.Contains(err.Error(), tt.wantText) {
				t.Errorf("error %q does not mention %q", err, tt.wantText)
			}
			if len(err.Error()) > 200 {
				t.Errorf("error is %d bytes, want short enough for a close reason: %q", len(err.Error()), err)
			}
		})
	}
}

func TestDecode_AcceptsWhatAPeerMaySend(t *testing.T) {
	tests := []struct {
		name string
		in   string
		want any
	}{
		{"unknown fields ignored", `{"type":"queen","workers_online":2,"from_the_future":{"x":[1]}}`, &QueenEvent{Type: TypeQueen, WorkersOnline: 2}},
		{"trailing whitespace", "{\"type\":\"welcome\",\"interval_ms\":250}\n\t ", &Welcome{Type: TypeWelcome, IntervalMS: 250}},
		{"null workers", `{"type":"hive_telemetry","hive_id":"h","workers":null}`, &HiveTelemetry{Type: TypeHiveTelemetry, HiveID: "h"}},
		{"max pid", `{"type":"hive_telemetry","hive_id":"h","workers":[{"pid":4294967295,"model":null}]}`,
			&HiveTelemetry{Type: TypeHiveTelemetry, HiveID: "h", Workers: []ProcessStats{{PID: 4294967295}}}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			got, err := Decode([]byte(tt.in))
			if err != nil {
				t.Fatalf("Decode(%q): %v", tt.in, err)
			}
			if !reflect.DeepEqual(got, tt.want) {
				t.Errorf("got %+v, want %+v", got, tt.want)
			}
		})
	}
}

func TestDecode_UnknownTypeIsRejectedWithShortReason(t *testing.T) {
	long := strings.Repeat("x", 10000)
	_, err := Decode([]byte(`{"type":"` + long + `"}`))
	if !errors.Is(err, ErrUnknownType) {
		t.Fatalf("err = %v, want ErrUnknownType", err)
	}
	if len(err.Error()) > 100 {
		t.Errorf("error carries %d bytes of the peer's type: %.120q", len(err.Error()), err)
	}
	if got := CloseCodeFor(err); got != CloseUnknownType {
		t.Errorf("CloseCodeFor = %v, want %v", got, CloseUnknownType)
	}
}

func TestDecode_ErrorsAreValidUTF8(t *testing.T) {
	// A peer's bytes end up in errors and from there in close reasons,
	// which must be UTF-8.
	for _, in := range []string{
		`{"type":"` + strings.Repeat("é", 30) + `"}`,
		`{"type":"` + strings.Repeat("🦙", 15) + `"}`,
		"{\"type\":\"\xff\xfe\"}",
		"{\"type\":\"queen\"}\xc3",
		"\xc3\xa9",
		`{"type":"hive_telemetry","hive_id":"h","workers":[{"pid":1,"group":"é"}],"x":` + strings.Repeat("é", 50),
	} {
		_, err := Decode([]byte(in))
		if err == nil {
			t.Fatalf("Decode(%q) succeeded", in)
		}
		if !utf8.ValidString(err.Error()) {
			t.Errorf("Decode(%q) error is not UTF-8: %q", in, err)
		}
		if r := CloseReason("bad message: " + err.Error()); !utf8.ValidString(r) || len(r) > 123 {
			t.Errorf("close reason %q: valid=%v len=%d", r, utf8.ValidString(r), len(r))
		}
	}
}

// validTelemetry is a telemetry message from hive "hive-gpu-1" with n workers
// that passes Validate.
func validTelemetry(n int) *HiveTelemetry {
	model := "llama-3.2-1b"
	t := &HiveTelemetry{Type: TypeHiveTelemetry, HiveID: "hive-gpu-1", Timestamp: time.Now().UTC()}
	for i := range n {
		t.Workers = append(t.Workers, ProcessStats{PID: uint32(1000 + i), Group: "llm", Instance: fmt.Sprint(8080 + i), Model: &model})
	}
	return t
}

func TestValidate_SeedTelemetryIsValidForItsOwnHive(t *testing.T) {
	msg, err := Decode(readSeed(t, "hive_telemetry.json"))
	if err != nil {
		t.Fatal(err)
	}
	if err := msg.(*HiveTelemetry).Validate("hive-gpu-1"); err != nil {
		t.Errorf("Validate: %v", err)
	}
}

func TestValidate_RejectsSpoofingAndBadLabels(t *testing.T) {
	str := func(s string) *string { return &s }
	tests := []struct {
		name     string
		session  string
		mutate   func(*HiveTelemetry)
		wantErr  bool
		wantText string
	}{
		{"own hive", "hive-gpu-1", func(*HiveTelemetry) {}, false, ""},
		{"hive_id of another hive", "hive-gpu-2", func(*HiveTelemetry) {}, true, "does not match session"},
		{"empty hive_id", "hive-gpu-1", func(t *HiveTelemetry) { t.HiveID = "" }, true, "does not match session"},
		{"hive_id differs in case", "hive-gpu-1", func(t *HiveTelemetry) { t.HiveID = "HIVE-GPU-1" }, true, "does not match"},
		{"no workers", "hive-gpu-1", func(t *HiveTelemetry) { t.Workers = nil }, false, ""},
		{"empty group", "hive-gpu-1", func(t *HiveTelemetry) { t.Workers[1].Group = "" }, true, "worker 1: invalid value: empty group"},
		{"empty instance", "hive-gpu-1", func(t *HiveTelemetry) { t.Workers[0].Instance = "" }, true, "empty instance"},
		{"slash in group", "hive-gpu-1", func(t *HiveTelemetry) { t.Workers[0].Group = "llm/evil" }, true, "group"},
		{"space in instance", "hive-gpu-1", func(t *HiveTelemetry) { t.Workers[0].Instance = "80 80" }, true, "instance"},
		{"newline in group", "hive-gpu-1", func(t *HiveTelemetry) { t.Workers[0].Group = "llm\nlevel=ERROR" }, true, "group"},
		{"non-ASCII group", "hive-gpu-1", func(t *HiveTelemetry) { t.Workers[0].Group = "llmé" }, true, "group"},
		{"html in instance", "hive-gpu-1", func(t *HiveTelemetry) { t.Workers[0].Instance = "<script>" }, true, "instance"},
		{"all allowed punctuation", "hive-gpu-1", func(t *HiveTelemetry) { t.Workers[0].Group = "a-b_c.d:e@f9Z" }, false, ""},
		{"group at limit", "hive-gpu-1", func(t *HiveTelemetry) { t.Workers[0].Group = strings.Repeat("g", maxFieldLen) }, false, ""},
		{"group over limit", "hive-gpu-1", func(t *HiveTelemetry) { t.Workers[0].Group = strings.Repeat("g", maxFieldLen+1) }, true, "longer than"},
		{"null model", "hive-gpu-1", func(t *HiveTelemetry) { t.Workers[0].Model = nil }, false, ""},
		{"empty model", "hive-gpu-1", func(t *HiveTelemetry) { t.Workers[0].Model = str("") }, false, ""},
		{"model with spaces and unicode", "hive-gpu-1", func(t *HiveTelemetry) { t.Workers[0].Model = str("Llama 3.2 1B Instruct (Q4_K_M) 🦙") }, false, ""},
		{"model with newline", "hive-gpu-1", func(t *HiveTelemetry) { t.Workers[0].Model = str("m\nINFO fake log line") }, true, "control characters"},
		{"model with escape", "hive-gpu-1", func(t *HiveTelemetry) { t.Workers[0].Model = str("m\x1b[31m") }, true, "control characters"},
		{"model with NUL", "hive-gpu-1", func(t *HiveTelemetry) { t.Workers[2].Model = str("m\x00") }, true, "worker 2"},
		{"model with DEL", "hive-gpu-1", func(t *HiveTelemetry) { t.Workers[0].Model = str("m\x7f") }, true, "control characters"},
		{"model not UTF-8", "hive-gpu-1", func(t *HiveTelemetry) { t.Workers[0].Model = str("m\xff") }, true, "not UTF-8"},
		{"model at limit", "hive-gpu-1", func(t *HiveTelemetry) { t.Workers[0].Model = str(strings.Repeat("m", maxModelLen)) }, false, ""},
		{"model over limit", "hive-gpu-1", func(t *HiveTelemetry) { t.Workers[0].Model = str(strings.Repeat("m", maxModelLen+1)) }, true, "longer than"},
		{"worker down with its reason", "hive-gpu-1", func(t *HiveTelemetry) {
			t.Workers[0].Health, t.Workers[0].HealthReason = "down", "GET http://127.0.0.1:9/health: connection refused"
		}, false, ""},
		{"health_reason with newline", "hive-gpu-1", func(t *HiveTelemetry) { t.Workers[1].HealthReason = "refused\nlevel=ERROR" }, true, "worker 1: invalid value: health_reason"},
		{"health_reason over limit", "hive-gpu-1", func(t *HiveTelemetry) { t.Workers[0].HealthReason = strings.Repeat("r", maxFieldLen+1) }, true, "health_reason longer than"},
		{"max workers", "hive-gpu-1", func(t *HiveTelemetry) { t.Workers = validTelemetry(MaxWorkers).Workers }, false, ""},
		{"too many workers", "hive-gpu-1", func(t *HiveTelemetry) { t.Workers = validTelemetry(MaxWorkers + 1).Workers }, true, "workers, at most"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			tel := validTelemetry(3)
			tt.mutate(tel)
			err := tel.Validate(tt.session)
			if !tt.wantErr {
				if err != nil {
					t.Fatalf("Validate: %v", err)
				}
				return
			}
			if err == nil {
				t.Fatal("Validate accepted it")
			}
			if !errors.Is(err, ErrInvalid) {
				t.Errorf("error %q is not ErrInvalid", err)
			}
			if !strings.Contains(err.Error(), tt.wantText) {
				t.Errorf("error %q does not mention %q", err, tt.wantText)
			}
			if got := CloseCodeFor(err); got != CloseMalformed {
				t.Errorf("CloseCodeFor = %v, want %v", got, CloseMalformed)
			}
			if len(err.Error()) > 200 {
				t.Errorf("error is %d bytes long", len(err.Error()))
			}
		})
	}
}

func TestValidName(t *testing.T) {
	for _, tt := range []struct {
		name string
		ok   bool
	}{
		{"node-1", true},
		{"gpu_box.lan:7946", true},
		{"root@host", true},
		{strings.Repeat("n", MaxNameLen), true},
		{"", false},
		{strings.Repeat("n", MaxNameLen+1), false},
		{"two words", false},
		{"tab\there", false},
		{"slash/name", false},
		{"ünicode", false},
	} {
		err := ValidName(tt.name)
		if (err == nil) != tt.ok {
			t.Errorf("ValidName(%q) = %v, want ok=%v", tt.name, err, tt.ok)
		}
		if err != nil && !errors.Is(err, ErrInvalid) {
			t.Errorf("ValidName(%q) error %v is not ErrInvalid", tt.name, err)
		}
	}
}

func TestCloseCodeFor_MapsSentinelErrors(t *testing.T) {
	for _, tt := range []struct {
		name string
		err  error
		want websocket.StatusCode
	}{
		{"unknown type", ErrUnknownType, websocket.StatusUnsupportedData},
		{"wrapped unknown type", fmt.Errorf("read: %w", fmt.Errorf("%w %q", ErrUnknownType, "x")), 1003},
		{"malformed", ErrMalformed, websocket.StatusInvalidFramePayloadData},
		{"wrapped malformed", fmt.Errorf("bad message: %w", ErrMalformed), 1007},
		{"invalid", ErrInvalid, 1007},
		{"wrapped invalid", fmt.Errorf("worker 3: %w", ErrInvalid), 1007},
		{"anything else", errors.New("disk on fire"), websocket.StatusInternalError},
		{"nil", nil, 1011},
	} {
		t.Run(tt.name, func(t *testing.T) {
			if got := CloseCodeFor(tt.err); got != tt.want {
				t.Errorf("CloseCodeFor(%v) = %v, want %v", tt.err, got, tt.want)
			}
		})
	}
	// The codes rbee documents to clients are stable numbers.
	for code, want := range map[websocket.StatusCode]int{
		CloseGoingAway: 1001, CloseUnknownType: 1003, CloseMalformed: 1007, CloseAuth: 1008,
		CloseTooBig: 1009, CloseNotQueen: 4001, CloseReplaced: 4002, CloseTooSlow: 4003, CloseProtocol: 4004,
	} {
		if int(code) != want {
			t.Errorf("close code %v = %d, want %d", code, int(code), want)
		}
	}
}

// longestValidPrefix is the reference for CloseReason: the longest prefix of
// s of at most n bytes that does not end inside a multi-byte character.
func longestValidPrefix(s string, n int) string {
	if len(s) <= n {
		return s
	}
	for i := n; i >= 0; i-- {
		if i == len(s) || utf8.RuneStart(s[i]) {
			return s[:i]
		}
	}
	return ""
}

func TestCloseReason_TruncatesToValidUTF8(t *testing.T) {
	tests := []struct {
		name string
		in   string
	}{
		{"empty", ""},
		{"short", "bad message: malformed"},
		{"exactly 123", strings.Repeat("a", 123)},
		{"124 ascii", strings.Repeat("a", 124)},
		{"long ascii", strings.Repeat("a", 1000)},
	}
	// Every alignment of 2-, 3- and 4-byte characters against the 123-byte
	// boundary.
	for _, r := range []string{"é", "€", "🦙"} {
		for pad := range 4 {
			tests = append(tests, struct{ name, in string }{
				fmt.Sprintf("%s after %d ascii", r, 120+pad),
				strings.Repeat("a", 120+pad) + strings.Repeat(r, 10),
			})
			tests = append(tests, struct{ name, in string }{
				fmt.Sprintf("only %s offset %d", r, pad),
				strings.Repeat("a", pad) + strings.Repeat(r, 100),
			})
		}
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			got := CloseReason(tt.in)
			if len(got) > 123 {
				t.Fatalf("len = %d, want <= 123", len(got))
			}
			if !utf8.ValidString(got) {
				t.Fatalf("not valid UTF-8: %q", got)
			}
			if !strings.HasPrefix(tt.in, got) {
				t.Fatalf("%q is not a prefix of the input", got)
			}
			if want := longestValidPrefix(tt.in, 123); got != want {
				t.Errorf("CloseReason kept %d bytes, want %d (a whole character was dropped):\n got %q\nwant %q", len(got), len(want), got, want)
			}
		})
	}
}

func TestDecode_ErrorsStayShortWhateverThePeerSends(t *testing.T) {
	// Decode errors end up in close reasons and log lines; a peer must not
	// be able to make them as long as its message.
	huge := strings.Repeat("9", 100000)
	for _, in := range []string{
		`{"type":"queen","workers_online":` + huge + `}`,
		`{"type":"queen","workers_online":-` + huge + `}`,
		`{"type":"hive_telemetry","workers":[{"pid":` + huge + `}]}`,
		`{"type":"hive_telemetry","workers":[{"cpu_pct":1e` + huge[:400] + `}]}`,
		`{"type":"hive_telemetry","timestamp":"` + huge + `"}`,
		`{"type":"` + huge + `"}`,
		`{"type":"queen"}` + huge,
		`{"type":"queen","x":"` + huge,
	} {
		_, err := Decode([]byte(in))
		if err == nil {
			t.Fatalf("Decode(%.60q...) succeeded", in)
		}
		if len(err.Error()) > 200 {
			t.Errorf("Decode(%.60q...) error is %d bytes: %.150q...", in, len(err.Error()), err)
		}
	}
}

func TestDecode_DuplicateTypeKeysAreRefusedWhateverTheSpacing(t *testing.T) {
	for _, in := range []string{
		`{"type":"hive_telemetry","type":"queen"}`,
		`{ "type":"hive_telemetry","type":"queen"}`,
		"{\n  \"type\": \"queen\",\n  \"type\": \"hello\"\n}",
		`{"hive_id":"h","type":"queen","type":"hello"}`,
		`{"type":"queen","type":"queen"}`,
		`{ "type":"queen","type":"queen"}`,
	} {
		msg, err := Decode([]byte(in))
		if !errors.Is(err, ErrMalformed) {
			t.Errorf("Decode(%q) = %T, %v; want ErrMalformed", in, msg, err)
		}
	}
}

// encoding/json matches keys to fields case-insensitively (with Unicode
// folding); a browser's JSON.parse does not. A key that differs from a field
// only in case would be read as that field here and as something else by
// every dashboard, so Decode refuses it.
// TestDecode_KeysDifferingOnlyInCaseAreIgnored: a key that matches a field
// only when case is folded is an unknown key, for Decode as for a browser's
// JSON.parse, so it can never make the queen validate one value while
// dashboards read another (the relay test checks that end to end).
func TestDecode_KeysDifferingOnlyInCaseAreIgnored(t *testing.T) {
	tests := []struct {
		in   string
		want func(any) bool
	}{
		{`{"type":"hive_telemetry","HIVE_ID":"h"}`, func(m any) bool { return m.(*HiveTelemetry).HiveID == "" }},
		{`{"type":"hive_telemetry","hive_id":"victim","Hive_Id":"h"}`, func(m any) bool { return m.(*HiveTelemetry).HiveID == "victim" }},
		{`{"type":"hive_telemetry","workers":[{"Group":"llm"}]}`, func(m any) bool { return m.(*HiveTelemetry).Workers[0].Group == "" }},
		{`{"type":"hive_telemetry","workers":[{"model":"x","MODEL":"y"}]}`, func(m any) bool { return *m.(*HiveTelemetry).Workers[0].Model == "x" }},
		{`{"type":"hive_telemetry","wor` + "\u212a" + `ers":[{}]}`, func(m any) bool { return len(m.(*HiveTelemetry).Workers) == 0 }},                       // Kelvin sign
		{`{"type":"hive_telemetry","workers":[{"in` + "\u017f" + `tance":"1"}]}`, func(m any) bool { return m.(*HiveTelemetry).Workers[0].Instance == "" }}, // long s
		{`{"type":"queen","worker_IDS":["a"]}`, func(m any) bool { return len(m.(*QueenEvent).WorkerIDs) == 0 }},
		{`{"type":"hello","Proof":"00"}`, func(m any) bool { return m.(*Hello).Proof == "" }},
	}
	for _, tc := range tests {
		msg, err := Decode([]byte(tc.in))
		if err != nil {
			t.Errorf("Decode(%q) = %v; an unknown key is not an error", tc.in, err)
			continue
		}
		if !tc.want(msg) {
			t.Errorf("Decode(%q) = %+v: a case-folded key reached a field", tc.in, msg)
		}
	}
	for _, in := range []string{`{"TYPE":"queen"}`, `{"type":"queen","TYPE":"hello","type":"hello"}`} {
		if _, err := Decode([]byte(in)); !errors.Is(err, ErrMalformed) {
			t.Errorf("Decode(%q) = %v, want ErrMalformed (no type, or a duplicate one)", in, err)
		}
	}
}

func TestDecode_ExactAndUnknownKeysAreAccepted(t *testing.T) {
	tests := []struct {
		in   string
		want any
	}{
		// An escaped key that spells a field exactly is that field for
		// every decoder.
		{`{"type":"queen","worker\u005fids":["a"]}`, &QueenEvent{Type: TypeQueen, WorkerIDs: []string{"a"}}},
		// Unknown keys from newer peers, including ones with capitals,
		// and field names inside string values, are fine.
		{`{"type":"queen","GPU_Vendor":"NVIDIA","note":"HIVE_ID Type {\"TYPE\":1}"}`, &QueenEvent{Type: TypeQueen}},
		{`{"type":"welcome","extra":{"type":"x","hive_id":"y"},"interval_ms":5}`, &Welcome{Type: TypeWelcome, IntervalMS: 5}},
	}
	for _, tt := range tests {
		got, err := Decode([]byte(tt.in))
		if err != nil {
			t.Errorf("Decode(%q): %v", tt.in, err)
			continue
		}
		if !reflect.DeepEqual(got, tt.want) {
			t.Errorf("Decode(%q) = %+v, want %+v", tt.in, got, tt.want)
		}
	}
}

func TestDecode_InvalidUTF8IsRefused(t *testing.T) {
	// Go would replace the bad bytes and accept the message; the raw bytes
	// relayed to a browser would make it fail the feed connection.
	for _, in := range []string{
		"{\"type\":\"queen\",\"queen_id\":\"\xff\"}",
		"{\"type\":\"hive_telemetry\",\"hive_id\":\"h\",\"workers\":[{\"model\":\"m\xc3\"}]}",
		"{\"type\":\"queen\",\"note\":\"\xed\xa0\x80\"}", // a UTF-16 surrogate in UTF-8
	} {
		if _, err := Decode([]byte(in)); !errors.Is(err, ErrMalformed) {
			t.Errorf("Decode(%q) = %v, want ErrMalformed", in, err)
		}
	}
}
