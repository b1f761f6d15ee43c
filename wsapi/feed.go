package wsapi

import (
	"context"
	"errors"
	"fmt"
	"net/http"
	"sync"
	"sync/atomic"
	"time"

	"github.com/coder/websocket"
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

// feedReadLimit bounds what a feed reader may send us in one message.
const feedReadLimit = 1 << 10

// FeedOptions tune ServeFeed; zero values mean defaults.
type FeedOptions struct {
	PingInterval time.Duration
	PingTimeout  time.Duration
	WriteTimeout time.Duration
	// FlushWindow: see DefaultFlushWindow; negative writes each event at
	// once.
	FlushWindow time.Duration
}

// ServeFeed upgrades r and streams the hub's events to the reader until the
// reader leaves, falls behind, or ctx ends (the node shuts down).
func ServeFeed(ctx context.Context, w http.ResponseWriter, r *http.Request, h *Hub, opts *FeedOptions) error {
	so := (&SessionOptions{}).withDefaults()
	window := DefaultFlushWindow
	if opts != nil {
		if opts.FlushWindow != 0 {
			window = opts.FlushWindow
		}
		if opts.PingInterval > 0 {
			so.PingInterval = opts.PingInterval
		}
		if opts.PingTimeout > 0 {
			so.PingTimeout = opts.PingTimeout
		}
		if opts.WriteTimeout > 0 {
			so.WriteTimeout = opts.WriteTimeout
		}
	}
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

	timer := time.NewTimer(0)
	<-timer.C
	defer timer.Stop()
	batch := make([][]byte, 0, 64)
	for {
		select {
		case <-ctx.Done():
			_ = conn.Close(CloseGoingAway, "node shutting down")
			return nil
		case <-readerGone:
			return nil
		case <-sub.Dropped():
			_ = conn.Close(CloseTooSlow, "reader too slow: dropped")
			return errors.New("feed reader too slow: dropped")
		case msg := <-sub.C():
			batch = append(batch[:0], msg)
		}
		if window > 0 {
			timer.Reset(window)
			select {
			case <-timer.C:
			case <-ctx.Done():
				continue
			case <-readerGone:
				return nil
			}
		}
	drain:
		for len(batch) < maxBatch {
			select {
			case msg := <-sub.C():
				batch = append(batch, msg)
			default:
				break drain
			}
		}
		if err := writeBatch(life, conn, hj.cc, batch, so.WriteTimeout); err != nil {
			return fmt.Errorf("write feed: %w", err)
		}
		clear(batch)
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
