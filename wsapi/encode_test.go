package wsapi

import (
	"bytes"
	"encoding/json"
	"math"
	"math/rand/v2"
	"testing"
	"time"
)

// AppendJSON writes what encoding/json writes, for every value the queen
// may relay.
func TestAppendJSON_MatchesEncodingJSON(t *testing.T) {
	rng := rand.New(rand.NewPCG(5, 6))
	strs := []string{"", "llm", "8080", "llama-3.2-1b", "a<b>&c", "naïve ✓", "q\"uote\\", "tab\there", "\u2028line", "bad\xffutf8", "/models/x.gguf"}
	str := func() string { return strs[rng.IntN(len(strs))] }
	floats := []float64{0, 1, -1, 0.5, 12.345678, 1e-7, 1e21, 123456789.125, math.SmallestNonzeroFloat64, 99.99999999}
	flt := func() float64 { return floats[rng.IntN(len(floats))] }
	for range 2000 {
		tel := &HiveTelemetry{Type: TypeHiveTelemetry, HiveID: str(), Timestamp: time.Unix(rng.Int64N(2e9), rng.Int64N(1e9)).UTC()}
		if rng.IntN(5) > 0 {
			tel.Workers = []ProcessStats{}
		}
		for range rng.IntN(4) {
			w := ProcessStats{PID: rng.Uint32(), Group: str(), Instance: str(), CPUPct: flt(), RSSMB: rng.Uint64(), IOReadMBs: flt(),
				IOWriteMBs: flt(), UptimeS: rng.Uint64N(1e6), GPUUtilPct: flt(), VRAMMB: rng.Uint64N(1e6), TotalVRAMMB: rng.Uint64N(1e6),
				Slots: rng.IntN(3) - 1, Health: str(), HealthReason: str(), Simulated: rng.IntN(2) == 0, State: str(), StateReason: str()}
			if rng.IntN(2) == 0 {
				m := str()
				w.Model = &m
			}
			for range rng.IntN(3) {
				w.Models = append(w.Models, str())
			}
			for range rng.IntN(3) {
				w.Aliases = append(w.Aliases, str())
			}
			w.Engine = str()
			tel.Workers = append(tel.Workers, w)
		}
		if rng.IntN(3) == 0 {
			tel.Leases = []LeaseInfo{{LeaseID: "q.1", Worker: "llm/1", Model: str(), Entry: "e", Since: tel.Timestamp}}
			tel.Catalog = lifecycleTelemetry().Catalog
			tel.GPUs = lifecycleTelemetry().GPUs
			tel.Managed = lifecycleTelemetry().Managed
		}
		want, err := json.Marshal(tel)
		if err != nil {
			t.Fatal(err)
		}
		if got := tel.AppendJSON(nil); !bytes.Equal(got, want) {
			t.Fatalf("AppendJSON:\n got %s\nwant %s", got, want)
		}
	}
}

func BenchmarkEncodeTelemetry(b *testing.B) {
	tel := validTelemetry(8)
	b.Run("encoding_json", func(b *testing.B) {
		for b.Loop() {
			_, _ = json.Marshal(tel)
		}
	})
	b.Run("append_json", func(b *testing.B) {
		var buf []byte
		for b.Loop() {
			buf = tel.AppendJSON(buf[:0])
		}
	})
}
