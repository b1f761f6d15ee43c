package node

import (
	"context"
	"net/http"
	"net/http/httptest"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/coder/websocket"

	"github.com/rbee/rbee/node/usage"
	"github.com/rbee/rbee/wsapi"
)

// fakeQueen runs a queen's end of the handshake by hand, announcing the
// revision in challenge (a queen built before revisions sends none), and
// hands the test the type of the first message the hive sends after it.
func fakeQueen(t *testing.T, challenge string) (url string, first <-chan string, hc *http.Client) {
	t.Helper()
	types := make(chan string, 1)
	srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		c, err := websocket.Accept(w, r, nil)
		if err != nil {
			return
		}
		defer c.CloseNow()
		ctx := r.Context()
		steps := []func() error{
			func() error { return c.Write(ctx, websocket.MessageText, []byte(challenge)) },
			func() error { _, _, err := c.Read(ctx); return err }, // hello
			func() error {
				return c.Write(ctx, websocket.MessageText, []byte(`{"type":"welcome","proof":"","interval_ms":1000}`))
			},
			func() error {
				_, b, err := c.Read(ctx)
				if err == nil {
					types <- wsapi.TypeOf(b)
				}
				return err
			},
		}
		for _, step := range steps {
			if step() != nil {
				return
			}
		}
		_ = c.Close(websocket.StatusNormalClosure, "")
	}))
	t.Cleanup(srv.Close)
	return "ws" + strings.TrimPrefix(srv.URL, "http") + wsapi.SessionPath, types, srv.Client()
}

// A node with usage to report sends it to a queen that announced a revision
// that reads usage_report, and holds it back from one that announced none:
// builds before usage accounting close the session on it, dropping every
// lease the node waits for.
func TestUplink_UsageOnlyToAQueenThatReadsIt(t *testing.T) {
	const challenge = `{"type":"challenge","nonce":"00ff","queen":"q","version":"0.1.0","protocol":1`
	for _, tt := range []struct {
		name      string
		challenge string
		first     string
	}{
		{"queen announces no revision", challenge + `}`, wsapi.TypeHiveTelemetry},
		{"queen of this revision", challenge + `,"revision":` + strconv.Itoa(wsapi.Revision) + `}`, wsapi.TypeUsageReport},
	} {
		t.Run(tt.name, func(t *testing.T) {
			url, first, hc := fakeQueen(t, tt.challenge)
			ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
			defer cancel()
			s, err := wsapi.DialHive(ctx, url, &wsapi.SessionOptions{Name: "hive-1", HTTPClient: hc})
			if err != nil {
				t.Fatal(err)
			}
			defer s.CloseNow()
			n := &Node{usage: usage.NewLedger(), start: time.Now()}
			n.usage.Record(usage.Sample{Key: "-", Model: "m", Prompt: 3, Completion: 5, At: time.Now(), OK: true})
			var at time.Time // a new session: every bucket is due
			if err := n.sendUsage(ctx, s, &at); err != nil {
				t.Fatal(err)
			}
			// Telemetry after the usage: whatever the queen reads first
			// shows whether usage went out before it.
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
