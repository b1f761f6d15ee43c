package gossip

import (
	"context"
	"log"
	"log/slog"
	"sync"
	"testing"
	"time"
)

// recordHandler keeps every record it is given, at every level.
type recordHandler struct {
	mu      sync.Mutex
	records []slog.Record
}

func (h *recordHandler) Enabled(context.Context, slog.Level) bool { return true }

func (h *recordHandler) Handle(_ context.Context, r slog.Record) error {
	h.mu.Lock()
	defer h.mu.Unlock()
	h.records = append(h.records, r.Clone())
	return nil
}

func (h *recordHandler) WithAttrs([]slog.Attr) slog.Handler { return h }
func (h *recordHandler) WithGroup(string) slog.Handler      { return h }

func (h *recordHandler) all() []slog.Record {
	h.mu.Lock()
	defer h.mu.Unlock()
	return append([]slog.Record(nil), h.records...)
}

func TestStdLogger_MapsLevelsAndStripsPrefix(t *testing.T) {
	for _, tc := range []struct {
		name  string
		line  string
		level slog.Level
		msg   string
	}{
		{"debug is debug", "[DEBUG] memberlist: Stream connection from=127.0.0.1:1234", slog.LevelDebug, "Stream connection from=127.0.0.1:1234"},
		{"info is demoted to debug", "[INFO] memberlist: Marking b as failed, suspect timeout reached (0 peer confirmations)", slog.LevelDebug, "Marking b as failed, suspect timeout reached (0 peer confirmations)"},
		{"warn is warn", "[WARN] memberlist: Refuting a suspect message (from: b)", slog.LevelWarn, "Refuting a suspect message (from: b)"},
		{"err is demoted to warn", "[ERR] memberlist: Failed fallback TCP ping: io: read/write on closed pipe", slog.LevelWarn, "Failed fallback TCP ping: io: read/write on closed pipe"},
		{"err without the memberlist tag", "[ERR] Failed to shutdown transport: boom", slog.LevelWarn, "Failed to shutdown transport: boom"},
		{"untagged line is info", "memberlist: something new", slog.LevelInfo, "something new"},
		{"unknown tag is info and kept", "[TRACE] memberlist: x", slog.LevelInfo, "[TRACE] memberlist: x"},
		{"trailing newline and spaces are trimmed", "[WARN]   memberlist: x  \n", slog.LevelWarn, "x"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			h := &recordHandler{}
			newStdLogger(slog.New(h)).Print(tc.line)
			recs := h.all()
			if len(recs) != 1 {
				t.Fatalf("got %d records, want 1", len(recs))
			}
			r := recs[0]
			if r.Level != tc.level {
				t.Errorf("level %v, want %v", r.Level, tc.level)
			}
			if r.Message != tc.msg {
				t.Errorf("message %q, want %q", r.Message, tc.msg)
			}
			var component string
			r.Attrs(func(a slog.Attr) bool {
				if a.Key == "component" {
					component = a.Value.String()
				}
				return true
			})
			if component != "memberlist" {
				t.Errorf("component %q, want memberlist", component)
			}
		})
	}
}

func TestStdLogger_WriteReportsFullLength(t *testing.T) {
	w := &slogWriter{l: slog.New(&recordHandler{})}
	p := []byte("[DEBUG] memberlist: x\n")
	n, err := w.Write(p)
	if err != nil || n != len(p) {
		t.Fatalf("Write = %d, %v; want %d, nil", n, err, len(p))
	}
}

// TestStdLogger_RepeatedSymptomsGoToDebug: a symptom of a lossy network is
// logged at its level once a minute, its repeats in between at debug and
// counted on the next; other warnings are logged every time.
func TestStdLogger_RepeatedSymptomsGoToDebug(t *testing.T) {
	t0 := time.Date(2025, 1, 1, 0, 0, 0, 0, time.UTC)
	now := t0
	h := &recordHandler{}
	w := &slogWriter{l: slog.New(h), now: func() time.Time { return now }}
	l := log.New(w, "", 0)
	for _, step := range []struct {
		at      time.Duration
		line    string
		level   slog.Level
		repeats int64 // the "repeated" attribute, 0 for none
	}{
		{0, "[ERR] memberlist: Failed fallback TCP ping: timeout 200ms: read tcp: i/o timeout", slog.LevelWarn, 0},
		{time.Second, "[ERR] memberlist: Failed fallback TCP ping: timeout 200ms: read tcp: i/o timeout", slog.LevelDebug, 0},
		{2 * time.Second, "[WARN] memberlist: Refuting a suspect message (from: b)", slog.LevelWarn, 0},
		{3 * time.Second, "[ERR] memberlist: Failed fallback TCP ping: EOF", slog.LevelDebug, 0},
		{4 * time.Second, "[WARN] memberlist: Refuting a suspect message (from: c)", slog.LevelDebug, 0},
		{5 * time.Second, "[ERR] memberlist: Conflicting address for b. Mine: 1 Theirs: 2", slog.LevelWarn, 0},
		{6 * time.Second, "[ERR] memberlist: Conflicting address for b. Mine: 1 Theirs: 2", slog.LevelWarn, 0},
		{7 * time.Second, "[DEBUG] memberlist: Failed fallback TCP ping: x", slog.LevelDebug, 0},
		{symptomQuiet, "[ERR] memberlist: Failed fallback TCP ping: EOF", slog.LevelWarn, 2},
		{symptomQuiet + time.Second, "[ERR] memberlist: Failed fallback TCP ping: EOF", slog.LevelDebug, 0},
		{3 * symptomQuiet, "[WARN] memberlist: Refuting a suspect message (from: b)", slog.LevelWarn, 1},
	} {
		now = t0.Add(step.at)
		before := len(h.all())
		l.Print(step.line)
		recs := h.all()
		if len(recs) != before+1 {
			t.Fatalf("at %v: %d records for one line", step.at, len(recs)-before)
		}
		r := recs[len(recs)-1]
		var repeats int64
		r.Attrs(func(a slog.Attr) bool {
			if a.Key == "repeated" {
				repeats = a.Value.Int64()
			}
			return true
		})
		if r.Level != step.level || repeats != step.repeats {
			t.Errorf("at %v %q: level %v repeated %d, want %v repeated %d", step.at, step.line, r.Level, repeats, step.level, step.repeats)
		}
	}
}
