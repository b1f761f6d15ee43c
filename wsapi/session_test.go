package wsapi

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"net/http"
	"net/http/httptest"
	"strings"
	"sync"
	"testing"
	"time"
	"unicode/utf8"

	"github.com/coder/websocket"
)

// testWait bounds every wait in these tests. It is never reached when the code
// works; it only turns a hang into a failure.
const testWait = 15 * time.Second

// handled is one telemetry message that reached the queen's handle callback,
// with the session it arrived on.
type handled struct {
	peer string
	tel  *HiveTelemetry
	raw  []byte
}

// testQueen serves hive sessions on loopback the way the node's queen does:
// AcceptHive, then Serve until the session ends.
type testQueen struct {
	srv      *httptest.Server
	url      string
	opts     SessionOptions
	sessions chan *Session // accepted, after the handshake
	refused  chan error    // AcceptHive errors
	handled  chan handled

	mu   sync.Mutex
	ends map[string]chan error // Serve's result, by peer
}

func startQueen(t *testing.T, opts SessionOptions) *testQueen {
	t.Helper()
	q := &testQueen{
		opts:     opts,
		sessions: make(chan *Session, 16),
		refused:  make(chan error, 16),
		handled:  make(chan handled, 256),
		ends:     make(map[string]chan error),
	}
	ctx, cancel := context.WithCancel(context.Background())
	var wg sync.WaitGroup
	mux := http.NewServeMux()
	mux.HandleFunc(SessionPath, func(w http.ResponseWriter, r *http.Request) {
		wg.Add(1)
		defer wg.Done()
		s, err := AcceptHive(w, r, &q.opts)
		if err != nil {
			q.refused <- err
			return
		}
		q.sessions <- s
		err = s.Serve(ctx, func(msg any, raw []byte) error {
			if tel, ok := msg.(*HiveTelemetry); ok {
				q.handled <- handled{s.Peer, tel, bytes.Clone(raw)}
			}
			return nil
		})
		q.endOf(s.Peer) <- err
	})
	q.srv = httptest.NewServer(mux)
	q.url = "ws" + strings.TrimPrefix(q.srv.URL, "http") + SessionPath
	t.Cleanup(func() {
		cancel()
		wg.Wait()
		q.srv.Close()
	})
	return q
}

func (q *testQueen) endOf(peer string) chan error {
	q.mu.Lock()
	defer q.mu.Unlock()
	c, ok := q.ends[peer]
	if !ok {
		c = make(chan error, 1)
		q.ends[peer] = c
	}
	return c
}

// dial runs DialHive against the queen; a session it opens is dropped when
// the test ends.
func (q *testQueen) dial(t *testing.T, opts SessionOptions) (*Session, error) {
	t.Helper()
	opts.HTTPClient = q.srv.Client()
	ctx, cancel := context.WithTimeout(context.Background(), testWait)
	defer cancel()
	s, err := DialHive(ctx, q.url, &opts)
	if err == nil {
		t.Cleanup(s.CloseNow)
	}
	return s, err
}

func (q *testQueen) mustDial(t *testing.T, opts SessionOptions) *Session {
	t.Helper()
	s, err := q.dial(t, opts)
	if err != nil {
		t.Fatalf("DialHive as %s: %v", opts.Name, err)
	}
	return s
}

// accepted waits for the queen's end of the next session.
func (q *testQueen) accepted(t *testing.T) *Session {
	t.Helper()
	select {
	case s := <-q.sessions:
		return s
	case err := <-q.refused:
		t.Fatalf("queen refused the session: %v", err)
	case <-time.After(testWait):
		t.Fatal("queen never accepted the session")
	}
	return nil
}

func (q *testQueen) waitRefused(t *testing.T) error {
	t.Helper()
	select {
	case err := <-q.refused:
		return err
	case s := <-q.sessions:
		t.Fatalf("queen accepted a session from %q", s.Peer)
	case <-time.After(testWait):
		t.Fatal("queen never refused the session")
	}
	return nil
}

// waitEnd waits for Serve of peer's session to return.
func (q *testQueen) waitEnd(t *testing.T, peer string) error {
	t.Helper()
	select {
	case err := <-q.endOf(peer):
		return err
	case <-time.After(testWait):
		t.Fatalf("queen's session with %s never ended", peer)
	}
	return nil
}

