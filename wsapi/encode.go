package wsapi

import (
	"encoding/json"
	"math"
	"strconv"
	"time"
	"unicode/utf8"
)

// AppendJSON appends t as encoding/json writes it, byte for byte (a test
// holds it to that), without reflection: the queen re-encodes every report
// it relays to the feed, a thousand a second in a large cluster, and
// encoding/json's reflection was a sixth of its CPU there.
func (t *HiveTelemetry) AppendJSON(b []byte) []byte {
	b = append(b, `{"type":`...)
	b = appendString(b, t.Type)
	b = append(b, `,"hive_id":`...)
	b = appendString(b, t.HiveID)
	b = append(b, `,"timestamp":`...)
	b = appendTime(b, t.Timestamp)
	b = append(b, `,"workers":`...)
	if t.Workers == nil {
		b = append(b, "null"...)
	} else {
		b = append(b, '[')
		for i := range t.Workers {
			if i > 0 {
				b = append(b, ',')
			}
			b = t.Workers[i].appendJSON(b)
		}
		b = append(b, ']')
	}
	// The rest is small or rare: encoding/json writes it.
	for _, f := range []struct {
		name string
		v    any
		n    int
	}{{"leases", t.Leases, len(t.Leases)}, {"catalog", t.Catalog, len(t.Catalog)}, {"gpus", t.GPUs, len(t.GPUs)}, {"managed", t.Managed, len(t.Managed)}} {
		if f.n == 0 {
			continue
		}
		v, err := json.Marshal(f.v)
		if err != nil {
			continue // not for these types
		}
		b = append(b, ',', '"')
		b = append(b, f.name...)
		b = append(b, '"', ':')
		b = append(b, v...)
	}
	return append(b, '}')
}

func (w *ProcessStats) appendJSON(b []byte) []byte {
	b = append(b, `{"pid":`...)
	b = strconv.AppendUint(b, uint64(w.PID), 10)
	b = append(b, `,"group":`...)
	b = appendString(b, w.Group)
	b = append(b, `,"instance":`...)
	b = appendString(b, w.Instance)
	b = append(b, `,"cpu_pct":`...)
	b = appendFloat(b, w.CPUPct)
	b = append(b, `,"rss_mb":`...)
	b = strconv.AppendUint(b, w.RSSMB, 10)
	b = append(b, `,"io_r_mb_s":`...)
	b = appendFloat(b, w.IOReadMBs)
	b = append(b, `,"io_w_mb_s":`...)
	b = appendFloat(b, w.IOWriteMBs)
	b = append(b, `,"uptime_s":`...)
	b = strconv.AppendUint(b, w.UptimeS, 10)
	b = append(b, `,"gpu_util_pct":`...)
	b = appendFloat(b, w.GPUUtilPct)
	b = append(b, `,"vram_mb":`...)
	b = strconv.AppendUint(b, w.VRAMMB, 10)
	b = append(b, `,"total_vram_mb":`...)
	b = strconv.AppendUint(b, w.TotalVRAMMB, 10)
	b = append(b, `,"model":`...)
	if w.Model == nil {
		b = append(b, "null"...)
	} else {
		b = appendString(b, *w.Model)
	}
	b = appendStrings(b, `,"models":[`, w.Models)
	b = appendStrings(b, `,"aliases":[`, w.Aliases)
	if w.Engine != "" {
		b = append(b, `,"engine":`...)
		b = appendString(b, w.Engine)
	}
	if w.Slots != 0 {
		b = append(b, `,"slots":`...)
		b = strconv.AppendInt(b, int64(w.Slots), 10)
	}
	for _, f := range []struct{ name, v string }{{`,"health":`, w.Health}, {`,"health_reason":`, w.HealthReason}} {
		if f.v != "" {
			b = append(b, f.name...)
			b = appendString(b, f.v)
		}
	}
	if w.Simulated {
		b = append(b, `,"simulated":true`...)
	}
	for _, f := range []struct{ name, v string }{{`,"state":`, w.State}, {`,"state_reason":`, w.StateReason}} {
		if f.v != "" {
			b = append(b, f.name...)
			b = appendString(b, f.v)
		}
	}
	return append(b, '}')
}

// appendString writes s as encoding/json does: quoted, with HTML's < > &
// and U+2028/U+2029 escaped, invalid UTF-8 replaced. Plain ASCII (names,
// ids, most models) takes the fast path.
func appendString(b []byte, s string) []byte {
	for i := 0; i < len(s); i++ {
		c := s[i]
		if c < 0x20 || c >= utf8.RuneSelf || c == '"' || c == '\\' || c == '<' || c == '>' || c == '&' {
			v, _ := json.Marshal(s)
			return append(b, v...)
		}
	}
	b = append(b, '"')
	b = append(b, s...)
	return append(b, '"')
}

// appendFloat writes f as encoding/json does (ES6 number formatting).
func appendFloat(b []byte, f float64) []byte {
	if math.IsInf(f, 0) || math.IsNaN(f) {
		return append(b, "null"...) // unreachable: encoding/json fails on these; the decoder never yields them
	}
	abs := math.Abs(f)
	format := byte('f')
	if abs != 0 && (abs < 1e-6 || abs >= 1e21) {
		format = 'e'
	}
	b = strconv.AppendFloat(b, f, format, -1, 64)
	if format == 'e' {
		// clean up e-09 to e-9
		n := len(b)
		if n >= 4 && b[n-4] == 'e' && b[n-3] == '-' && b[n-2] == '0' {
			b[n-2] = b[n-1]
			b = b[:n-1]
		}
	}
	return b
}

func appendTime(b []byte, t time.Time) []byte {
	b = append(b, '"')
	b = t.AppendFormat(b, time.RFC3339Nano)
	return append(b, '"')
}

// appendStrings appends `,"name":[...]` (open: its opening up to the
// bracket) for a list that is omitted when empty.
func appendStrings(b []byte, open string, vs []string) []byte {
	if len(vs) == 0 {
		return b
	}
	b = append(b, open...)
	for i, v := range vs {
		if i > 0 {
			b = append(b, ',')
		}
		b = appendString(b, v)
	}
	return append(b, ']')
}
