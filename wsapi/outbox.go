package wsapi

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"sync"

	jsonv2 "github.com/go-json-experiment/json"
	"github.com/go-json-experiment/json/jsontext"
)

// Batches: lease traffic is many small messages (a request, a grant, a
// release per inference request). An Outbox writes whatever has queued up
// since its last write as one frame holding a JSON array of messages, so at
// a thousand requests a second a session makes a few writes, not thousands.
// A lone message goes out as itself.

// MaxBatch bounds the messages in one frame.
const MaxBatch = 256

// ErrOutboxFull is returned by Put when the peer is not keeping up.
var ErrOutboxFull = errors.New("outbox full: peer not reading")

// Outbox queues encoded messages for one session. Send writes in the
// caller's goroutine when no write is under way (no hand-off, the lowest
// latency for a lone request) and otherwise leaves the message to the writer
// already at work; Put only queues, for Run's goroutine to write (for callers
// that must not block on this peer). Either way a writer drains everything
// queued before it stops, in batches.
type Outbox struct {
	s     *Session
	limit int
	kick  chan struct{}

	mu      sync.Mutex
	q       [][]byte
	writing bool
	err     error // the first write error; the session is broken
}

// DefaultOutboxQueue bounds the lease messages queued for one peer, in either
// direction (a node's requests and releases for the queen, the queen's answers
// for a node): a peer that lets this many pile up is not reading, and its
// session is dropped.
const DefaultOutboxQueue = 4096

// NewOutbox returns an outbox for s holding up to n messages.
func NewOutbox(s *Session, n int) *Outbox {
	return &Outbox{s: s, limit: n, kick: make(chan struct{}, 1)}
}

// Put queues one encoded message without blocking; Run writes it.
func (o *Outbox) Put(msg []byte) error {
	o.mu.Lock()
	defer o.mu.Unlock()
	if o.err != nil {
		return o.err
	}
	if len(o.q) >= o.limit {
		return ErrOutboxFull
	}
	o.q = append(o.q, msg)
	if !o.writing {
		select {
		case o.kick <- struct{}{}:
		default:
		}
	}
	return nil
}

// Send writes msg now, in this goroutine, unless another write is under way;
// then it queues msg for that writer. It blocks at most the session's write
// timeout (per batch it ends up writing).
func (o *Outbox) Send(ctx context.Context, msg []byte) error {
	o.mu.Lock()
	if o.err != nil {
		defer o.mu.Unlock()
		return o.err
	}
	if o.writing || len(o.q) > 0 {
		defer o.mu.Unlock()
		if len(o.q) >= o.limit {
			return ErrOutboxFull
		}
		o.q = append(o.q, msg)
		return nil
	}
	o.writing = true
	o.mu.Unlock()
	if err := o.s.WriteRaw(ctx, msg); err != nil {
		o.fail(err)
		return err
	}
	return o.drain(ctx)
}

// Run writes what Put queues until ctx ends or a write fails.
func (o *Outbox) Run(ctx context.Context) error {
	for {
		select {
		case <-ctx.Done():
			return ctx.Err()
		case <-o.kick:
		}
		o.mu.Lock()
		if o.err != nil {
			defer o.mu.Unlock()
			return o.err
		}
		if o.writing {
			// A Send is writing; it drains the queue before it stops.
			o.mu.Unlock()
			continue
		}
		o.writing = true
		o.mu.Unlock()
		if err := o.drain(ctx); err != nil {
			return err
		}
	}
}

// drain writes the queue in batches until it is empty, then gives up the
// writer's role. The caller holds the role.
func (o *Outbox) drain(ctx context.Context) error {
	var frame bytes.Buffer
	for {
		o.mu.Lock()
		if len(o.q) == 0 {
			o.writing = false
			o.mu.Unlock()
			return nil
		}
		n := min(len(o.q), MaxBatch)
		batch := o.q[:n:n]
		o.q = o.q[n:]
		if len(o.q) == 0 {
			o.q = nil
		}
		o.mu.Unlock()
		out := batch[0]
		if n > 1 {
			frame.Reset()
			frame.WriteByte('[')
			for i, b := range batch {
				if i > 0 {
					frame.WriteByte(',')
				}
				frame.Write(b)
			}
			frame.WriteByte(']')
			out = frame.Bytes()
		}
		if err := o.s.WriteRaw(ctx, out); err != nil {
			o.fail(err)
			return err
		}
	}
}

func (o *Outbox) fail(err error) {
	o.mu.Lock()
	if o.err == nil {
		o.err = fmt.Errorf("write: %w", err)
	}
	o.writing = false
	o.q = nil
	o.mu.Unlock()
}

// splitBatch returns the messages of a batch frame (a JSON array), each as
// sent, or the frame itself when it is a single message.
func splitBatch(frame []byte) ([][]byte, error) {
	if len(frame) == 0 || frame[0] != '[' {
		return [][]byte{frame}, nil
	}
	var parts []jsontext.Value
	if err := jsonv2.Unmarshal(frame, &parts); err != nil {
		return nil, fmt.Errorf("%w: batch: %s", ErrMalformed, jsonErrText(err))
	}
	if len(parts) == 0 || len(parts) > MaxBatch {
		return nil, fmt.Errorf("%w: batch of %d messages, want 1 to %d", ErrMalformed, len(parts), MaxBatch)
	}
	out := make([][]byte, len(parts))
	for i, p := range parts {
		out[i] = []byte(p)
	}
	return out, nil
}
