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

// FeedOptions tune ServeFeed; zero values mean defaults.
type FeedOptions struct {
	PingInterval time.Duration
	PingTimeout  time.Duration
	WriteTimeout time.Duration
}

// ServeFeed upgrades r and streams the hub's events to the reader until the
// reader leaves, falls behind, or ctx ends (the node shuts down).
func ServeFeed(ctx context.Context, w http.ResponseWriter, r *http.Request, h *Hub, opts *FeedOptions) error {
	so := (&SessionOptions{}).withDefaults()
	if opts != nil {
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
	// Browsers send an Origin header; the feed is read-only and already
	// behind the cluster token for remote callers, so any page may read it.
	conn, err := websocket.Accept(w, r, &websocket.AcceptOptions{InsecureSkipVerify: true})
	if err != nil {
		return fmt.Errorf("accept feed: %w", err)
	}
	sub := h.Subscribe()
	defer h.Unsubscribe(sub)

	// Readers send nothing; CloseRead handles their close frame and pongs.
	nodeCtx := ctx
	ctx = conn.CloseRead(ctx)
	ctx, cancel := context.WithCancel(ctx)
	done := make(chan struct{})
	go func() {
		defer close(done)
		_ = keepalive(ctx, conn, so.PingInterval, so.PingTimeout)
	}()
	defer func() {
		cancel()
		<-done
	}()

	for {
		select {
		case <-ctx.Done():
			if nodeCtx.Err() != nil {
				_ = conn.Close(CloseGoingAway, "node shutting down")
			}
			conn.CloseNow()
			return nil
		case <-sub.Dropped():
			_ = conn.Close(CloseTooSlow, "reader too slow: dropped")
			return errors.New("feed reader too slow: dropped")
		case msg := <-sub.C():
			wctx, wcancel := context.WithTimeout(ctx, so.WriteTimeout)
			err := conn.Write(wctx, websocket.MessageText, msg)
			wcancel()
			if err != nil {
				conn.CloseNow()
				return fmt.Errorf("write feed: %w", err)
			}
		}
	}
}
