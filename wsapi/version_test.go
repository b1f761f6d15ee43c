package wsapi

import (
	"context"
	"net/http"
	"net/http/httptest"
	"strings"
	"testing"

	"github.com/coder/websocket"
)

func TestKnows_TypesByRevision(t *testing.T) {
	for _, tt := range []struct {
		rev  int
		typ  string
		want bool
	}{
		{0, TypeLeaseGrant, true},
		{0, TypeModelStart, true},
		{0, TypeLeaseWait, true},
		{0, TypeHiveTelemetry, true},
		// Builds before usage accounting close the session on it.
		{0, TypeUsageReport, false},
		{1, TypeUsageReport, true},
		{Revision, TypeUsageReport, true},
		// A queen of revision 1 would skip a migration report unread;
		// it is not sent at all.
		{0, TypeMigration, false},
		{1, TypeMigration, false},
		{2, TypeMigration, true},
		{Revision, TypeMigration, true},
	} {
		if got := Knows(tt.rev, tt.typ); got != tt.want {
			t.Errorf("Knows(%d, %q) = %v, want %v", tt.rev, tt.typ, got, tt.want)
		}
	}
	for typ, rev := range introduced {
		if rev < 1 || rev > Revision {
			t.Errorf("%s introduced at revision %d, outside 1..%d", typ, rev, Revision)
		}
	}
}

func TestTypeOf_ReadsTheTagOfWhatThisPackageEncodes(t *testing.T) {
	b := encode(t, &UsageReport{Type: TypeUsageReport})
	if got := TypeOf(b); got != TypeUsageReport {
		t.Errorf("TypeOf(%s) = %q", b, got)
	}
	if got := TypeOf([]byte(`[{"type":"lease_grant"}]`)); got != "" {
		t.Errorf("TypeOf(batch) = %q, want \"\"", got)
	}
}

func TestSession_RevisionsAnnouncedBothWays(t *testing.T) {
	q := startQueen(t, SessionOptions{Name: "queen-1"})
	hive := q.mustDial(t, SessionOptions{Name: "hive-1"})
	qs := q.accepted(t)
	if hive.PeerRevision != Revision || qs.PeerRevision != Revision {
		t.Fatalf("hive sees revision %d, queen sees %d, want %d both", hive.PeerRevision, qs.PeerRevision, Revision)
	}
	if !hive.PeerKnows(TypeUsageReport) {
		t.Error("a hive does not send usage_report to a queen of this build")
	}
	if !hive.PeerKnows(TypeMigration) {
		t.Error("a node does not send migration to a queen of this build")
	}
}

// oldChallenge is the challenge of a queen built before revisions (d2f4061),
// byte for byte but the nonce.
const oldChallenge = `{"type":"challenge","nonce":"00112233445566778899aabbccddeeff","queen":"old-queen","version":"0.1.0","protocol":1}`

// oldQueen serves one hive session the way a queen built before revisions
// does, in insecure mode, and hands the test the hello it got.
func oldQueen(t *testing.T) (url string, hellos chan *Hello, client *http.Client) {
	t.Helper()
	hellos = make(chan *Hello, 1)
	done := make(chan struct{})
	srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		c, err := websocket.Accept(w, r, nil)
		if err != nil {
			return
		}
		defer c.CloseNow()
		ctx := r.Context()
		if c.Write(ctx, websocket.MessageText, []byte(oldChallenge)) != nil {
			return
		}
		_, b, err := c.Read(ctx)
		if err != nil {
			return
		}
		msg, err := Decode(b)
		if err != nil {
			t.Errorf("hello %s: %v", b, err)
			return
		}
		hellos <- msg.(*Hello)
		if c.Write(ctx, websocket.MessageText, []byte(`{"type":"welcome","proof":"","interval_ms":1000}`)) != nil {
			return
		}
		<-done
	}))
	t.Cleanup(func() {
		close(done)
		srv.Close()
	})
	return "ws" + strings.TrimPrefix(srv.URL, "http") + SessionPath, hellos, srv.Client()
}

