package wsapi

import (
	"bytes"
	"context"
	"fmt"
	"net"
	"net/http"
	"net/http/httptest"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/coder/websocket"
)

func event(i int) []byte { return fmt.Appendf(nil, `{"type":"queen","workers_online":%d}`, i) }

// recvWithin takes the next event from s or fails the test.
func recvWithin(t *testing.T, s *Subscriber) []byte {
	t.Helper()
	select {
	case b := <-s.C():
		return b
	case <-time.After(testWait):
		t.Fatal("no event")
	}
	return nil
}

func assertNoEvent(t *testing.T, s *Subscriber) {
	t.Helper()
	select {
	case b := <-s.C():
		t.Fatalf("unexpected event %s", b)
	default:
	}
}

func TestHub_PublishReachesEverySubscriberInOrder(t *testing.T) {
	h := NewHub(16)
	subs := []*Subscriber{h.Subscribe(), h.Subscribe(), h.Subscribe()}
	for i := range 10 {
		h.Publish(event(i))
	}
	for n, s := range subs {
		for i := range 10 {
			if got := recvWithin(t, s); string(got) != string(event(i)) {
				t.Fatalf("subscriber %d event %d = %s, want %s", n, i, got, event(i))
			}
		}
		assertNoEvent(t, s)
		select {
		case <-s.Dropped():
			t.Errorf("subscriber %d dropped", n)
		default:
		}
	}
}

func TestHub_PublishWithoutSubscribersIsANoOp(t *testing.T) {
	h := NewHub(1)
	for i := range 5 {
		h.Publish(event(i))
	}
	s := h.Subscribe()
	assertNoEvent(t, s) // nothing from before it subscribed
	h.Publish(event(9))
	if got := recvWithin(t, s); string(got) != string(event(9)) {
		t.Errorf("got %s", got)
	}
}

func TestHub_FullSubscriberIsDroppedOthersGetEverything(t *testing.T) {
	const buf = 4
	h := NewHub(buf)
	slow := h.Subscribe()
	fast := h.Subscribe()
	n, changed := h.Readers()
	if n != 2 {
		t.Fatalf("Readers = %d, want 2", n)
	}
	var got [][]byte
	for i := range 20 {
		h.Publish(event(i)) // never blocks, whoever is full
		got = append(got, recvWithin(t, fast))
		if i < buf {
			select {
			case <-slow.Dropped():
				t.Fatalf("slow reader dropped after %d events with room for %d", i+1, buf)
			default:
			}
		}
	}
	for i, b := range got {
		if string(b) != string(event(i)) {
			t.Fatalf("fast reader event %d = %s, want %s", i, b, event(i))
		}
	}
	select {
	case <-slow.Dropped():
	default:
		t.Fatal("slow reader was not dropped")
	}
	// What the slow reader had queued is still in order; nothing after.
	for i := range buf {
		if b := recvWithin(t, slow); string(b) != string(event(i)) {
			t.Errorf("slow reader event %d = %s, want %s", i, b, event(i))
		}
	}
	assertNoEvent(t, slow)
	select {
	case <-changed:
	default:
		t.Error("dropping a reader did not signal the change")
	}
	if n, _ := h.Readers(); n != 1 {
		t.Errorf("Readers = %d after the drop, want 1", n)
	}
	// Unsubscribing a dropped reader is harmless.
	h.Unsubscribe(slow)
	if n, _ := h.Readers(); n != 1 {
		t.Errorf("Readers = %d, want 1", n)
	}
}