// waitTelemetry waits until telemetry from peer with the given first PID
// reaches the handler. Telemetry from any peer in forbidden fails the test.
func (q *testQueen) waitTelemetry(t *testing.T, peer string, pid uint32, forbidden ...string) *HiveTelemetry {
	t.Helper()
	return q.waitHandled(t, peer, pid, forbidden...).tel
}

func (q *testQueen) waitHandled(t *testing.T, peer string, pid uint32, forbidden ...string) handled {
	t.Helper()
	deadline := time.After(testWait)
	for {
		select {
		case h := <-q.handled:
			for _, f := range forbidden {
				if h.peer == f {
					t.Errorf("telemetry from %s reached the handler: %+v", f, h.tel)
				}
			}
			if h.peer == peer && len(h.tel.Workers) > 0 && h.tel.Workers[0].PID == pid {
				return h
			}
		case <-deadline:
			t.Fatalf("telemetry %d from %s never reached the handler", pid, peer)
		}
	}
}

// telemetryFrom is a valid telemetry message from hive whose only worker has
// the given pid (used to tell messages apart).
func telemetryFrom(hive string, pid uint32) *HiveTelemetry {
	model := "llama-3.2-1b"
	return &HiveTelemetry{
		Type: TypeHiveTelemetry, HiveID: hive, Timestamp: time.Date(2025, 10, 30, 20, 15, 30, 0, time.UTC),
		Workers: []ProcessStats{{PID: pid, Group: "llm", Instance: "8080", RSSMB: 2048, GPUUtilPct: 85.5, VRAMMB: 4096, TotalVRAMMB: 24576, Model: &model}},
	}
}

func send(t *testing.T, s *Session, msg any) {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), testWait)
	defer cancel()
	if err := s.Write(ctx, msg); err != nil {
		t.Fatalf("write %T: %v", msg, err)
	}
}

// closeCodeSeen reads from c until the connection ends and returns the close
// code the peer sent (-1 when it closed without one).
func closeCodeSeen(t *testing.T, read func(context.Context) error) (websocket.StatusCode, error) {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), testWait)
	defer cancel()
	for {
		if err := read(ctx); err != nil {
			if ctx.Err() != nil {
				t.Fatal("connection was never closed")
			}
			return websocket.CloseStatus(err), err
		}
	}
}

func sessionCloseCode(t *testing.T, s *Session) (websocket.StatusCode, error) {
	t.Helper()
	return closeCodeSeen(t, func(ctx context.Context) error { _, err := s.Read(ctx); return err })
}

func connCloseCode(t *testing.T, c *websocket.Conn) (websocket.StatusCode, error) {
	t.Helper()
	return closeCodeSeen(t, func(ctx context.Context) error { _, _, err := c.Read(ctx); return err })
}

func TestSession_HandshakeOpensBothEnds(t *testing.T) {
	key := mustKey(t)
	for _, tt := range []struct {
		name string
		key  Key
	}{
		{"with cluster key", key},
		{"insecure mode", Key{}},
	} {
		t.Run(tt.name, func(t *testing.T) {
			t.Parallel()
			q := startQueen(t, SessionOptions{Key: tt.key, Name: "queen-1", Version: "v1.2.3", Interval: 250 * time.Millisecond})
			hive := q.mustDial(t, SessionOptions{Key: tt.key, Name: "hive-gpu-1", Version: "v9.9.9"})
			qs := q.accepted(t)

			if hive.Peer != "queen-1" || hive.PeerVersion != "v1.2.3" {
				t.Errorf("hive sees peer %q version %q, want queen-1 v1.2.3", hive.Peer, hive.PeerVersion)
			}
			if qs.Peer != "hive-gpu-1" || qs.PeerVersion != "v9.9.9" {
				t.Errorf("queen sees peer %q version %q, want hive-gpu-1 v9.9.9", qs.Peer, qs.PeerVersion)
			}
			if hive.Interval != 250*time.Millisecond || qs.Interval != 250*time.Millisecond {
				t.Errorf("interval: hive %v, queen %v, want 250ms on both", hive.Interval, qs.Interval)
			}

			// The session carries telemetry, field for field.
			want := telemetryFrom("hive-gpu-1", 12345)
			send(t, hive, want)
			got := q.waitTelemetry(t, "hive-gpu-1", 12345)
			wb, _ := Encode(want)
			gb, _ := Encode(got)
			if string(wb) != string(gb) {
				t.Errorf("handler got\n%s\nwant\n%s", gb, wb)
			}
			// And keeps carrying it.
			send(t, hive, telemetryFrom("hive-gpu-1", 2))
			q.waitTelemetry(t, "hive-gpu-1", 2)

			// A normal close from the hive ends the queen's loop with
			// that close status.
			if err := hive.Close(websocket.StatusNormalClosure, "bye"); err != nil {
				t.Errorf("hive Close: %v", err)
			}
			if err := q.waitEnd(t, "hive-gpu-1"); websocket.CloseStatus(err) != websocket.StatusNormalClosure {
				t.Errorf("queen's Serve ended with %v, want normal closure", err)
			}
		})
	}
}