// A queen that announces no revision is revision 0: the hive announces its
// own but holds back what such a queen may not read.
func TestSession_QueenThatAnnouncesNoRevisionIsRevisionZero(t *testing.T) {
	url, hellos, hc := oldQueen(t)
	ctx, cancel := context.WithTimeout(context.Background(), testWait)
	defer cancel()
	s, err := DialHive(ctx, url, &SessionOptions{Name: "hive-1", HTTPClient: hc})
	if err != nil {
		t.Fatal(err)
	}
	defer s.CloseNow()
	// The queen handed the hello over before its welcome let DialHive
	// return.
	if h := <-hellos; h.Revision != Revision {
		t.Errorf("hello announces revision %d, want %d", h.Revision, Revision)
	}
	if s.PeerRevision != 0 {
		t.Errorf("PeerRevision = %d, want 0", s.PeerRevision)
	}
	if s.PeerKnows(TypeUsageReport) || s.PeerKnows(TypeMigration) {
		t.Error("PeerKnows(usage_report or migration) for a queen that announced no revision")
	}
	if !s.PeerKnows(TypeLeaseRequest) {
		t.Error("!PeerKnows(lease_request): every queen reads it")
	}
}

// A hive that announces no revision is revision 0 on the queen's side, and a
// negative one reads as 0.
func TestSession_HiveRevisionAsAnnounced(t *testing.T) {
	for _, tt := range []struct {
		name     string
		announce int
		want     int
	}{{"none", 0, 0}, {"negative", -5, 0}, {"this build", Revision, Revision}, {"a later build", Revision + 3, Revision + 3}} {
		t.Run(tt.name, func(t *testing.T) {
			q := startQueen(t, SessionOptions{Name: "queen-1"})
			c, ch := handshakeDial(t, q)
			if ch.Revision != Revision {
				t.Errorf("challenge announces revision %d, want %d", ch.Revision, Revision)
			}
			writeRaw(t, c, websocket.MessageText, encode(t, Hello{Type: TypeHello, Name: "hive-1", Protocol: ProtocolVersion,
				Nonce: "abcd", Revision: tt.announce}))
			if s := q.accepted(t); s.PeerRevision != tt.want {
				t.Errorf("PeerRevision = %d, want %d", s.PeerRevision, tt.want)
			}
		})
	}
}

// Messages of unknown types and unknown fields, from a peer of a later
// revision, are skipped and ignored: the session stays open in both
// directions and counts what it skipped.
func TestSession_UnknownTypesAndFieldsKeepTheSessionOpen(t *testing.T) {
	q := startQueen(t, SessionOptions{Name: "queen-1"})
	hive := q.mustDial(t, SessionOptions{Name: "hive-1"})
	qs := q.accepted(t)
	ctx, cancel := context.WithTimeout(context.Background(), testWait)
	defer cancel()

	// Up: an unknown type alone, one in a batch, and telemetry with a
	// field nobody knows yet.
	tel := strings.Replace(string(encode(t, telemetryFrom("hive-1", 7))), `"workers":`, `"quantum_flux":{"a":[1]},"workers":`, 1)
	for _, m := range []string{
		`{"type":"model_load","model":"m"}`,
		`[{"type":"usage_forecast","n":1},` + tel + `]`,
	} {
		if err := hive.WriteRaw(ctx, []byte(m)); err != nil {
			t.Fatal(err)
		}
	}
	if h := q.waitHandled(t, "hive-1", 7); !strings.Contains(string(h.raw), "quantum_flux") {
		t.Errorf("the relayed report lost its unknown field: %s", h.raw)
	}
	if n := qs.Ignored(); n != 2 {
		t.Errorf("queen's session skipped %d messages, want 2", n)
	}

	// Down: an unknown type, then a grant with an unknown field.
	if err := qs.WriteRaw(ctx, []byte(`{"type":"lease_prefetch","lease_id":"q.9"}`)); err != nil {
		t.Fatal(err)
	}
	if err := qs.WriteRaw(ctx, []byte(`{"type":"lease_grant","request_id":"e.1","lease_id":"q.1","hive":"h","hive_addr":"127.0.0.1:1","worker":"llm/1","model":"m","priority_lane":3}`)); err != nil {
		t.Fatal(err)
	}
	msg, err := hive.Read(ctx)
	if err != nil {
		t.Fatalf("hive's read after an unknown type: %v", err)
	}
	if g, ok := msg.(*LeaseGrant); !ok || g.LeaseID != "q.1" {
		t.Fatalf("hive read %#v, want the grant q.1", msg)
	}
	if n := hive.Ignored(); n != 1 {
		t.Errorf("hive's session skipped %d messages, want 1", n)
	}
	select {
	case err := <-q.endOf("hive-1"):
		t.Fatalf("queen's session ended: %v", err)
	default:
	}
}
