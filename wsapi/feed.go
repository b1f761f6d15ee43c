package wsapi

import (
	"context"
	"errors"
	"fmt"
	"net/http"
	"slices"
	"sync"
	"sync/atomic"
	"time"

	"github.com/coder/websocket"
	jsonv2 "github.com/go-json-experiment/json"
	"github.com/go-json-experiment/json/jsontext"
)

// FeedPath is where every node serves the read-only event feed.
const FeedPath = "/v1/heartbeats/stream"

// DefaultFeedBuffer is how many events a feed reader may lag behind before it
// is dropped: with 1000 hives reporting at 1 Hz that is about 4 s of events,
// room for a GC pause or a slow Wi-Fi hop, not for a reader that stopped.
const DefaultFeedBuffer = 4096

// Hub fans encoded events out to feed readers. Publish never blocks: a reader
// whose buffer is full is dropped, so one slow browser cannot slow the queen.
type Hub struct {
	buf int
	// n mirrors len(subs) so publishers can skip encoding an event nobody
	// will read without taking the lock.
	n atomic.Int64

	mu      sync.Mutex
	subs    map[*Subscriber]struct{}
	changed chan struct{} // closed and replaced when the reader count changes
}

// Subscriber is one feed reader's queue.
type Subscriber struct {
	c       chan []byte
	dropped chan struct{}
	once    sync.Once
}

// C delivers encoded events in publish order.
func (s *Subscriber) C() <-chan []byte { return s.c }

// Dropped is closed when the hub dropped this reader for falling behind.
func (s *Subscriber) Dropped() <-chan struct{} { return s.dropped }

// NewHub returns a hub whose readers may lag by buf events; buf <= 0 means
// DefaultFeedBuffer.
func NewHub(buf int) *Hub {
	if buf <= 0 {
		buf = DefaultFeedBuffer
	}
	return &Hub{buf: buf, subs: make(map[*Subscriber]struct{}), changed: make(chan struct{})}
}

// Subscribe adds a reader. Call Unsubscribe when done.
func (h *Hub) Subscribe() *Subscriber {
	s := &Subscriber{c: make(chan []byte, h.buf), dropped: make(chan struct{})}
	h.mu.Lock()
	h.subs[s] = struct{}{}
	h.notifyLocked()
	h.mu.Unlock()
	return s
}

// Unsubscribe removes a reader; safe to call more than once.
func (h *Hub) Unsubscribe(s *Subscriber) {
	h.mu.Lock()
	if _, ok := h.subs[s]; ok {
		delete(h.subs, s)
		h.notifyLocked()
	}
	h.mu.Unlock()
}

func (h *Hub) notifyLocked() {
	h.n.Store(int64(len(h.subs)))
	close(h.changed)
	h.changed = make(chan struct{})
}

// Readers returns the number of readers and a channel closed when it changes.
func (h *Hub) Readers() (int, <-chan struct{}) {
	h.mu.Lock()
	defer h.mu.Unlock()
	return len(h.subs), h.changed
}

// Active reports whether anyone reads the feed, without locking.
func (h *Hub) Active() bool { return h.n.Load() > 0 }

// Publish queues msg for every reader. msg must not be modified afterwards.
func (h *Hub) Publish(msg []byte) {
	h.mu.Lock()
	defer h.mu.Unlock()
	for s := range h.subs {
		select {
		case s.c <- msg:
		default:
			delete(h.subs, s)
			s.once.Do(func() { close(s.dropped) })
			h.notifyLocked()
		}
	}
}

// DefaultFlushWindow is how long a feed reader's events gather before they
// are written together: short enough that a dashboard fed at 1 Hz shows no
// lag, long enough that 1000 reports a second cost 20 writes, not 1000.
const DefaultFlushWindow = 50 * time.Millisecond

// maxBatch bounds how many events one flush writes.
const maxBatch = 1024

// FeedBatchParam is the query parameter with which a WebSocket reader of
// the feed says it takes several events per message: with batch=1 each
// message is a JSON array of the events of one flush, in order, rather than
// one event. A busy queen then writes each reader 20 messages a second
// instead of a thousand. Without it every message is one event, the seed's
// shape; a node that predates the parameter ignores it, so a reader that
// asks still accepts a bare event.
const FeedBatchParam = "batch"

// maxBatchBytes bounds the events of one batch message (FeedBatchParam);
// an event larger than that goes alone.
const maxBatchBytes = 1 << 20

