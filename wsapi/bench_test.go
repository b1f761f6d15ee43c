package wsapi

import (
	"fmt"
	"testing"
	"time"
)

// benchTelemetry is a hive report with n workers, as the queen receives it
// 1000 times a second in the ingest target.
func benchTelemetry(n int) []byte {
	t := HiveTelemetry{Type: TypeHiveTelemetry, HiveID: "hive-gpu-1", Timestamp: time.Date(2025, 10, 30, 20, 15, 30, 0, time.UTC)}
	for i := range n {
		m := "llama-3.2-1b"
		t.Workers = append(t.Workers, ProcessStats{PID: uint32(12345 + i), Group: "llm", Instance: fmt.Sprint(8080 + i),
			CPUPct: 45.2, RSSMB: 4096, UptimeS: 3600, GPUUtilPct: 85.5, VRAMMB: 8192, TotalVRAMMB: 24576, Model: &m})
	}
	b, err := Encode(t)
	if err != nil {
		panic(err)
	}
	return b
}

// BenchmarkQueenIngest is the queen's per-report work: decode, validate,
// re-encode for the feed.
func BenchmarkQueenIngest(b *testing.B) {
	data := benchTelemetry(8)
	b.SetBytes(int64(len(data)))
	b.ReportAllocs()
	for b.Loop() {
		msg, err := Decode(data)
		if err != nil {
			b.Fatal(err)
		}
		t := msg.(*HiveTelemetry)
		if err := t.Validate("hive-gpu-1"); err != nil {
			b.Fatal(err)
		}
		if _, err := Encode(t); err != nil {
			b.Fatal(err)
		}
	}
}

func BenchmarkDecodeTelemetry(b *testing.B) {
	data := benchTelemetry(8)
	b.SetBytes(int64(len(data)))
	b.ReportAllocs()
	for b.Loop() {
		if _, err := Decode(data); err != nil {
			b.Fatal(err)
		}
	}
}

// BenchmarkTelemetryDecoder is the queen's decoding of one session's reports.
func BenchmarkTelemetryDecoder(b *testing.B) {
	data := benchTelemetry(8)
	b.SetBytes(int64(len(data)))
	b.ReportAllocs()
	var d telemetryDecoder
	for b.Loop() {
		if _, err := d.Decode(data); err != nil {
			b.Fatal(err)
		}
	}
}