func TestSession_DefaultIntervalIsOneSecond(t *testing.T) {
	q := startQueen(t, SessionOptions{Name: "queen-1"})
	hive := q.mustDial(t, SessionOptions{Name: "hive-1"})
	if hive.Interval != time.Second {
		t.Errorf("interval = %v, want 1s", hive.Interval)
	}
}

func TestSession_KeyMismatchIsRefused(t *testing.T) {
	k1, k2 := mustKey(t), mustKey(t)
	tests := []struct {
		name      string
		queenKey  Key
		hiveKey   Key
		wantText  string // in DialHive's error
		queenSide func(t *testing.T, q *testQueen)
	}{
		{
			name: "hive has another key", queenKey: k1, hiveKey: k2, wantText: "authentication failed",
			queenSide: queenRefusedWithAuth,
		},
		{
			name: "hive has no key", queenKey: k1, hiveKey: Key{}, wantText: "authentication failed",
			queenSide: queenRefusedWithAuth,
		},
		{
			// The hive checks the queen's proof: an impostor queen that
			// does not hold the key gets no telemetry.
			name: "queen has no key", queenKey: Key{}, hiveKey: k1, wantText: "queen does not hold the cluster key",
			queenSide: func(t *testing.T, q *testQueen) {
				q.accepted(t)
				err := q.waitEnd(t, "hive-1")
				if websocket.CloseStatus(err) != CloseAuth {
					t.Errorf("queen's session ended with %v, want the hive's close %v", err, CloseAuth)
				}
			},
		},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			t.Parallel()
			q := startQueen(t, SessionOptions{Key: tt.queenKey, Name: "queen-1"})
			s, err := q.dial(t, SessionOptions{Key: tt.hiveKey, Name: "hive-1"})
			if err == nil {
				t.Fatalf("DialHive opened a session with peer %q", s.Peer)
			}
			if !strings.Contains(err.Error(), "authentication") || !strings.Contains(err.Error(), tt.wantText) {
				t.Errorf("DialHive error %q does not say %q", err, tt.wantText)
			}
			tt.queenSide(t, q)
			select {
			case h := <-q.handled:
				t.Errorf("telemetry reached the handler: %+v", h)
			default:
			}
		})
	}
}

func queenRefusedWithAuth(t *testing.T, q *testQueen) {
	t.Helper()
	err := q.waitRefused(t)
	if !strings.Contains(err.Error(), "wrong cluster key") {
		t.Errorf("AcceptHive error %q does not name the reason", err)
	}
}

func TestSession_HiveSeesAuthCloseCode(t *testing.T) {
	q := startQueen(t, SessionOptions{Key: mustKey(t), Name: "queen-1"})
	_, err := q.dial(t, SessionOptions{Key: mustKey(t), Name: "hive-1"})
	if got := websocket.CloseStatus(err); got != CloseAuth {
		t.Errorf("DialHive error %v carries close status %v, want %v (1008)", err, got, CloseAuth)
	}
}

func TestSession_NotQueenNamesTheQueen(t *testing.T) {
	tests := []struct {
		name, queen, queenHTTP string
		wantText               string
	}{
		{"queen known", "node-b", "10.0.0.2:7070", "not queen: queen is node-b at 10.0.0.2:7070"},
		{"no queen yet", "", "", "no queen elected yet"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
				WriteNotQueen(w, tt.queen, tt.queenHTTP)
			}))
			defer srv.Close()
			ctx, cancel := context.WithTimeout(context.Background(), testWait)
			defer cancel()
			s, err := DialHive(ctx, "ws"+strings.TrimPrefix(srv.URL, "http")+SessionPath, &SessionOptions{Name: "hive-1", HTTPClient: srv.Client()})
			if err == nil {
				s.CloseNow()
				t.Fatal("DialHive opened a session with a node that is not queen")
			}
			var nq *NotQueenError
			if !errors.As(err, &nq) {
				t.Fatalf("error %T %v is not a *NotQueenError", err, err)
			}
			if nq.Queen != tt.queen || nq.QueenHTTP != tt.queenHTTP {
				t.Errorf("NotQueenError names %q at %q, want %q at %q", nq.Queen, nq.QueenHTTP, tt.queen, tt.queenHTTP)
			}
			if !strings.Contains(err.Error(), tt.wantText) {
				t.Errorf("error text %q does not say %q", err, tt.wantText)
			}
		})
	}
}

