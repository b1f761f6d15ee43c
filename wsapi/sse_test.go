package wsapi

import (
	"bufio"
	"context"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"strings"
	"testing"
	"time"
)

func TestWantsSSE(t *testing.T) {
	for _, tc := range []struct {
		name    string
		accept  []string
		upgrade string
		want    bool
	}{
		{"EventSource", []string{"text/event-stream"}, "", true},
		{"among others, with parameters", []string{"application/json;q=0.9, Text/Event-Stream; charset=utf-8"}, "", true},
		{"second Accept header", []string{"application/json", "text/event-stream"}, "", true},
		{"refused with q=0", []string{"text/event-stream;q=0"}, "", false},
		{"no Accept", nil, "", false},
		{"anything", []string{"*/*"}, "", false},
		{"WebSocket upgrade wins", []string{"text/event-stream"}, "websocket", false},
		{"WebSocket upgrade in other case", []string{"text/event-stream"}, "WebSocket", false},
	} {
		t.Run(tc.name, func(t *testing.T) {
			r, _ := http.NewRequest(http.MethodGet, "http://x"+FeedPath, nil)
			for _, a := range tc.accept {
				r.Header.Add("Accept", a)
			}
			if tc.upgrade != "" {
				r.Header.Set("Connection", "Upgrade")
				r.Header.Set("Upgrade", tc.upgrade)
			}
			if got := WantsSSE(r); got != tc.want {
				t.Errorf("WantsSSE = %v, want %v", got, tc.want)
			}
		})
	}
}

func TestAppendSSE_OneDataLinePerLine(t *testing.T) {
	for _, tc := range []struct{ msg, want string }{
		{`{"type":"queen"}`, "data: {\"type\":\"queen\"}\n\n"},
		{"", "data: \n\n"},
		{"a\nb", "data: a\ndata: b\n\n"},
		{"a\r\nb\rc\n", "data: a\ndata: b\ndata: c\ndata: \n\n"},
	} {
		if got := string(appendSSE([]byte("x"), []byte(tc.msg))); got != "x"+tc.want {
			t.Errorf("appendSSE(%q) = %q, want %q", tc.msg, got, "x"+tc.want)
		}
	}
}

// sseEvent is one message read off an SSE stream: its data (lines joined
// with "\n", as EventSource joins them), the raw text, and any field other
// than data (there should be none).
type sseEvent struct {
	data, raw string
	other     []string
	comment   bool // a comment-only block (a keep-alive)
}

// readSSE reads the next message or comment block.
func readSSE(br *bufio.Reader) (sseEvent, error) {
	var ev sseEvent
	var data []string
	for {
		line, err := br.ReadString('\n')
		if err != nil {
			return ev, err
		}
		ev.raw += line
		line = strings.TrimSuffix(line, "\n")
		switch {
		case line == "":
			if len(data) == 0 && len(ev.other) == 0 {
				ev.comment = true
			}
			ev.data = strings.Join(data, "\n")
			return ev, nil
		case strings.HasPrefix(line, ":"):
		case strings.HasPrefix(line, "data:"):
			data = append(data, strings.TrimPrefix(strings.TrimPrefix(line, "data:"), " "))
		default:
			ev.other = append(ev.other, line)
		}
	}
}

// sseGet opens the feed of f as SSE and waits until the hub counts it.
func (f *testFeed) sseGet(t *testing.T, ctx context.Context) *http.Response {
	t.Helper()
	before, _ := f.hub.Readers()
	req, err := http.NewRequestWithContext(ctx, http.MethodGet, f.srv.URL+FeedPath, nil)
	if err != nil {
		t.Fatal(err)
	}
	req.Header.Set("Accept", "text/event-stream")
	resp, err := f.srv.Client().Do(req)
	if err != nil {
		t.Fatalf("GET feed as SSE: %v", err)
	}
	t.Cleanup(func() { resp.Body.Close() })
	if resp.StatusCode != http.StatusOK || resp.Header.Get("Content-Type") != "text/event-stream" {
		t.Fatalf("GET feed as SSE: %s, Content-Type %q", resp.Status, resp.Header.Get("Content-Type"))
	}
	waitReaders(t, f.hub, before+1)
	return resp
}

// sseEvents reads messages off body in the background, keep-alives left out.
func sseEvents(t *testing.T, body io.Reader) *reader {
	t.Helper()
	r := &reader{events: make(chan []byte, 1024), err: make(chan error, 1)}
	go func() {
		br := bufio.NewReader(body)
		for {
			ev, err := readSSE(br)
			if err != nil {
				r.err <- err
				return
			}
			if len(ev.other) > 0 {
				r.err <- fmt.Errorf("SSE fields other than data: %q", ev.other)
				return
			}
			if !ev.comment {
				r.events <- []byte(ev.data)
			}
		}
	}()
	return r
}

