package node

import (
	"context"
	"log/slog"
	"strconv"
	"testing"
	"time"

	"github.com/rbee/rbee/wsapi"
)

func testMigration(tokens int64) wsapi.Migration {
	return wsapi.Migration{Type: wsapi.TypeMigration, At: time.Now().UTC(), Entry: "hive-1", Model: "m",
		From: "a/llm/1", To: "b/llm/2", Tokens: tokens, PauseMS: 400, Result: wsapi.MigrationContinued}
}

// The proxy's streams never wait for the uplink: a full queue drops its
// oldest report, and the uplink is woken once however many came in.
func TestMigrationQueue_KeepsTheNewestAndWakesTheUplink(t *testing.T) {
	q := newMigrationQueue(slog.New(slog.DiscardHandler))
	const n = migrationQueueLen + 3
	for i := range n {
		q.put(testMigration(int64(i)))
	}
	select {
	case <-q.ready:
	default:
		t.Fatal("uplink not woken")
	}
	ms := q.take()
	if len(ms) != migrationQueueLen || ms[0].Tokens != n-migrationQueueLen || ms[len(ms)-1].Tokens != n-1 {
		t.Fatalf("took %d reports, #%d to #%d; want the %d newest, oldest first", len(ms), ms[0].Tokens,
			ms[len(ms)-1].Tokens, migrationQueueLen)
	}
	if ms := q.take(); len(ms) != 0 {
		t.Fatalf("queue still holds %d after take", len(ms))
	}
	select {
	case <-q.ready:
		t.Fatal("woken twice for one batch")
	default:
	}
}

// A migration goes to a queen whose revision reads it; one of an earlier
// revision gets none, and it is dropped rather than held for it.
func TestUplink_MigrationsOnlyToAQueenThatReadsThem(t *testing.T) {
	const challenge = `{"type":"challenge","nonce":"00ff","queen":"q","version":"0.1.0","protocol":1,"revision":`
	for _, tt := range []struct {
		name  string
		rev   int
		first string
	}{
		{"queen of revision 1", 1, wsapi.TypeHiveTelemetry},
		{"queen of this revision", wsapi.Revision, wsapi.TypeMigration},
	} {
		t.Run(tt.name, func(t *testing.T) {
			url, first, hc := fakeQueen(t, challenge+strconv.Itoa(tt.rev)+`}`)
			ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
			defer cancel()
			s, err := wsapi.DialHive(ctx, url, &wsapi.SessionOptions{Name: "hive-1", HTTPClient: hc})
			if err != nil {
				t.Fatal(err)
			}
			defer s.CloseNow()
			n := &Node{log: slog.New(slog.DiscardHandler)}
			n.migrations = newMigrationQueue(n.log)
			n.migrations.put(testMigration(120))
			if err := n.sendMigrations(ctx, s); err != nil {
				t.Fatal(err)
			}
			if ms := n.migrations.take(); len(ms) != 0 {
				t.Errorf("%d reports left in the queue", len(ms))
			}
			// Telemetry after the migration: whatever the queen reads
			// first shows whether the migration went out before it.
			tel := &wsapi.HiveTelemetry{Type: wsapi.TypeHiveTelemetry, HiveID: "hive-1", Timestamp: time.Now()}
			if err := s.Write(ctx, tel); err != nil {
				t.Fatal(err)
			}
			select {
			case got := <-first:
				if got != tt.first {
					t.Errorf("queen read %s first, want %s", got, tt.first)
				}
			case <-ctx.Done():
				t.Fatal("queen read nothing")
			}
		})
	}
}