// FeedEvents returns the events of one feed message: the elements of a
// batch (FeedBatchParam), or the message itself when it is one event.
func FeedEvents(msg []byte) ([][]byte, error) {
	if len(msg) == 0 || msg[0] != '[' {
		return [][]byte{msg}, nil
	}
	var parts []jsontext.Value
	if err := jsonv2.Unmarshal(msg, &parts); err != nil {
		return nil, fmt.Errorf("%w: feed batch: %s", ErrMalformed, jsonErrText(err))
	}
	out := make([][]byte, len(parts))
	for i, p := range parts {
		out[i] = p
	}
	return out, nil
}

// feedReadLimit bounds what a feed reader may send us in one message.
const feedReadLimit = 1 << 10

// FeedOptions tune ServeFeed; zero values mean defaults.
type FeedOptions struct {
	// PingInterval, PingTimeout and WriteTimeout: see SessionOptions.
	// Pings are WebSocket control frames; WriteTimeout bounds one write
	// on either transport.
	PingInterval time.Duration
	PingTimeout  time.Duration
	WriteTimeout time.Duration
	// FlushWindow: see DefaultFlushWindow; negative writes each event at
	// once.
	FlushWindow time.Duration
	// SSEPingInterval: see DefaultSSEPingInterval.
	SSEPingInterval time.Duration
}

// feedConfig is FeedOptions with the defaults filled in.
type feedConfig struct {
	session SessionOptions // ping and write timings
	window  time.Duration
	ssePing time.Duration
}

func (o *FeedOptions) withDefaults() feedConfig {
	c := feedConfig{session: (&SessionOptions{}).withDefaults(), window: DefaultFlushWindow, ssePing: DefaultSSEPingInterval}
	if o == nil {
		return c
	}
	if o.FlushWindow != 0 {
		c.window = o.FlushWindow
	}
	if o.PingInterval > 0 {
		c.session.PingInterval = o.PingInterval
	}
	if o.PingTimeout > 0 {
		c.session.PingTimeout = o.PingTimeout
	}
	if o.WriteTimeout > 0 {
		c.session.WriteTimeout = o.WriteTimeout
	}
	if o.SSEPingInterval > 0 {
		c.ssePing = o.SSEPingInterval
	}
	return c
}

// errFeedTooSlow is what ServeFeed returns for a reader the hub dropped.
var errFeedTooSlow = errors.New("feed reader too slow: dropped")

// ServeFeed streams the hub's events to the reader of r until the reader
// leaves, falls behind, or ctx ends (the node shuts down). A WebSocket is the
// default; a request that asks for text/event-stream and is no WebSocket
// upgrade (see WantsSSE) gets the same events as Server-Sent Events, as the
// seed's dashboard reads them.
func ServeFeed(ctx context.Context, w http.ResponseWriter, r *http.Request, h *Hub, opts *FeedOptions) error {
	cfg := opts.withDefaults()
	if WantsSSE(r) {
		return serveSSE(ctx, w, r, h, cfg)
	}
	so := cfg.session
	// The caller decides who may read (the node checks the token, and the
	// Origin of token-less browsers, before calling ServeFeed), so the
	// library's same-origin check is off: a dashboard on another origin
	// holding the token must work.
	hj := &corkHijacker{ResponseWriter: w}
	conn, err := websocket.Accept(hj, r, &websocket.AcceptOptions{InsecureSkipVerify: true})
	if err != nil {
		return fmt.Errorf("accept feed: %w", err)
	}
	// Readers send only control frames; anything big is abuse.
	conn.SetReadLimit(feedReadLimit)
	sub := h.Subscribe()
	defer h.Unsubscribe(sub)

	// Our own reader rather than conn.CloseRead: CloseRead's goroutine
	// drops the connection the moment its context ends (so a shutdown
	// could not send "going away" first) and deadlocks against Close when a
	// reader sends data. This reader's context ends only after we closed.
	life, cancel := context.WithCancel(context.Background())
	readerGone := make(chan struct{})
	var wg sync.WaitGroup
	wg.Add(2)
	go func() {
		defer wg.Done()
		defer close(readerGone)
		if _, _, err := conn.Read(life); err == nil {
			_ = conn.Close(websocket.StatusPolicyViolation, "the feed is read-only")
		}
	}()
	go func() {
		defer wg.Done()
		_ = keepalive(life, conn, so.PingInterval, so.PingTimeout, nil)
	}()
	defer func() {
		cancel()
		conn.CloseNow()
		wg.Wait()
	}()

	write := func(batch [][]byte) error {
		return writeBatch(life, conn, hj.cc, batch, so.WriteTimeout)
	}
	if r.URL.Query().Get(FeedBatchParam) == "1" {
		var frame []byte
		write = func(batch [][]byte) error {
			ctx, cancel := context.WithTimeout(life, so.WriteTimeout)
			defer cancel()
			for len(batch) > 0 {
				// Each message stays within a reader's usual read
				// limit: a queen event of a large cluster is itself
				// hundreds of kilobytes.
				n, size := 1, len(batch[0])
				for n < len(batch) && size+len(batch[n]) <= maxBatchBytes {
					size += len(batch[n])
					n++
				}
				frame = appendArray(frame[:0], batch[:n])
				if err := conn.Write(ctx, websocket.MessageText, frame); err != nil {
					return err
				}
				batch = batch[n:]
			}
			return nil
		}
	}
	loop := feedLoop{sub: sub, window: cfg.window, gone: readerGone, write: write}
	switch end, err := loop.run(ctx); end {
	case feedShutdown:
		_ = conn.Close(CloseGoingAway, "node shutting down")
		return nil
	case feedReaderGone:
		return nil
	case feedTooSlow:
		_ = conn.Close(CloseTooSlow, "reader too slow: dropped")
		return errFeedTooSlow
	default:
		return fmt.Errorf("write feed: %w", err)
	}
}