func TestHub_UnsubscribeIsIdempotent(t *testing.T) {
	h := NewHub(4)
	a, b := h.Subscribe(), h.Subscribe()
	h.Unsubscribe(a)
	n, changed := h.Readers()
	if n != 1 {
		t.Fatalf("Readers = %d, want 1", n)
	}
	h.Unsubscribe(a)
	select {
	case <-changed:
		t.Error("a second Unsubscribe signalled a change")
	default:
	}
	if n, _ := h.Readers(); n != 1 {
		t.Errorf("Readers = %d after a second Unsubscribe, want 1", n)
	}
	h.Publish(event(1))
	assertNoEvent(t, a)
	if got := recvWithin(t, b); string(got) != string(event(1)) {
		t.Errorf("remaining reader got %s", got)
	}
	select {
	case <-a.Dropped():
		t.Error("an unsubscribed reader reads as dropped")
	default:
	}
}

func TestHub_ReadersCountsAndSignalsChanges(t *testing.T) {
	h := NewHub(0)
	n, changed := h.Readers()
	if n != 0 || h.Active() {
		t.Fatalf("new hub: Readers = %d, Active = %v", n, h.Active())
	}
	s := h.Subscribe()
	if cap(s.c) != DefaultFeedBuffer {
		t.Errorf("NewHub(0) buffer = %d, want DefaultFeedBuffer", cap(s.c))
	}
	select {
	case <-changed:
	default:
		t.Fatal("Subscribe did not signal")
	}
	n, changed2 := h.Readers()
	if n != 1 || !h.Active() {
		t.Fatalf("after Subscribe: Readers = %d, Active = %v", n, h.Active())
	}
	select {
	case <-changed2:
		t.Fatal("fresh change channel is already closed")
	default:
	}
	h.Unsubscribe(s)
	select {
	case <-changed2:
	default:
		t.Fatal("Unsubscribe did not signal")
	}
	if n, _ := h.Readers(); n != 0 || h.Active() {
		t.Errorf("after Unsubscribe: Readers = %d, Active = %v", n, h.Active())
	}
}

func TestHub_ConcurrentPublishSubscribe(t *testing.T) {
	h := NewHub(8)
	var wg sync.WaitGroup
	for range 4 {
		wg.Go(func() {
			for i := range 200 {
				h.Publish(event(i))
			}
		})
		wg.Go(func() {
			for range 50 {
				s := h.Subscribe()
				h.Publish(event(0))
				h.Unsubscribe(s)
			}
		})
	}
	wg.Wait()
	if n, _ := h.Readers(); n != 0 || h.Active() {
		t.Errorf("Readers = %d, Active = %v after everyone left", n, h.Active())
	}
}

// testFeed serves ServeFeed on loopback.
type testFeed struct {
	srv  *httptest.Server
	url  string
	hub  *Hub
	ends chan error
	stop context.CancelFunc // the node shutting down
	// smallSendBuf shrinks the server's send buffer of connections accepted
	// while it is set, so a reader that stops reading backs up after a few
	// events instead of megabytes.
	smallSendBuf atomic.Bool
}

func startFeed(t *testing.T, hub *Hub, opts *FeedOptions) *testFeed {
	t.Helper()
	ctx, cancel := context.WithCancel(context.Background())
	f := &testFeed{hub: hub, ends: make(chan error, 16), stop: cancel}
	var wg sync.WaitGroup
	f.srv = httptest.NewUnstartedServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		wg.Add(1)
		defer wg.Done()
		f.ends <- ServeFeed(ctx, w, r, hub, opts)
	}))
	f.srv.Listener = shrinkingListener{f.srv.Listener, &f.smallSendBuf}
	f.srv.Start()
	f.url = "ws" + strings.TrimPrefix(f.srv.URL, "http") + FeedPath
	t.Cleanup(func() {
		cancel()
		wg.Wait()
		f.srv.Close()
	})
	return f
}

type shrinkingListener struct {
	net.Listener
	on *atomic.Bool
}

func (l shrinkingListener) Accept() (net.Conn, error) {
	c, err := l.Listener.Accept()
	if tc, ok := c.(*net.TCPConn); ok && l.on.Load() {
		_ = tc.SetWriteBuffer(4096)
	}
	return c, err
}