// The seed's events arrive as unnamed SSE messages, one data line each (a
// seed file's own line breaks become data lines that join back to it), and
// decode as the seed shapes.
func TestServeFeedSSE_SeedFraming(t *testing.T) {
	f := startFeed(t, NewHub(16), nil)
	br := bufio.NewReader(f.sseGet(t, context.Background()).Body)

	compact := event(7)
	f.hub.Publish(compact)
	ev, err := readSSE(br)
	if err != nil {
		t.Fatal(err)
	}
	if want := "data: " + string(compact) + "\n\n"; ev.raw != want {
		t.Fatalf("event framed as %q, want %q", ev.raw, want)
	}
	for _, name := range []string{"hive_telemetry.json", "queen.json"} {
		seed := readSeed(t, name)
		f.hub.Publish(seed)
		ev, err := readSSE(br)
		if err != nil {
			t.Fatal(err)
		}
		if ev.comment || len(ev.other) > 0 || ev.data != strings.ReplaceAll(string(seed), "\r\n", "\n") {
			t.Fatalf("%s arrived as %q", name, ev.raw)
		}
		msg, err := Decode([]byte(ev.data))
		if err != nil {
			t.Fatalf("%s: decode the SSE data: %v", name, err)
		}
		if _, ok := msg.(*HiveTelemetry); !ok && name == "hive_telemetry.json" {
			t.Errorf("%s decoded as %T", name, msg)
		}
	}
}

func TestServeFeedSSE_ReadersReceivePublishedEventsInOrder(t *testing.T) {
	f := startFeed(t, NewHub(64), nil)
	readersGetAllInOrder(t, f, sseEvents(t, f.sseGet(t, context.Background()).Body), sseEvents(t, f.sseGet(t, context.Background()).Body))
}

func TestServeFeedSSE_IdleFeedSendsPingComments(t *testing.T) {
	f := startFeed(t, NewHub(8), &FeedOptions{SSEPingInterval: 20 * time.Millisecond})
	br := bufio.NewReader(f.sseGet(t, context.Background()).Body)
	for range 2 {
		ev, err := readSSE(br)
		if err != nil {
			t.Fatal(err)
		}
		if ev.raw != ": ping\n\n" {
			t.Fatalf("idle feed sent %q, want the keep-alive comment", ev.raw)
		}
	}
}

// A reader that stops reading fills its socket, then its hub buffer, and is
// dropped: its response ends after a gap-free prefix of the events, and a
// reader beside it gets every event.
func TestServeFeedSSE_StalledReaderIsDroppedOthersContinue(t *testing.T) {
	const buf = 4
	f := startFeed(t, NewHub(buf), nil)
	fast := sseEvents(t, f.sseGet(t, context.Background()).Body)

	f.smallSendBuf.Store(true)
	conn, err := net.Dial("tcp", f.srv.Listener.Addr().String())
	if err != nil {
		t.Fatal(err)
	}
	defer conn.Close()
	before, _ := f.hub.Readers()
	if _, err := fmt.Fprintf(conn, "GET %s HTTP/1.1\r\nHost: x\r\nAccept: text/event-stream\r\n\r\n", FeedPath); err != nil {
		t.Fatal(err)
	}
	waitReaders(t, f.hub, before+1) // then never read until it is dropped

	sent := publishUntilDropped(t, f, fast, buf)

	// The stalled reader, reading again, finds a gap-free prefix of the
	// events, then the end of the response.
	_ = conn.SetReadDeadline(time.Now().Add(testWait))
	cbr := bufio.NewReader(conn)
	resp, err := http.ReadResponse(cbr, nil)
	if err != nil {
		t.Fatal(err)
	}
	body := bufio.NewReader(resp.Body)
	var got int
	for {
		e, err := readSSE(body)
		if errors.Is(err, io.EOF) {
			break
		}
		if err != nil {
			t.Fatalf("stalled reader: %v after %d events, want the response to end", err, got)
		}
		if e.comment {
			continue
		}
		if e.data != string(bigEvent(got)) {
			t.Fatalf("stalled reader event %d: got %.40s", got, e.data)
		}
		got++
	}
	if got >= sent {
		t.Errorf("stalled reader got all %d events; it was not behind", sent)
	}
	f.expectEnd(t, "too slow")
	publishRound(t, f, fast, sent, buf) // the fast reader keeps getting everything
}

func TestServeFeedSSE_ReaderLeavingUnsubscribes(t *testing.T) {
	f := startFeed(t, NewHub(8), nil)
	ctx, cancel := context.WithCancel(context.Background())
	f.sseGet(t, ctx)
	cancel()
	waitReaders(t, f.hub, 0)
	f.expectEnd(t, "")
}

func TestServeFeedSSE_NodeShutdownEndsTheResponse(t *testing.T) {
	f := startFeed(t, NewHub(8), nil)
	resp := f.sseGet(t, context.Background())
	f.stop()
	if _, err := io.Copy(io.Discard, resp.Body); err != nil {
		t.Errorf("response ended with %v, want a clean end", err)
	}
	waitReaders(t, f.hub, 0)
	if err := <-f.ends; err != nil {
		t.Errorf("ServeFeed returned %v", err)
	}
}
