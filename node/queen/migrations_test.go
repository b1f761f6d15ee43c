package queen

import (
	"fmt"
	"testing"
	"time"

	"github.com/rbee/rbee/wsapi"
)

func migration(n int) *wsapi.Migration {
	return &wsapi.Migration{Type: wsapi.TypeMigration, At: time.Unix(1_700_000_000+int64(n), 0).UTC(), Entry: "e1",
		Model: "m", From: "h1/llm/1", To: "h2/llm/2", Tokens: int64(n), PauseMS: 400, Result: wsapi.MigrationContinued}
}

// A migration a node reports is in the next queen event; the list keeps the
// wsapi.MaxMigrations newest, oldest first.
func TestQueen_MigrationsInTheQueenEvent(t *testing.T) {
	t0 := time.Date(2026, 1, 1, 0, 0, 0, 0, time.UTC)
	q := testQueen(t, &fakePeers{}, nil)
	q.startScheduling(t0)
	if ev := q.event(t0); ev.Migrations != nil {
		t.Fatalf("a new queen lists %+v", ev.Migrations)
	}
	q.handle("e1", migration(0), t0)
	ev := q.event(t0)
	if len(ev.Migrations) != 1 || ev.Migrations[0] != *migration(0) {
		t.Fatalf("event lists %+v, want the one migration", ev.Migrations)
	}

	const n = wsapi.MaxMigrations + 5
	for i := 1; i < n; i++ {
		q.handle("e1", migration(i), t0)
	}
	ev = q.event(t0)
	if len(ev.Migrations) != wsapi.MaxMigrations {
		t.Fatalf("event lists %d migrations, want %d", len(ev.Migrations), wsapi.MaxMigrations)
	}
	for i, m := range ev.Migrations {
		if want := int64(n - wsapi.MaxMigrations + i); m.Tokens != want {
			t.Fatalf("migration %d is #%d, want #%d (the newest, oldest first)", i, m.Tokens, want)
		}
	}
	// The event owns its copy: reports that come in while it is
	// encoded do not change it.
	q.handle("e1", migration(n), t0)
	if ev.Migrations[wsapi.MaxMigrations-1].Tokens != n-1 {
		t.Error("a later report changed an event already taken")
	}
}

// The queen's own migrations come in through AddMigration, validated as a
// peer's are; a node that does not schedule lists none, and a new term
// starts with an empty list.
func TestQueen_AddMigration(t *testing.T) {
	t0 := time.Date(2026, 1, 1, 0, 0, 0, 0, time.UTC)
	q := testQueen(t, &fakePeers{}, nil)
	q.AddMigration(*migration(1))
	q.startScheduling(t0)
	if ev := q.event(t0); len(ev.Migrations) != 0 {
		t.Fatalf("migration reported before this node scheduled is listed: %+v", ev.Migrations)
	}
	bad := *migration(2)
	bad.Result = "resumed"
	q.AddMigration(bad)
	failed := *migration(3)
	failed.To, failed.Result, failed.Reason = "", wsapi.MigrationFailed, "no other worker"
	q.AddMigration(failed)
	if ev := q.event(t0); len(ev.Migrations) != 1 || ev.Migrations[0] != failed {
		t.Fatalf("event lists %+v, want only the valid one", ev.Migrations)
	}
	q.stopScheduling()
	q.handle("e1", migration(4), t0)
	q.startScheduling(t0.Add(time.Minute))
	if ev := q.event(t0); len(ev.Migrations) != 0 {
		t.Fatalf("a new term lists %s", fmt.Sprint(ev.Migrations))
	}
}