// dial connects a feed reader and waits until the hub counts it.
func (f *testFeed) dial(t *testing.T) *websocket.Conn {
	t.Helper()
	before, _ := f.hub.Readers()
	ctx, cancel := context.WithTimeout(context.Background(), testWait)
	defer cancel()
	c, _, err := websocket.Dial(ctx, f.url, &websocket.DialOptions{HTTPClient: f.srv.Client()})
	if err != nil {
		t.Fatalf("dial feed: %v", err)
	}
	c.SetReadLimit(-1)
	t.Cleanup(func() { c.CloseNow() })
	waitReaders(t, f.hub, before+1)
	return c
}

// waitReaders waits until the hub counts n readers.
func waitReaders(t *testing.T, h *Hub, n int) {
	t.Helper()
	deadline := time.After(testWait)
	for {
		got, changed := h.Readers()
		if got == n {
			return
		}
		select {
		case <-changed:
		case <-deadline:
			t.Fatalf("hub has %d readers, want %d", got, n)
		}
	}
}

// reader reads feed events off c in the background.
type reader struct {
	events chan []byte
	err    chan error
}

func startReader(t *testing.T, c *websocket.Conn) *reader {
	t.Helper()
	r := &reader{events: make(chan []byte, 1024), err: make(chan error, 1)}
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan struct{})
	go func() {
		defer close(done)
		for {
			typ, b, err := c.Read(ctx)
			if err != nil {
				r.err <- err
				return
			}
			if typ != websocket.MessageText {
				r.err <- fmt.Errorf("feed sent a %v frame", typ)
				return
			}
			r.events <- b
		}
	}()
	t.Cleanup(func() {
		cancel()
		<-done
	})
	return r
}

func (r *reader) next(t *testing.T) []byte {
	t.Helper()
	select {
	case b := <-r.events:
		return b
	case err := <-r.err:
		t.Fatalf("feed reader ended: %v", err)
	case <-time.After(testWait):
		t.Fatal("no feed event")
	}
	return nil
}

func TestServeFeed_ReadersReceivePublishedEventsInOrder(t *testing.T) {
	f := startFeed(t, NewHub(64), nil)
	readersGetAllInOrder(t, f, startReader(t, f.dial(t)), startReader(t, f.dial(t)))
}

// readersGetAllInOrder publishes 30 events and checks that every reader
// gets them all, in order.
func readersGetAllInOrder(t *testing.T, f *testFeed, readers ...*reader) {
	t.Helper()
	for i := range 30 {
		f.hub.Publish(event(i))
	}
	for n, r := range readers {
		for i := range 30 {
			if got := r.next(t); string(got) != string(event(i)) {
				t.Fatalf("reader %d event %d = %s, want %s", n, i, got, event(i))
			}
		}
	}
}

// A reader that asks for batches gets every event, in order, in arrays of
// several; a reader beside it that did not ask gets one event a message.
func TestServeFeed_BatchReaderGetsArraysOfEvents(t *testing.T) {
	f := startFeed(t, NewHub(64), &FeedOptions{FlushWindow: 50 * time.Millisecond})
	plain := startReader(t, f.dial(t))
	f.url += "?" + FeedBatchParam + "=1"
	batched := startReader(t, f.dial(t))
	const n = 30
	for i := range n {
		f.hub.Publish(event(i))
	}
	for i := range n {
		if got := plain.next(t); string(got) != string(event(i)) {
			t.Fatalf("plain reader event %d = %s, want %s", i, got, event(i))
		}
	}
	var got []string
	frames := 0
	for len(got) < n {
		b := batched.next(t)
		if b[0] != '[' {
			t.Fatalf("batch reader got %s, not an array", b)
		}
		batch, err := FeedEvents(b)
		if err != nil {
			t.Fatalf("batch reader got %s: %v", b, err)
		}
		frames++
		for _, e := range batch {
			got = append(got, string(e))
		}
	}
	for i := range n {
		if got[i] != string(event(i)) {
			t.Fatalf("batch reader event %d = %s, want %s", i, got[i], event(i))
		}
	}
	// All 30 were published within one flush window of the first.
	if frames >= n/2 {
		t.Errorf("%d events came in %d messages: not batched", n, frames)
	}
}

