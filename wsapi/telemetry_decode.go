package wsapi

import (
	"bytes"
	"errors"
	"io"
	"strconv"

	jsonv2 "github.com/go-json-experiment/json"
	"github.com/go-json-experiment/json/jsontext"
)

// telemetryDecoder decodes one session's hive_telemetry reports. The queen
// takes a thousand a second in a large cluster, and the reflective decoder
// allocated every string of every worker of every report: a quarter of its
// CPU. This one walks the report with a token reader and takes each string
// from the session's previous report when the bytes are the same (a worker's
// group, instance and model rarely change), so a report costs the message,
// its workers slice and what did change.
//
// It decodes only the common shape; anything else (escapes in names, null
// where a value should be, a number that does not fit, a timestamp in
// another form) makes it give up, and Decode, the reference, decodes the
// message instead. What it returns is therefore always what Decode returns
// (FuzzTelemetryDecoder holds it to that).
//
// The zero value is ready to use; one goroutine at a time.
type telemetryDecoder struct {
	dec  jsontext.Decoder
	rd   bytes.Reader
	prev *HiveTelemetry // the last report decoded here, for its strings
}

// telemetryPrefix starts a report as rbee peers encode it (see peekType).
var telemetryPrefix = []byte(`{"type":"` + TypeHiveTelemetry + `"`)

// errSlowPath makes the fast decoder give up: the message is not in the
// common shape, and Decode decides what it is.
var errSlowPath = errors.New("not the common shape")

// Decode decodes data as Decode does; for a hive_telemetry report it
// allocates little.
func (d *telemetryDecoder) Decode(data []byte) (any, error) {
	if !bytes.HasPrefix(data, telemetryPrefix) {
		return Decode(data)
	}
	t, err := d.fast(data)
	if err != nil {
		d.prev = nil
		return Decode(data)
	}
	d.prev = t
	return t, nil
}

func (d *telemetryDecoder) fast(data []byte) (*HiveTelemetry, error) {
	d.rd.Reset(data)
	d.dec.Reset(&d.rd)
	defer d.rd.Reset(nil)
	dec := &d.dec
	if tok, err := dec.ReadToken(); err != nil || tok.Kind() != '{' {
		return nil, errSlowPath
	}
	t := new(HiveTelemetry)
	var prev *HiveTelemetry
	if d.prev != nil {
		prev = d.prev
	} else {
		prev = &HiveTelemetry{}
	}
	for dec.PeekKind() == '"' {
		name, err := dec.ReadValue()
		if err != nil {
			return nil, err
		}
		switch string(name) {
		case `"type"`:
			t.Type, err = d.str(prev.Type)
			if err == nil && t.Type != TypeHiveTelemetry {
				err = errSlowPath
			}
		case `"hive_id"`:
			t.HiveID, err = d.str(prev.HiveID)
		case `"timestamp"`:
			err = d.timestamp(t)
		case `"workers"`:
			err = d.workers(t, prev)
		case `"leases"`:
			err = d.rest(&t.Leases)
		case `"catalog"`:
			err = d.rest(&t.Catalog)
		case `"gpus"`:
			err = d.rest(&t.GPUs)
		case `"managed"`:
			err = d.rest(&t.Managed)
		case `"copy_engines"`:
			err = d.rest(&t.CopyEngines)
		case `"models_dir_free_bytes"`:
			t.ModelsDirFreeBytes, err = d.uint(64)
		default:
			if bytes.IndexByte(name, '\\') >= 0 {
				// An escaped name may spell a known one.
				return nil, errSlowPath
			}
			err = dec.SkipValue()
		}
		if err != nil {
			return nil, err
		}
	}
	if tok, err := dec.ReadToken(); err != nil || tok.Kind() != '}' {
		return nil, errSlowPath
	}
	if _, err := dec.ReadToken(); err != io.EOF {
		return nil, errSlowPath // trailing data
	}
	if t.Type != TypeHiveTelemetry {
		return nil, errSlowPath
	}
	return t, nil
}