func TestWriteNotQueen_ResponseShape(t *testing.T) {
	rec := httptest.NewRecorder()
	WriteNotQueen(rec, "node-b", "10.0.0.2:7070")
	if rec.Code != http.StatusMisdirectedRequest {
		t.Errorf("status %d, want 421", rec.Code)
	}
	if ct := rec.Header().Get("Content-Type"); ct != "application/json" {
		t.Errorf("content type %q", ct)
	}
	var body map[string]any
	if err := json.Unmarshal(rec.Body.Bytes(), &body); err != nil {
		t.Fatal(err)
	}
	want := map[string]any{"error": "not queen", "queen": "node-b", "queen_http": "10.0.0.2:7070"}
	if d := jsonDiff("$", want, body); len(d) > 0 {
		t.Errorf("body %s:\n%s", rec.Body, strings.Join(d, "\n"))
	}
}

func TestDialHive_NonSessionEndpointIsAnErrorNotNotQueen(t *testing.T) {
	srv := httptest.NewServer(http.NotFoundHandler())
	defer srv.Close()
	ctx, cancel := context.WithTimeout(context.Background(), testWait)
	defer cancel()
	_, err := DialHive(ctx, "ws"+strings.TrimPrefix(srv.URL, "http")+SessionPath, &SessionOptions{Name: "hive-1", HTTPClient: srv.Client()})
	var nq *NotQueenError
	if err == nil || errors.As(err, &nq) {
		t.Fatalf("DialHive against a 404 = %v, want a dial error", err)
	}
	if !strings.Contains(err.Error(), "dial ws://") {
		t.Errorf("error %q does not say which dial failed", err)
	}
}