// Large events are batched a megabyte at a time, one larger than that
// alone, so a reader's read limit need not grow with the batch.
func TestServeFeed_BatchesStayNearAMegabyte(t *testing.T) {
	f := startFeed(t, NewHub(64), &FeedOptions{FlushWindow: 50 * time.Millisecond})
	f.url += "?" + FeedBatchParam + "=1"
	r := startReader(t, f.dial(t))
	big := func(i, size int) []byte {
		return []byte(fmt.Sprintf(`{"i":%d,"pad":"%s"}`, i, strings.Repeat("x", size)))
	}
	sizes := []int{400 << 10, 400 << 10, 400 << 10, 1500 << 10, 10}
	for i, n := range sizes {
		f.hub.Publish(big(i, n))
	}
	var got int
	for got < len(sizes) {
		b := r.next(t)
		evs, err := FeedEvents(b)
		if err != nil {
			t.Fatal(err)
		}
		if len(b) > maxBatchBytes+2 && len(evs) > 1 {
			t.Errorf("a message of %d bytes holds %d events", len(b), len(evs))
		}
		for _, ev := range evs {
			if want := big(got, sizes[got]); !bytes.Equal(ev, want) {
				t.Fatalf("event %d is %d bytes, want %d", got, len(ev), len(want))
			}
			got++
		}
	}
}

func TestServeFeed_SeedEventsArriveUnchanged(t *testing.T) {
	f := startFeed(t, NewHub(8), nil)
	r := startReader(t, f.dial(t))
	for _, name := range []string{"hive_telemetry.json", "queen.json"} {
		seed := readSeed(t, name)
		f.hub.Publish(seed)
		if got := r.next(t); string(got) != string(seed) {
			t.Errorf("%s arrived as %s", name, got)
		}
	}
}

// A reader that stops reading fills its socket, then its hub buffer, and is
// dropped with CloseTooSlow; a reader beside it gets every event.
func TestServeFeed_StalledReaderIsDroppedOthersContinue(t *testing.T) {
	const buf = 4
	f := startFeed(t, NewHub(buf), nil)
	fast := startReader(t, f.dial(t))
	f.smallSendBuf.Store(true)
	stalled := f.dial(t) // never read until it is dropped

	sent := publishUntilDropped(t, f, fast, buf)

	// The stalled reader, reading again, finds a gap-free prefix of the
	// events and then the close code that says why.
	ctx, cancel := context.WithTimeout(context.Background(), testWait)
	defer cancel()
	var got int
	for {
		_, b, err := stalled.Read(ctx)
		if err != nil {
			if code := websocket.CloseStatus(err); code != CloseTooSlow {
				t.Fatalf("stalled reader ended with %v (code %v), want %v", err, code, CloseTooSlow)
			}
			break
		}
		if string(b) != string(bigEvent(got)) {
			t.Fatalf("stalled reader event %d: got %.40s", got, b)
		}
		got++
	}
	if got >= sent {
		t.Errorf("stalled reader got all %d events; it was not behind", sent)
	}
	f.expectEnd(t, "too slow")
	publishRound(t, f, fast, sent, buf) // the fast reader keeps getting everything
}

// bigEvent is a feed event large enough that a stalled reader's socket fills
// after a few.
func bigEvent(i int) []byte {
	return fmt.Appendf(nil, `{"type":"queen","seq":%d,"pad":"%s"}`, i, strings.Repeat("x", 64<<10))
}