// str reads a string value, returning old when it spells the same.
func (d *telemetryDecoder) str(old string) (string, error) {
	v, err := d.dec.ReadValue()
	if err != nil {
		return "", err
	}
	if v.Kind() != '"' || bytes.IndexByte(v, '\\') >= 0 {
		return "", errSlowPath
	}
	raw := v[1 : len(v)-1]
	if string(raw) == old {
		return old, nil
	}
	return string(raw), nil
}

// uint reads an unsigned integer of bits bits.
func (d *telemetryDecoder) uint(bits int) (uint64, error) {
	v, err := d.dec.ReadValue()
	if err != nil {
		return 0, err
	}
	if v.Kind() != '0' {
		return 0, errSlowPath
	}
	n, err := strconv.ParseUint(string(v), 10, bits)
	if err != nil {
		return 0, errSlowPath
	}
	return n, nil
}

func (d *telemetryDecoder) float() (float64, error) {
	v, err := d.dec.ReadValue()
	if err != nil {
		return 0, err
	}
	if v.Kind() != '0' {
		return 0, errSlowPath
	}
	f, err := strconv.ParseFloat(string(v), 64)
	if err != nil {
		return 0, errSlowPath
	}
	return f, nil
}

// timestamp reads an RFC 3339 time in UTC with digits where the layout has
// them, the shape rbee and the seed send; the reference decoder's extra
// checks all pass on that shape.
func (d *telemetryDecoder) timestamp(t *HiveTelemetry) error {
	v, err := d.dec.ReadValue()
	if err != nil {
		return err
	}
	if v.Kind() != '"' {
		return errSlowPath
	}
	s := v[1 : len(v)-1]
	const layout = "dddd-dd-ddTdd:dd:dd"
	if len(s) < len(layout)+1 || s[len(s)-1] != 'Z' {
		return errSlowPath
	}
	for i := range len(layout) {
		if c := s[i]; layout[i] == 'd' && (c < '0' || c > '9') || layout[i] != 'd' && c != layout[i] {
			return errSlowPath
		}
	}
	if frac := s[len(layout) : len(s)-1]; len(frac) > 0 {
		if frac[0] != '.' || len(frac) == 1 {
			return errSlowPath
		}
		for _, c := range frac[1:] {
			if c < '0' || c > '9' {
				return errSlowPath
			}
		}
	}
	if err := t.Timestamp.UnmarshalText(s); err != nil {
		return errSlowPath
	}
	return nil
}

// rest decodes a rarer field with the reference decoder.
// bool reads true or false; anything else is left to Decode.
func (d *telemetryDecoder) bool() (bool, error) {
	v, err := d.dec.ReadValue()
	if err != nil {
		return false, err
	}
	switch v.Kind() {
	case 't':
		return true, nil
	case 'f':
		return false, nil
	}
	return false, errSlowPath
}

// strs reads a list of strings, sharing the previous report's list when it
// is the same (an Ollama hive lists every installed model in every report;
// nothing writes through the lists).
func (d *telemetryDecoder) strs(old []string) ([]string, error) {
	if d.dec.PeekKind() != '[' {
		var out []string
		return out, d.rest(&out)
	}
	if _, err := d.dec.ReadToken(); err != nil {
		return nil, err
	}
	var out []string // nil while the elements read equal old's
	n := 0
	for ; d.dec.PeekKind() == '"'; n++ {
		var was string
		if n < len(old) {
			was = old[n]
		}
		s, err := d.str(was)
		if err != nil {
			return nil, err
		}
		if out == nil && (n >= len(old) || s != old[n]) {
			out = append(make([]string, 0, n+4), old[:n]...)
		}
		if out != nil {
			out = append(out, s)
		}
	}
	if tok, err := d.dec.ReadToken(); err != nil || tok.Kind() != ']' {
		return nil, errSlowPath
	}
	switch {
	case out != nil:
		return out, nil
	case old == nil:
		return []string{}, nil // as Decode reads [], not null
	}
	return old[:n:n], nil
}

