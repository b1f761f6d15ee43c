package wsapi

import (
	"encoding/json"
	"errors"
	"fmt"
	"reflect"
	"strings"
	"time"
	"unicode/utf8"
)

// Message type tags, snake_case as in the seed notes.
const (
	TypeHiveTelemetry = "hive_telemetry"
	TypeQueen         = "queen"
	TypeChallenge     = "challenge"
	TypeHello         = "hello"
	TypeWelcome       = "welcome"
)

// ProtocolVersion is bumped when a message changes incompatibly. Peers with a
// different major protocol are refused at hello with a clear reason instead of
// misreading each other's messages.
const ProtocolVersion = 1

// ProcessStats is one worker's telemetry: the seed's ProcessStats, field for
// field. Model is a pointer because the seed sends null for an unknown model,
// and dashboards tell "unknown" from "".
type ProcessStats struct {
	PID         uint32  `json:"pid"`
	Group       string  `json:"group"`
	Instance    string  `json:"instance"`
	CPUPct      float64 `json:"cpu_pct"`
	RSSMB       uint64  `json:"rss_mb"`
	IOReadMBs   float64 `json:"io_r_mb_s"`
	IOWriteMBs  float64 `json:"io_w_mb_s"`
	UptimeS     uint64  `json:"uptime_s"`
	GPUUtilPct  float64 `json:"gpu_util_pct"`
	VRAMMB      uint64  `json:"vram_mb"`
	TotalVRAMMB uint64  `json:"total_vram_mb"`
	Model       *string `json:"model"`
}

// WorkerID names a worker cluster-wide: hive, then group/instance.
func WorkerID(hive string, w ProcessStats) string {
	return hive + "/" + w.Group + "/" + w.Instance
}

// HiveTelemetry is what a hive pushes every second and what the feed relays.
type HiveTelemetry struct {
	Type      string         `json:"type"`
	HiveID    string         `json:"hive_id"`
	Timestamp time.Time      `json:"timestamp"`
	Workers   []ProcessStats `json:"workers"`
}

// QueenEvent is the queen's periodic cluster summary on the feed. QueenID is an
// addition to the seed shape (omitted when empty) so a dashboard can show which
// node is queen and notice a failover.
type QueenEvent struct {
	Type             string    `json:"type"`
	WorkersOnline    int       `json:"workers_online"`
	WorkersAvailable int       `json:"workers_available"`
	HivesOnline      int       `json:"hives_online"`
	HivesAvailable   int       `json:"hives_available"`
	WorkerIDs        []string  `json:"worker_ids"`
	HiveIDs          []string  `json:"hive_ids"`
	Timestamp        time.Time `json:"timestamp"`
	QueenID          string    `json:"queen_id,omitempty"`
}

// Challenge is the queen's first message on a hive session.
type Challenge struct {
	Type     string `json:"type"`
	Nonce    string `json:"nonce"`
	Queen    string `json:"queen"`
	Version  string `json:"version"`
	Protocol int    `json:"protocol"`
}

// Hello is the hive's answer to a Challenge. Proof is an HMAC over both nonces
// and the name, so it cannot be replayed to another session or another name.
type Hello struct {
	Type     string `json:"type"`
	Name     string `json:"name"`
	Version  string `json:"version"`
	Protocol int    `json:"protocol"`
	Nonce    string `json:"nonce"`
	Proof    string `json:"proof"`
}

// Welcome accepts a session. Proof shows the hive that the queen holds the
// cluster key too, so a hive never streams telemetry to an impostor.
type Welcome struct {
	Type       string `json:"type"`
	Proof      string `json:"proof"`
	IntervalMS int    `json:"interval_ms"`
}

// Errors that say why a message was rejected; the session maps them to close
// codes (see CloseCodeFor).
var (
	ErrMalformed   = errors.New("malformed message")
	ErrUnknownType = errors.New("unknown message type")
	ErrInvalid     = errors.New("invalid value")
)

// Limits on identifiers, enforced by Validate: they end up in metadata, logs,
// metric labels and the dashboard, so they are kept short and printable.
const (
	MaxNameLen    = 64
	MaxWorkers    = 4096
	maxFieldLen   = 256
	maxModelLen   = 512
	maxNonceBytes = 64
)

