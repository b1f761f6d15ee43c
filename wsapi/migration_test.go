package wsapi

import (
	"errors"
	"reflect"
	"strings"
	"testing"
	"time"
)

func validMigration() Migration {
	return Migration{Type: TypeMigration, At: time.Date(2026, 12, 6, 14, 0, 0, 0, time.UTC), Entry: "entry-1",
		Model: "qwen2.5-7b", From: "hive-a/llm/8080", To: "hive-b/llm/8081", Tokens: 120, PauseMS: 400,
		Result: MigrationContinued}
}

// A report travels between builds of this revision unchanged, and the queen
// refuses what no proxy of this build would send.
func TestMigration_RoundTripAndValidate(t *testing.T) {
	for _, tt := range []struct {
		name string
		edit func(*Migration)
		ok   bool
	}{
		{"continued", func(*Migration) {}, true},
		{"failed before a worker was granted", func(m *Migration) {
			m.To, m.PauseMS, m.Result, m.Reason = "", 0, MigrationFailed, "no other worker serves qwen2.5-7b"
		}, true},
		{"broke off before the first token", func(m *Migration) { m.Tokens = 0 }, true},
		{"negative tokens", func(m *Migration) { m.Tokens = -1 }, false},
		{"negative pause", func(m *Migration) { m.PauseMS = -400 }, false},
		{"unknown result", func(m *Migration) { m.Result = "resumed" }, false},
		{"no result", func(m *Migration) { m.Result = "" }, false},
		{"overlong reason", func(m *Migration) { m.Reason = strings.Repeat("r", maxReasonLen+1) }, false},
		{"overlong model", func(m *Migration) { m.Model = strings.Repeat("m", maxModelLen+1) }, false},
		{"overlong entry", func(m *Migration) { m.Entry = strings.Repeat("e", maxFieldLen+1) }, false},
		{"control character in from", func(m *Migration) { m.From = "hive-a/llm\n/8080" }, false},
		{"NUL in reason", func(m *Migration) { m.Reason = "worker\x00died" }, false},
	} {
		t.Run(tt.name, func(t *testing.T) {
			m := validMigration()
			tt.edit(&m)
			b, err := Encode(&m)
			if err != nil {
				t.Fatal(err)
			}
			msg, err := Decode(b)
			if err != nil {
				t.Fatalf("Decode(%s): %v", b, err)
			}
			got, ok := msg.(*Migration)
			if !ok {
				t.Fatalf("Decode(%s) = %T, want *Migration", b, msg)
			}
			if !reflect.DeepEqual(*got, m) {
				t.Errorf("round trip:\n got %+v\nwant %+v", *got, m)
			}
			err = got.Validate()
			if (err == nil) != tt.ok || (err != nil && !errors.Is(err, ErrInvalid)) {
				t.Errorf("Validate: %v, want ok=%v (errors wrap ErrInvalid)", err, tt.ok)
			}
			if err != nil {
				checkCloseReason(t, "bad message: "+err.Error())
			}
		})
	}
}

// An empty list is left out of the queen event, so a dashboard of an earlier
// build reads the event as before.
func TestQueenEvent_MigrationsOmittedWhenNone(t *testing.T) {
	b, err := Encode(&QueenEvent{Type: TypeQueen})
	if err != nil {
		t.Fatal(err)
	}
	if strings.Contains(string(b), "migrations") {
		t.Errorf("queen event without migrations lists them: %s", b)
	}
	ev := QueenEvent{Type: TypeQueen, Migrations: []Migration{validMigration()}}
	b, err = Encode(&ev)
	if err != nil {
		t.Fatal(err)
	}
	msg, err := Decode(b)
	if err != nil {
		t.Fatal(err)
	}
	if got := msg.(*QueenEvent).Migrations; !reflect.DeepEqual(got, ev.Migrations) {
		t.Errorf("migrations after a round trip: %+v, want %+v", got, ev.Migrations)
	}
}
