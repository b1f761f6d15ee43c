package wsapi

import (
	"context"
	"errors"
	"fmt"
	"net/http"
	"net/http/httptest"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/coder/websocket"
)

// handshakeDial opens a raw WebSocket to the queen and reads its challenge,
// so a test can answer it by hand.
func handshakeDial(t *testing.T, q *testQueen) (*websocket.Conn, *Challenge) {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), testWait)
	defer cancel()
	c, _, err := websocket.Dial(ctx, q.url, &websocket.DialOptions{HTTPClient: q.srv.Client()})
	if err != nil {
		t.Fatalf("dial: %v", err)
	}
	t.Cleanup(func() { c.CloseNow() })
	typ, b, err := c.Read(ctx)
	if err != nil {
		t.Fatalf("read challenge: %v", err)
	}
	msg, err := Decode(b)
	if err != nil || typ != websocket.MessageText {
		t.Fatalf("challenge: %v (type %v)", err, typ)
	}
	ch, ok := msg.(*Challenge)
	if !ok {
		t.Fatalf("first message is %T, want *Challenge", msg)
	}
	if ch.Queen != q.opts.Name || ch.Protocol != ProtocolVersion || len(ch.Nonce) != 32 {
		t.Fatalf("challenge %+v", ch)
	}
	return c, ch
}

func writeRaw(t *testing.T, c *websocket.Conn, typ websocket.MessageType, b []byte) {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), testWait)
	defer cancel()
	if err := c.Write(ctx, typ, b); err != nil {
		t.Fatalf("write: %v", err)
	}
}

func encode(t *testing.T, msg any) []byte {
	t.Helper()
	b, err := Encode(msg)
	if err != nil {
		t.Fatal(err)
	}
	return b
}

func TestSession_HandshakeByHandFollowsTheProtocol(t *testing.T) {
	key := mustKey(t)
	q := startQueen(t, SessionOptions{Key: key, Name: "queen-1", Version: "v1", Interval: 300 * time.Millisecond})
	c, ch := handshakeDial(t, q)
	nonce := "0123456789abcdef"
	writeRaw(t, c, websocket.MessageText, encode(t, Hello{
		Type: TypeHello, Name: "hive-1", Version: "v2", Protocol: ProtocolVersion, Nonce: nonce,
		Proof: key.proof("hive", ch.Nonce, nonce, "hive-1"),
	}))
	ctx, cancel := context.WithTimeout(context.Background(), testWait)
	defer cancel()
	_, b, err := c.Read(ctx)
	if err != nil {
		t.Fatalf("read welcome: %v", err)
	}
	msg, err := Decode(b)
	if err != nil {
		t.Fatal(err)
	}
	w, ok := msg.(*Welcome)
	if !ok {
		t.Fatalf("got %T, want *Welcome", msg)
	}
	if w.IntervalMS != 300 {
		t.Errorf("interval_ms = %d, want 300", w.IntervalMS)
	}
	if !key.checkProof(w.Proof, "queen", ch.Nonce, nonce, "hive-1") {
		t.Error("welcome proof does not verify")
	}
	if key.checkProof(w.Proof, "hive", ch.Nonce, nonce, "hive-1") {
		t.Error("queen's proof is also a valid hive proof: it could be reflected")
	}
	if s := q.accepted(t); s.Peer != "hive-1" || s.PeerVersion != "v2" {
		t.Errorf("queen's session peer %q version %q", s.Peer, s.PeerVersion)
	}
	writeRaw(t, c, websocket.MessageText, encode(t, telemetryFrom("hive-1", 77)))
	q.waitTelemetry(t, "hive-1", 77)
}