func (d *telemetryDecoder) rest(out any) error {
	v, err := d.dec.ReadValue()
	if err != nil {
		return err
	}
	if err := jsonv2.Unmarshal(v, out); err != nil {
		return errSlowPath
	}
	return nil
}

func (d *telemetryDecoder) workers(t *HiveTelemetry, prev *HiveTelemetry) error {
	dec := &d.dec
	if tok, err := dec.ReadToken(); err != nil || tok.Kind() != '[' {
		return errSlowPath // null or not an array
	}
	t.Workers = make([]ProcessStats, 0, max(len(prev.Workers), 1))
	var none ProcessStats
	for dec.PeekKind() == '{' {
		old := &none
		if i := len(t.Workers); i < len(prev.Workers) {
			old = &prev.Workers[i]
		}
		t.Workers = append(t.Workers, ProcessStats{})
		if err := d.worker(&t.Workers[len(t.Workers)-1], old); err != nil {
			return err
		}
	}
	if tok, err := dec.ReadToken(); err != nil || tok.Kind() != ']' {
		return errSlowPath
	}
	return nil
}

func (d *telemetryDecoder) worker(w, old *ProcessStats) error {
	dec := &d.dec
	if _, err := dec.ReadToken(); err != nil {
		return err
	}
	for dec.PeekKind() == '"' {
		name, err := dec.ReadValue()
		if err != nil {
			return err
		}
		var n uint64
		switch string(name) {
		case `"pid"`:
			n, err = d.uint(32)
			w.PID = uint32(n)
		case `"group"`:
			w.Group, err = d.str(old.Group)
		case `"instance"`:
			w.Instance, err = d.str(old.Instance)
		case `"cpu_pct"`:
			w.CPUPct, err = d.float()
		case `"rss_mb"`:
			w.RSSMB, err = d.uint(64)
		case `"io_r_mb_s"`:
			w.IOReadMBs, err = d.float()
		case `"io_w_mb_s"`:
			w.IOWriteMBs, err = d.float()
		case `"uptime_s"`:
			w.UptimeS, err = d.uint(64)
		case `"gpu_util_pct"`:
			w.GPUUtilPct, err = d.float()
		case `"vram_mb"`:
			w.VRAMMB, err = d.uint(64)
		case `"total_vram_mb"`:
			w.TotalVRAMMB, err = d.uint(64)
		case `"model"`:
			err = d.model(w, old)
		case `"models"`:
			w.Models, err = d.strs(old.Models)
		case `"aliases"`:
			w.Aliases, err = d.strs(old.Aliases)
		case `"engine"`:
			w.Engine, err = d.str(old.Engine)
		case `"slots"`:
			n, err = d.uint(31)
			w.Slots = int(n)
		case `"health"`:
			w.Health, err = d.str(old.Health)
		case `"health_reason"`:
			w.HealthReason, err = d.str(old.HealthReason)
		case `"simulated"`:
			w.Simulated, err = d.bool()
		case `"state"`:
			w.State, err = d.str(old.State)
		case `"state_reason"`:
			w.StateReason, err = d.str(old.StateReason)
		default:
			if bytes.IndexByte(name, '\\') >= 0 {
				return errSlowPath
			}
			err = dec.SkipValue()
		}
		if err != nil {
			return err
		}
	}
	if tok, err := dec.ReadToken(); err != nil || tok.Kind() != '}' {
		return errSlowPath
	}
	return nil
}

// model reads the worker's model, null for unknown, sharing the previous
// report's string when it is the same (nothing writes through Model).
func (d *telemetryDecoder) model(w, old *ProcessStats) error {
	if d.dec.PeekKind() == 'n' {
		_, err := d.dec.ReadValue()
		w.Model = nil
		return err
	}
	var was string
	if old.Model != nil {
		was = *old.Model
	}
	s, err := d.str(was)
	if err != nil {
		return err
	}
	if old.Model != nil && s == was {
		w.Model = old.Model
	} else {
		w.Model = new(string)
		*w.Model = s
	}
	return nil
}