// feedEnd says why a feed reader's loop ended.
type feedEnd int

const (
	feedShutdown   feedEnd = iota // ctx ended: the node is shutting down
	feedReaderGone                // the reader left
	feedTooSlow                   // the hub dropped the reader
	feedWriteFailed
)

// feedLoop is what both transports of the feed do for one reader: take the
// hub's events, let them gather for window, and hand them to write in
// batches; with idleEvery set, call idle after that long without a write.
type feedLoop struct {
	sub       *Subscriber
	window    time.Duration
	gone      <-chan struct{}
	write     func(batch [][]byte) error
	idleEvery time.Duration
	idle      func() error
}

// run loops until the reader leaves, falls behind, a write fails or ctx
// ends, and says which; the error is the failed write's.
func (l *feedLoop) run(ctx context.Context) (feedEnd, error) {
	timer := time.NewTimer(0)
	<-timer.C
	defer timer.Stop()
	var idleC <-chan time.Time
	var idleT *time.Timer
	if l.idleEvery > 0 {
		idleT = time.NewTimer(l.idleEvery)
		defer idleT.Stop()
		idleC = idleT.C
	}
	batch := make([][]byte, 0, 64)
	for {
		select {
		case <-ctx.Done():
			return feedShutdown, nil
		case <-l.gone:
			return feedReaderGone, nil
		case <-l.sub.Dropped():
			return feedTooSlow, nil
		case <-idleC:
			if err := l.idle(); err != nil {
				return feedWriteFailed, err
			}
			idleT.Reset(l.idleEvery)
			continue
		case msg := <-l.sub.C():
			batch = append(batch[:0], msg)
		}
		if l.window > 0 {
			timer.Reset(l.window)
			select {
			case <-timer.C:
			case <-ctx.Done():
				continue
			case <-l.gone:
				return feedReaderGone, nil
			}
		}
	drain:
		for len(batch) < maxBatch {
			select {
			case msg := <-l.sub.C():
				batch = append(batch, msg)
			default:
				break drain
			}
		}
		if err := l.write(batch); err != nil {
			return feedWriteFailed, err
		}
		clear(batch)
		if idleT != nil {
			idleT.Reset(l.idleEvery)
		}
	}
}

// writeBatch writes msgs as separate WebSocket messages with, when the
// connection could be corked, one system call.
func writeBatch(ctx context.Context, conn *websocket.Conn, cc *corkConn, msgs [][]byte, timeout time.Duration) error {
	deadline := time.Now().Add(timeout)
	ctx, cancel := context.WithDeadline(ctx, deadline)
	defer cancel()
	if cc != nil {
		cc.cork()
	}
	var err error
	for _, m := range msgs {
		if err = conn.Write(ctx, websocket.MessageText, m); err != nil {
			break
		}
	}
	if cc != nil {
		if uerr := cc.uncork(deadline); err == nil {
			err = uerr
		}
	}
	return err
}

// appendArray appends msgs, each a JSON value, as one JSON array.
func appendArray(b []byte, msgs [][]byte) []byte {
	n := len(b) + len(msgs) + 1
	for _, m := range msgs {
		n += len(m)
	}
	b = slices.Grow(b, n-len(b))
	b = append(b, '[')
	for i, m := range msgs {
		if i > 0 {
			b = append(b, ',')
		}
		b = append(b, m...)
	}
	return append(b, ']')
}