func TestSession_HandshakeMisbehaviourIsRefused(t *testing.T) {
	key := mustKey(t)
	hello := func(mutate func(h *Hello, ch *Challenge)) func(*Challenge) (websocket.MessageType, []byte) {
		return func(ch *Challenge) (websocket.MessageType, []byte) {
			h := Hello{Type: TypeHello, Name: "hive-1", Protocol: ProtocolVersion, Nonce: "abcd"}
			mutate(&h, ch)
			if h.Proof == "" {
				h.Proof = key.proof("hive", ch.Nonce, h.Nonce, h.Name)
			}
			b, _ := Encode(h)
			return websocket.MessageText, b
		}
	}
	text := func(s string) func(*Challenge) (websocket.MessageType, []byte) {
		return func(*Challenge) (websocket.MessageType, []byte) { return websocket.MessageText, []byte(s) }
	}
	tests := []struct {
		name     string
		answer   func(*Challenge) (websocket.MessageType, []byte)
		wantCode websocket.StatusCode
		wantText string // in AcceptHive's error
	}{
		{"telemetry before hello", text(`{"type":"hive_telemetry","hive_id":"hive-1"}`), CloseProtocol, "expected hello"},
		{"malformed hello", text(`{"type":"hello","name":`), CloseMalformed, "malformed"},
		{"unknown type", text(`{"type":"helo"}`), CloseUnknownType, "unknown message type"},
		{"binary hello", func(ch *Challenge) (websocket.MessageType, []byte) {
			_, b := hello(func(*Hello, *Challenge) {})(ch)
			return websocket.MessageBinary, b
		}, CloseMalformed, "binary"},
		{"hello over the handshake limit", text(`{"type":"hello","name":"` + strings.Repeat("n", handshakeReadLimit+1) + `"}`), CloseTooBig, "message too big"},
		{"other protocol version", hello(func(h *Hello, _ *Challenge) { h.Protocol = ProtocolVersion + 1 }), CloseProtocol, "protocol 2"},
		{"empty name", hello(func(h *Hello, _ *Challenge) { h.Name = "" }), CloseMalformed, "empty name"},
		{"name with a space", hello(func(h *Hello, _ *Challenge) { h.Name = "hive 1" }), CloseMalformed, "name"},
		{"name too long", hello(func(h *Hello, _ *Challenge) { h.Name = strings.Repeat("h", MaxNameLen+1) }), CloseMalformed, "longer than"},
		{"nonce too long", hello(func(h *Hello, _ *Challenge) { h.Nonce = strings.Repeat("a", 2*maxNonceBytes+1) }), CloseMalformed, "nonce too long"},
		{"garbage proof", hello(func(h *Hello, _ *Challenge) { h.Proof = "00" }), CloseAuth, "authentication failed"},
		{"proof for another name", hello(func(h *Hello, ch *Challenge) { h.Proof = key.proof("hive", ch.Nonce, h.Nonce, "hive-2") }), CloseAuth, "authentication failed"},
		{"proof for another challenge", hello(func(h *Hello, _ *Challenge) { h.Proof = key.proof("hive", newNonce(), h.Nonce, h.Name) }), CloseAuth, "authentication failed"},
		{"queen's proof reflected", hello(func(h *Hello, ch *Challenge) { h.Proof = key.proof("queen", ch.Nonce, h.Nonce, h.Name) }), CloseAuth, "authentication failed"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			t.Parallel()
			q := startQueen(t, SessionOptions{Key: key, Name: "queen-1"})
			c, ch := handshakeDial(t, q)
			typ, b := tt.answer(ch)
			writeRaw(t, c, typ, b)
			code, err := connCloseCode(t, c)
			if code != tt.wantCode {
				t.Errorf("client saw %v (%v), want close code %v", code, err, tt.wantCode)
			}
			qerr := q.waitRefused(t)
			if !strings.Contains(qerr.Error(), tt.wantText) {
				t.Errorf("AcceptHive error %q does not mention %q", qerr, tt.wantText)
			}
		})
	}
}