// A bad message closes its own session with a code that says what was wrong,
// and a healthy session on the same queen goes on delivering telemetry.
func TestSession_BadMessageClosesOnlyThatSession(t *testing.T) {
	const readLimit = 2048
	seed := func(t *testing.T) string {
		return strings.ReplaceAll(string(readSeed(t, "hive_telemetry.json")), "hive-gpu-1", "hive-bad")
	}
	raw := func(s string) func(context.Context, *Session) error {
		return func(ctx context.Context, b *Session) error { return b.WriteRaw(ctx, []byte(s)) }
	}
	msg := func(m any) func(context.Context, *Session) error {
		return func(ctx context.Context, b *Session) error { return b.Write(ctx, m) }
	}
	badLabel := telemetryFrom("hive-bad", 1)
	badLabel.Workers[0].Group = "llm group"
	tests := []struct {
		name     string
		send     func(t *testing.T) func(context.Context, *Session) error
		wantCode websocket.StatusCode
		wantErr  error // what the queen's Serve error wraps
	}{
		{"malformed JSON", func(*testing.T) func(context.Context, *Session) error { return raw(`{"type":"hive_telemetry",`) }, CloseMalformed, ErrMalformed},
		{"trailing garbage", func(t *testing.T) func(context.Context, *Session) error { return raw(seed(t) + "}") }, CloseMalformed, ErrMalformed},
		{"missing type", func(*testing.T) func(context.Context, *Session) error { return raw(`{"hive_id":"hive-bad"}`) }, CloseMalformed, ErrMalformed},
		{"workers is an object", func(*testing.T) func(context.Context, *Session) error {
			return raw(`{"type":"hive_telemetry","hive_id":"hive-bad","workers":{}}`)
		}, CloseMalformed, ErrMalformed},
		{"pid is a string", func(t *testing.T) func(context.Context, *Session) error {
			return raw(strings.Replace(seed(t), `"pid": 12345`, `"pid": "x"`, 1))
		}, CloseMalformed, ErrMalformed},
		{"pid is negative", func(t *testing.T) func(context.Context, *Session) error {
			return raw(strings.Replace(seed(t), `"pid": 12345`, `"pid": -1`, 1))
		}, CloseMalformed, ErrMalformed},
		{"hive_id of another hive", func(*testing.T) func(context.Context, *Session) error { return msg(telemetryFrom("hive-good", 1)) }, CloseMalformed, ErrInvalid},
		{"bad group label", func(*testing.T) func(context.Context, *Session) error { return msg(badLabel) }, CloseMalformed, ErrInvalid},
		{"frame over the read limit", func(*testing.T) func(context.Context, *Session) error {
			// Over the limit, but one write: the queen stops reading at
			// the limit and closes, which must not turn the hive's own
			// write into a broken pipe before it sees why.
			return raw(`{"type":"hive_telemetry","hive_id":"hive-bad","pad":"` + strings.Repeat("x", readLimit+1000) + `"}`)
		}, CloseTooBig, websocket.ErrMessageTooBig},
		{"binary frame", func(t *testing.T) func(context.Context, *Session) error {
			return func(ctx context.Context, b *Session) error {
				return b.conn.Write(ctx, websocket.MessageBinary, []byte(seed(t)))
			}
		}, CloseMalformed, ErrMalformed},
		{"handshake message after the handshake", func(*testing.T) func(context.Context, *Session) error {
			return msg(Hello{Type: TypeHello, Name: "hive-bad", Protocol: ProtocolVersion})
		}, CloseProtocol, nil},
		{"queen event from a hive", func(*testing.T) func(context.Context, *Session) error { return msg(QueenEvent{Type: TypeQueen}) }, CloseProtocol, nil},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			t.Parallel()
			q := startQueen(t, SessionOptions{Name: "queen-1", ReadLimit: readLimit})
			good := q.mustDial(t, SessionOptions{Name: "hive-good"})
			send(t, good, telemetryFrom("hive-good", 1))
			q.waitTelemetry(t, "hive-good", 1)

			bad := q.mustDial(t, SessionOptions{Name: "hive-bad"})
			// The bad session works until it misbehaves.
			send(t, bad, telemetryFrom("hive-bad", 1))
			q.waitTelemetry(t, "hive-bad", 1)

			ctx, cancel := context.WithTimeout(context.Background(), testWait)
			defer cancel()
			if err := tt.send(t)(ctx, bad); err != nil {
				t.Fatalf("send bad message: %v", err)
			}
			code, err := sessionCloseCode(t, bad)
			if code != tt.wantCode {
				t.Errorf("bad hive saw %v (%v), want close code %v", code, err, tt.wantCode)
			}
			qerr := q.waitEnd(t, "hive-bad")
			if qerr == nil {
				t.Error("queen's Serve returned nil for a bad session")
			} else if tt.wantErr != nil && !errors.Is(qerr, tt.wantErr) {
				t.Errorf("queen's Serve error %q does not wrap %v", qerr, tt.wantErr)
			}

			// The other session is untouched: it keeps delivering, and no
			// telemetry from the bad hive got through after its message.
			for pid := uint32(2); pid < 5; pid++ {
				send(t, good, telemetryFrom("hive-good", pid))
				q.waitTelemetry(t, "hive-good", pid, "hive-bad")
			}
			select {
			case err := <-q.endOf("hive-good"):
				t.Errorf("the good session ended: %v", err)
			default:
			}
		})
	}
}

// A hive that stops reading never answers pings; the queen notices and ends
// the session instead of holding it open.
func TestSession_KeepaliveDropsAPeerThatStopsReading(t *testing.T) {
	t.Parallel()
	q := startQueen(t, SessionOptions{Name: "queen-1", PingInterval: 50 * time.Millisecond, PingTimeout: 50 * time.Millisecond})
	hive := q.mustDial(t, SessionOptions{Name: "hive-1"})
	// The hive writes but never reads, so the queen's pings go unanswered.
	send(t, hive, telemetryFrom("hive-1", 1))
	q.waitTelemetry(t, "hive-1", 1)
	if err := q.waitEnd(t, "hive-1"); err == nil {
		t.Error("Serve returned nil for a dead peer")
	}
}