// publishRound publishes bigEvent from .. from+n-1 and checks that fast
// reads them all.
func publishRound(t *testing.T, f *testFeed, fast *reader, from, n int) {
	t.Helper()
	for i := from; i < from+n; i++ {
		f.hub.Publish(bigEvent(i))
	}
	for i := from; i < from+n; i++ {
		if got := fast.next(t); string(got) != string(bigEvent(i)) {
			t.Fatalf("fast reader event %d: got %.40s", i, got)
		}
	}
}

// publishUntilDropped publishes a hub buffer's worth of events at a time,
// all taken by the fast reader before the next round, until the hub gives up
// on the one other reader, which stalled; it returns how many it published.
func publishUntilDropped(t *testing.T, f *testFeed, fast *reader, buf int) int {
	t.Helper()
	sent := 0
	for {
		if n, _ := f.hub.Readers(); n == 1 {
			return sent
		}
		if sent >= 2000 {
			t.Fatal("the stalled reader was never dropped")
		}
		publishRound(t, f, fast, sent, buf)
		sent += buf
	}
}

// expectEnd waits for a ServeFeed to return: nil when want is "", else an
// error that says want.
func (f *testFeed) expectEnd(t *testing.T, want string) {
	t.Helper()
	select {
	case err := <-f.ends:
		if (want == "" && err != nil) || (want != "" && (err == nil || !strings.Contains(err.Error(), want))) {
			t.Errorf("ServeFeed returned %v, want %q", err, want)
		}
	case <-time.After(testWait):
		t.Fatal("ServeFeed never returned")
	}
}

func TestServeFeed_ReaderLeavingUnsubscribes(t *testing.T) {
	f := startFeed(t, NewHub(8), nil)
	c := f.dial(t)
	if err := c.Close(websocket.StatusNormalClosure, "bye"); err != nil {
		t.Fatalf("Close: %v", err)
	}
	waitReaders(t, f.hub, 0)
	f.expectEnd(t, "")
}

func TestServeFeed_ReaderSendingDataIsClosed(t *testing.T) {
	f := startFeed(t, NewHub(8), nil)
	c := f.dial(t)
	writeRaw(t, c, websocket.MessageText, []byte(`{"type":"hello"}`))
	if code, err := connCloseCode(t, c); code != websocket.StatusPolicyViolation {
		t.Errorf("reader saw %v (%v), want %v: the feed is read-only", code, err, websocket.StatusPolicyViolation)
	}
	waitReaders(t, f.hub, 0)
	f.expectEnd(t, "")
}

func TestServeFeed_NodeShutdownSaysGoingAway(t *testing.T) {
	f := startFeed(t, NewHub(8), nil)
	c := f.dial(t)
	f.stop()
	if code, err := connCloseCode(t, c); code != CloseGoingAway {
		t.Errorf("reader saw %v (%v), want %v so it redials another node", code, err, CloseGoingAway)
	}
	waitReaders(t, f.hub, 0)
}

func TestServeFeed_KeepaliveDropsAReaderThatStopsReading(t *testing.T) {
	t.Parallel()
	f := startFeed(t, NewHub(8), &FeedOptions{PingInterval: 50 * time.Millisecond, PingTimeout: 50 * time.Millisecond})
	f.dial(t) // never reads, so never answers a ping
	select {
	case <-f.ends:
	case <-time.After(testWait):
		t.Fatal("ServeFeed kept a reader that answers no pings")
	}
	waitReaders(t, f.hub, 0)
}

func TestServeFeed_NonWebSocketRequestIsRefused(t *testing.T) {
	f := startFeed(t, NewHub(8), nil)
	resp, err := f.srv.Client().Get(f.srv.URL + FeedPath)
	if err != nil {
		t.Fatal(err)
	}
	resp.Body.Close()
	if resp.StatusCode < 400 {
		t.Errorf("plain GET got %s", resp.Status)
	}
	f.expectEnd(t, "accept feed")
	if n, _ := f.hub.Readers(); n != 0 {
		t.Errorf("a refused request subscribed: %d readers", n)
	}
}