// Decode parses one message off the wire into its concrete type: *HiveTelemetry,
// *QueenEvent, *Challenge, *Hello or *Welcome. Unknown fields are ignored (peers
// may be newer), but an unknown type, a wrong field type or trailing garbage is
// an error wrapping ErrUnknownType or ErrMalformed.
func Decode(data []byte) (any, error) {
	// JSON is UTF-8. encoding/json would quietly replace bad bytes, but the
	// queen relays a report's bytes as received, and a browser fails the
	// whole feed connection on them.
	if !utf8.Valid(data) {
		return nil, fmt.Errorf("%w: not UTF-8", ErrMalformed)
	}
	typ, peeked := peekType(data)
	if !peeked {
		var head struct {
			Type string `json:"type"`
		}
		if err := json.Unmarshal(data, &head); err != nil {
			return nil, fmt.Errorf("%w: %s", ErrMalformed, jsonErrText(err))
		}
		typ = head.Type
	}
	var msg any
	var got *string // the decoded type field, to check against typ
	switch typ {
	case TypeHiveTelemetry:
		m := new(HiveTelemetry)
		msg, got = m, &m.Type
	case TypeQueen:
		m := new(QueenEvent)
		msg, got = m, &m.Type
	case TypeChallenge:
		m := new(Challenge)
		msg, got = m, &m.Type
	case TypeHello:
		m := new(Hello)
		msg, got = m, &m.Type
	case TypeWelcome:
		m := new(Welcome)
		msg, got = m, &m.Type
	case "":
		return nil, fmt.Errorf("%w: missing \"type\"", ErrMalformed)
	default:
		return nil, fmt.Errorf("%w %q", ErrUnknownType, truncate(typ, 40))
	}
	if err := json.Unmarshal(data, msg); err != nil {
		return nil, fmt.Errorf("%w: %s: %s", ErrMalformed, typ, jsonErrText(err))
	}
	if *got != typ {
		// A second "type" key: the last one wins in JSON decoders, so
		// refuse rather than guess which the sender meant.
		return nil, fmt.Errorf("%w: conflicting \"type\" keys", ErrMalformed)
	}
	if err := checkKeys(data); err != nil {
		return nil, fmt.Errorf("%w: %s: %w", ErrMalformed, typ, err)
	}
	return msg, nil
}

// fieldNames numbers the JSON names of every message field, for checkKeys.
var fieldNames = func() map[string]int {
	names := map[string]int{}
	for _, v := range []any{HiveTelemetry{}, ProcessStats{}, QueenEvent{}, Challenge{}, Hello{}, Welcome{}} {
		t := reflect.TypeOf(v)
		for i := range t.NumField() {
			name, _, _ := strings.Cut(t.Field(i).Tag.Get("json"), ",")
			if _, ok := names[name]; !ok && name != "" && name != "-" {
				names[name] = len(names)
			}
		}
	}
	if len(names) > 64 {
		panic("wsapi: checkKeys tracks at most 64 field names")
	}
	return names
}()

// checkKeys refuses keys that encoding/json and a browser's JSON.parse would
// read differently, since the queen validates a report with the one and
// relays its bytes to the other: a key that matches a field only
// case-insensitively ("HIVE_ID", or "wor\u212aers" with a Kelvin sign), which
// encoding/json folds onto the field and JSON.parse keeps apart, and a field
// given twice in one object, which encoding/json merges into what it decoded
// first and JSON.parse replaces. data must be valid JSON.
func checkKeys(data []byte) error {
	var stack [8]uint64
	seen := stack[:0] // fields seen, per open object or array
	for i := 0; i < len(data); i++ {
		switch data[i] {
		case '{', '[':
			seen = append(seen, 0)
			continue
		case '}', ']':
			seen = seen[:len(seen)-1]
			continue
		case '"':
		default:
			continue
		}
		start, escaped := i+1, false
		for i++; data[i] != '"'; i++ {
			if data[i] == '\\' {
				escaped = true
				i++
			}
		}
		j := i + 1
		for j < len(data) && (data[j] == ' ' || data[j] == '\t' || data[j] == '\n' || data[j] == '\r') {
			j++
		}
		if j == len(data) || data[j] != ':' {
			continue // a value, not a key
		}
		var key string
		if escaped {
			var err error
			if key, err = unquote(data[start-1 : i+1]); err != nil {
				return err
			}
		}
		n, ok := fieldNames[key]
		if !escaped {
			n, ok = fieldNames[string(data[start:i])] // no allocation
		}
		if !ok {
			if !escaped {
				key = string(data[start:i])
			}
			for name := range fieldNames {
				if strings.EqualFold(key, name) {
					return fmt.Errorf("key %q differs from %q only in case", truncate(key, 40), name)
				}
			}
			continue
		}
		top := &seen[len(seen)-1]
		if *top&(1<<n) != 0 {
			return fmt.Errorf("duplicate key %q", data[start:i])
		}
		*top |= 1 << n
	}
	return nil
}