func TestSession_KeepaliveKeepsAPeerThatReads(t *testing.T) {
	t.Parallel()
	q := startQueen(t, SessionOptions{Name: "queen-1", PingInterval: 20 * time.Millisecond, PingTimeout: 200 * time.Millisecond})
	hive := q.mustDial(t, SessionOptions{Name: "hive-1"})
	ctx, cancel := context.WithCancel(context.Background())
	readDone := make(chan error, 1)
	go func() {
		// Reading answers the queen's pings.
		_, err := hive.Read(ctx)
		readDone <- err
	}()
	defer func() {
		cancel()
		<-readDone
	}()
	// Across many ping intervals the session stays up and delivers.
	for pid := uint32(1); pid <= 10; pid++ {
		send(t, hive, telemetryFrom("hive-1", pid))
		q.waitTelemetry(t, "hive-1", pid)
		select {
		case err := <-q.endOf("hive-1"):
			t.Fatalf("session ended after %d telemetry messages: %v", pid, err)
		case err := <-readDone:
			t.Fatalf("hive's reader ended: %v", err)
		case <-time.After(50 * time.Millisecond): // a few ping intervals
		}
	}
}

func TestKeepalive_StopsWithItsContext(t *testing.T) {
	q := startQueen(t, SessionOptions{Name: "queen-1"})
	hive := q.mustDial(t, SessionOptions{Name: "hive-1", PingInterval: time.Hour})
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- hive.Keepalive(ctx) }()
	cancel()
	select {
	case err := <-done:
		if !errors.Is(err, context.Canceled) {
			t.Errorf("Keepalive returned %v, want context.Canceled", err)
		}
	case <-time.After(testWait):
		t.Fatal("Keepalive ignored its context")
	}
}

func TestSessionOptions_ZeroValuesMeanDefaults(t *testing.T) {
	var nilOpts *SessionOptions
	for _, o := range []SessionOptions{nilOpts.withDefaults(), (&SessionOptions{}).withDefaults()} {
		if o.Interval != time.Second || o.HandshakeTimeout != DefaultHandshakeTimeout || o.ReadLimit != DefaultReadLimit ||
			o.PingInterval != DefaultPingInterval || o.PingTimeout != DefaultPingTimeout || o.WriteTimeout != DefaultWriteTimeout {
			t.Errorf("defaults not applied: %+v", o)
		}
	}
	set := SessionOptions{Interval: 2 * time.Second, ReadLimit: 10, PingInterval: time.Minute}
	got := set.withDefaults()
	if got.Interval != 2*time.Second || got.ReadLimit != 10 || got.PingInterval != time.Minute {
		t.Errorf("explicit values overridden: %+v", got)
	}
	if set.HandshakeTimeout != 0 {
		t.Error("withDefaults modified its receiver")
	}
}

// jsView reads raw the way a case-sensitive JSON parser (a browser's
// JSON.parse, Go's map decoding) does, and lists where it disagrees with the
// telemetry the queen validated.
func jsView(raw []byte, tel *HiveTelemetry) []string {
	if !utf8.Valid(raw) {
		return []string{"relayed bytes are not valid UTF-8 (a browser fails the feed on them)"}
	}
	var m map[string]any
	if err := json.Unmarshal(raw, &m); err != nil {
		return []string{fmt.Sprintf("relayed bytes are not a JSON object: %v", err)}
	}
	var diffs []string
	check := func(path string, got any, want string) {
		if got != want {
			diffs = append(diffs, fmt.Sprintf("%s: feed readers see %#v, the queen validated %q", path, got, want))
		}
	}
	check("type", m["type"], tel.Type)
	check("hive_id", m["hive_id"], tel.HiveID)
	ws, _ := m["workers"].([]any)
	if len(ws) != len(tel.Workers) {
		return append(diffs, fmt.Sprintf("workers: feed readers see %d, the queen validated %d", len(ws), len(tel.Workers)))
	}
	for i, w := range tel.Workers {
		wm, _ := ws[i].(map[string]any)
		check(fmt.Sprintf("workers[%d].group", i), wm["group"], w.Group)
		check(fmt.Sprintf("workers[%d].instance", i), wm["instance"], w.Instance)
		if w.Model == nil {
			if wm["model"] != nil {
				diffs = append(diffs, fmt.Sprintf("workers[%d].model: feed readers see %#v, the queen validated null", i, wm["model"]))
			}
		} else {
			check(fmt.Sprintf("workers[%d].model", i), wm["model"], *w.Model)
		}
	}
	return diffs
}