func TestSession_SilentHiveTimesOutInHandshake(t *testing.T) {
	q := startQueen(t, SessionOptions{Name: "queen-1", HandshakeTimeout: 100 * time.Millisecond})
	c, _ := handshakeDial(t, q)
	err := q.waitRefused(t)
	if !errors.Is(err, context.DeadlineExceeded) {
		t.Errorf("AcceptHive error %v, want a deadline", err)
	}
	if _, err := connCloseCode(t, c); err == nil {
		t.Error("the silent hive's connection is still open")
	}
}

// fakeQueen answers a hive's dial with whatever play does, then reports the
// close code the hive sent back.
func fakeQueen(t *testing.T, play func(ctx context.Context, c *websocket.Conn) error) (url string, hc *http.Client, hiveClose chan error) {
	t.Helper()
	hiveClose = make(chan error, 1)
	var wg sync.WaitGroup
	srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		wg.Add(1)
		defer wg.Done()
		c, err := websocket.Accept(w, r, nil)
		if err != nil {
			hiveClose <- err
			return
		}
		defer c.CloseNow()
		ctx, cancel := context.WithTimeout(r.Context(), testWait)
		defer cancel()
		if err := play(ctx, c); err != nil {
			hiveClose <- fmt.Errorf("fake queen: %w", err)
			return
		}
		for {
			if _, _, err := c.Read(ctx); err != nil {
				hiveClose <- err
				return
			}
		}
	}))
	t.Cleanup(func() {
		wg.Wait()
		srv.Close()
	})
	return "ws" + strings.TrimPrefix(srv.URL, "http") + SessionPath, srv.Client(), hiveClose
}

func TestDialHive_RefusesAMisbehavingQueen(t *testing.T) {
	key := mustKey(t)
	challenge := func(protocol int) []byte {
		b, _ := Encode(Challenge{Type: TypeChallenge, Nonce: "feed", Queen: "queen-x", Version: "v0", Protocol: protocol})
		return b
	}
	// afterHello sends a valid challenge, reads the hello, and answers with
	// what reply makes of it.
	afterHello := func(reply func(h *Hello) []byte) func(context.Context, *websocket.Conn) error {
		return func(ctx context.Context, c *websocket.Conn) error {
			if err := c.Write(ctx, websocket.MessageText, challenge(ProtocolVersion)); err != nil {
				return err
			}
			_, b, err := c.Read(ctx)
			if err != nil {
				return err
			}
			msg, err := Decode(b)
			if err != nil {
				return err
			}
			h, ok := msg.(*Hello)
			if !ok {
				return fmt.Errorf("got %T, want hello", msg)
			}
			return c.Write(ctx, websocket.MessageText, reply(h))
		}
	}
	first := func(b []byte) func(context.Context, *websocket.Conn) error {
		return func(ctx context.Context, c *websocket.Conn) error { return c.Write(ctx, websocket.MessageText, b) }
	}
	welcome := func(proof func(h *Hello) string) func(h *Hello) []byte {
		return func(h *Hello) []byte {
			b, _ := Encode(Welcome{Type: TypeWelcome, Proof: proof(h), IntervalMS: 1000})
			return b
		}
	}
	tests := []struct {
		name     string
		play     func(context.Context, *websocket.Conn) error
		wantCode websocket.StatusCode
		wantText string
	}{
		{"malformed first message", first([]byte(`{"type":`)), CloseMalformed, "malformed"},
		{"unknown first message", first([]byte(`{"type":"greeting"}`)), CloseUnknownType, "unknown message type"},
		{"welcome before challenge", first([]byte(`{"type":"welcome","interval_ms":1}`)), CloseProtocol, "expected challenge"},
		{"other protocol version", first(challenge(ProtocolVersion + 1)), CloseProtocol, "queen speaks protocol 2"},
		{"challenge instead of welcome", afterHello(func(*Hello) []byte { return challenge(ProtocolVersion) }), CloseProtocol, "expected welcome"},
		{"welcome without proof", afterHello(welcome(func(*Hello) string { return "" })), CloseAuth, "queen does not hold the cluster key"},
		{"welcome proof from another key", afterHello(welcome(func(h *Hello) string {
			return mustKey(t).proof("queen", "feed", h.Nonce, h.Name)
		})), CloseAuth, "queen does not hold the cluster key"},
		{"hive's own proof reflected", afterHello(welcome(func(h *Hello) string { return h.Proof })), CloseAuth, "queen does not hold the cluster key"},
		{"welcome over the handshake limit", afterHello(func(*Hello) []byte {
			return []byte(`{"type":"welcome","proof":"` + strings.Repeat("0", handshakeReadLimit) + `"}`)
		}), CloseTooBig, "message too big"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			t.Parallel()
			url, hc, hiveClose := fakeQueen(t, tt.play)
			ctx, cancel := context.WithTimeout(context.Background(), testWait)
			defer cancel()
			s, err := DialHive(ctx, url, &SessionOptions{Key: key, Name: "hive-1", HTTPClient: hc})
			if err == nil {
				s.CloseNow()
				t.Fatal("DialHive accepted a misbehaving queen")
			}
			if !strings.Contains(err.Error(), tt.wantText) {
				t.Errorf("DialHive error %q does not mention %q", err, tt.wantText)
			}
			select {
			case err := <-hiveClose:
				if got := websocket.CloseStatus(err); got != tt.wantCode {
					t.Errorf("queen saw %v (%v), want close code %v", got, err, tt.wantCode)
				}
			case <-time.After(testWait):
				t.Fatal("the hive never closed the connection")
			}
		})
	}
}