// unquote decodes a JSON string with escapes (rare in keys, so not fast).
func unquote(b []byte) (string, error) {
	var s string
	err := json.Unmarshal(b, &s)
	return s, err
}

// peekType reads the type tag when it is the first key, as every rbee peer
// sends it, so the common case parses the message once instead of twice.
// Anything unusual (other key order, escapes, spaces inside) reports false and
// takes the general path.
func peekType(data []byte) (string, bool) {
	const prefix = `{"type":"`
	if len(data) < len(prefix) || string(data[:len(prefix)]) != prefix {
		return "", false
	}
	rest := data[len(prefix):]
	for i, c := range rest {
		switch {
		case c == '"':
			return string(rest[:i]), i > 0
		case c == '_' || (c >= 'a' && c <= 'z'):
		default:
			return "", false
		}
		if i > 40 {
			return "", false
		}
	}
	return "", false
}

// Encode marshals a message. It never fails for the types in this package; the
// error is kept for callers that pass their own values.
func Encode(msg any) ([]byte, error) {
	return json.Marshal(msg)
}

// Validate checks a telemetry message from the hive named hive: the hive may
// only report for itself, and every string must be short and printable.
func (t *HiveTelemetry) Validate(hive string) error {
	if t.HiveID != hive {
		return fmt.Errorf("%w: hive_id %q does not match session %q", ErrInvalid, truncate(t.HiveID, 40), hive)
	}
	if len(t.Workers) > MaxWorkers {
		return fmt.Errorf("%w: %d workers, at most %d", ErrInvalid, len(t.Workers), MaxWorkers)
	}
	for i := range t.Workers {
		w := &t.Workers[i]
		if err := checkLabel("group", w.Group, maxFieldLen); err != nil {
			return fmt.Errorf("worker %d: %w", i, err)
		}
		if err := checkLabel("instance", w.Instance, maxFieldLen); err != nil {
			return fmt.Errorf("worker %d: %w", i, err)
		}
		if w.Model != nil {
			if err := checkText("model", *w.Model, maxModelLen); err != nil {
				return fmt.Errorf("worker %d: %w", i, err)
			}
		}
	}
	return nil
}

// ValidName reports whether s can name a node or hive.
func ValidName(s string) error {
	return checkLabel("name", s, MaxNameLen)
}

func checkLabel(field, s string, max int) error {
	if s == "" {
		return fmt.Errorf("%w: empty %s", ErrInvalid, field)
	}
	if len(s) > max {
		return fmt.Errorf("%w: %s longer than %d bytes", ErrInvalid, field, max)
	}
	for _, r := range s {
		ok := r == '-' || r == '_' || r == '.' || r == ':' || r == '@' ||
			(r >= 'a' && r <= 'z') || (r >= 'A' && r <= 'Z') || (r >= '0' && r <= '9')
		if !ok {
			return fmt.Errorf("%w: %s %q: only letters, digits and - _ . : @", ErrInvalid, field, truncate(s, 40))
		}
	}
	return nil
}

func checkText(field, s string, max int) error {
	if len(s) > max {
		return fmt.Errorf("%w: %s longer than %d bytes", ErrInvalid, field, max)
	}
	for _, r := range s {
		if r < 0x20 || r == 0x7f {
			return fmt.Errorf("%w: %s has control characters", ErrInvalid, field)
		}
	}
	return nil
}

// jsonErrText keeps decoder errors short: they travel in close reasons, which
// WebSocket caps at 123 bytes.
func jsonErrText(err error) string {
	var te *json.UnmarshalTypeError
	if errors.As(err, &te) {
		return fmt.Sprintf("field %q: want %s, got %s", te.Field, te.Type, truncate(te.Value, 40))
	}
	return truncate(err.Error(), 80)
}

func truncate(s string, n int) string {
	if len(s) <= n {
		return s
	}
	return s[:n] + "..."
}