// Serve hands handle the bytes as received so the queen can relay
// them to the feed. Those bytes must say what was validated: a hive must not
// get past Validate with one value and show feed readers another.
func TestServe_RelayedBytesSayWhatWasValidated(t *testing.T) {
	const ts = `"timestamp":"2025-10-30T20:15:30Z"`
	worker := func(extra string) string {
		return `{"pid":1,"group":"llm","instance":"8080","model":"m"` + extra + `}`
	}
	tests := []struct {
		name string
		raw  string
		// mustAccept: well-formed telemetry that has to reach handle.
		mustAccept bool
	}{
		{"seed telemetry", "", true},
		{"unknown field from a newer hive", `{"type":"hive_telemetry","hive_id":"hive-1",` + ts + `,"workers":[` + worker(`,"kv_cache_pct":12.5`) + `],"rack":"b3"}`, true},
		{"invalid UTF-8 in model", `{"type":"hive_telemetry","hive_id":"hive-1",` + ts + `,"workers":[{"pid":1,"group":"llm","instance":"8080","model":"m` + "\xff\xfe" + `"}]}`, false},
		{"invalid UTF-8 in an unknown field", `{"type":"hive_telemetry","hive_id":"hive-1",` + ts + `,"workers":[],"note":"` + "\xc3" + `"}`, false},
		{"hive_id of another hive behind an upper-case key", `{"type":"hive_telemetry","hive_id":"hive-victim","HIVE_ID":"hive-1",` + ts + `,"workers":[]}`, false},
		{"bad group behind a mixed-case key", `{"type":"hive_telemetry","hive_id":"hive-1",` + ts + `,"workers":[{"pid":1,"group":"<img src=x onerror=alert(1)>","Group":"llm","instance":"8080","model":null}]}`, false},
		{"control characters in model behind a case-variant key", `{"type":"hive_telemetry","hive_id":"hive-1",` + ts + `,"workers":[{"pid":1,"group":"llm","instance":"8080","model":"\u001b[2J\u001b[31mpwned","MODEL":"m"}]}`, false},
		{"worker fields merged from a repeated workers key", `{"type":"hive_telemetry","hive_id":"hive-1",` + ts + `,"workers":[` + worker("") + `],"workers":[{"pid":1}]}`, false},
		{"workers behind a Kelvin-sign key", `{"type":"hive_telemetry","hive_id":"hive-1",` + ts + `,"workers":[{"pid":1,"group":"a b","instance":"8080"}],"wor` + "\u212a" + `ers":[` + worker("") + `]}`, false},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			t.Parallel()
			raw := tt.raw
			if raw == "" {
				raw = strings.ReplaceAll(string(readSeed(t, "hive_telemetry.json")), "hive-gpu-1", "hive-1")
			}
			q := startQueen(t, SessionOptions{Name: "queen-1"})
			hive := q.mustDial(t, SessionOptions{Name: "hive-1"})
			ctx, cancel := context.WithTimeout(context.Background(), testWait)
			defer cancel()
			// The hive reads, so it answers a close at once.
			hiveEnd := make(chan error, 1)
			go func() {
				_, err := hive.Read(ctx)
				hiveEnd <- err
			}()
			defer func() {
				cancel()
				<-hiveEnd
			}()
			if err := hive.WriteRaw(ctx, []byte(raw)); err != nil {
				t.Fatal(err)
			}
			select {
			case h := <-q.handled:
				if string(h.raw) != raw {
					t.Errorf("handle got other bytes than were sent:\n got %q\nsent %q", h.raw, raw)
				}
				if d := jsView(h.raw, h.tel); len(d) > 0 {
					t.Errorf("accepted telemetry that feed readers would read differently:\n%s", strings.Join(d, "\n"))
				}
			case err := <-hiveEnd:
				hiveEnd <- err // for the deferred wait
				if tt.mustAccept {
					t.Fatalf("queen refused well-formed telemetry: %v", err)
				}
				if code := websocket.CloseStatus(err); code != CloseMalformed {
					t.Errorf("hive saw %v (%v), want close code %v", code, err, CloseMalformed)
				}
				qerr := q.waitEnd(t, "hive-1")
				if !errors.Is(qerr, ErrMalformed) && !errors.Is(qerr, ErrInvalid) {
					t.Errorf("refused with %v, want a malformed or invalid message error", qerr)
				}
			case <-time.After(testWait):
				t.Fatal("telemetry neither handled nor refused")
			}
		})
	}
}