func TestDialHive_SilentQueenTimesOut(t *testing.T) {
	url, hc, hiveClose := fakeQueen(t, func(ctx context.Context, c *websocket.Conn) error { return nil })
	_, err := DialHive(context.Background(), url, &SessionOptions{Name: "hive-1", HTTPClient: hc, HandshakeTimeout: 100 * time.Millisecond})
	if !errors.Is(err, context.DeadlineExceeded) {
		t.Errorf("DialHive error %v, want a deadline", err)
	}
	select {
	case <-hiveClose:
	case <-time.After(testWait):
		t.Fatal("the hive never dropped the connection")
	}
}

func TestDialHive_WelcomeIntervalIsAdopted(t *testing.T) {
	for _, tt := range []struct {
		intervalMS int
		want       time.Duration
	}{
		{250, 250 * time.Millisecond},
		{0, time.Second},
		{-5, time.Second},
	} {
		t.Run(fmt.Sprint(tt.intervalMS), func(t *testing.T) {
			url, hc, hiveClose := fakeQueen(t, func(ctx context.Context, c *websocket.Conn) error {
				b, _ := Encode(Challenge{Type: TypeChallenge, Nonce: "n", Queen: "queen-x", Protocol: ProtocolVersion})
				if err := c.Write(ctx, websocket.MessageText, b); err != nil {
					return err
				}
				if _, _, err := c.Read(ctx); err != nil {
					return err
				}
				b, _ = Encode(Welcome{Type: TypeWelcome, IntervalMS: tt.intervalMS})
				return c.Write(ctx, websocket.MessageText, b)
			})
			ctx, cancel := context.WithTimeout(context.Background(), testWait)
			defer cancel()
			s, err := DialHive(ctx, url, &SessionOptions{Name: "hive-1", HTTPClient: hc})
			if err != nil {
				t.Fatalf("DialHive: %v", err)
			}
			if s.Interval != tt.want || s.Peer != "queen-x" {
				t.Errorf("interval %v peer %q, want %v queen-x", s.Interval, s.Peer, tt.want)
			}
			if err := s.Close(websocket.StatusNormalClosure, "done"); err != nil {
				t.Errorf("Close: %v", err)
			}
			if err := <-hiveClose; websocket.CloseStatus(err) != websocket.StatusNormalClosure {
				t.Errorf("queen saw %v", err)
			}
		})
	}
}
