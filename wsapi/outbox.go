package wsapi

import (
	"bytes"
	"context"
	"errors"
	"fmt"

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

// Outbox queues encoded messages for one session.
type Outbox struct {
	c chan []byte
}

// NewOutbox returns an outbox holding up to n messages.
func NewOutbox(n int) *Outbox { return &Outbox{c: make(chan []byte, n)} }

// Put queues one encoded message without blocking.
func (o *Outbox) Put(msg []byte) error {
	select {
	case o.c <- msg:
		return nil
	default:
		return ErrOutboxFull
	}
}

// Run writes queued messages to s until ctx ends or a write fails.
func (o *Outbox) Run(ctx context.Context, s *Session) error {
	var frame bytes.Buffer
	for {
		var first []byte
		select {
		case <-ctx.Done():
			return ctx.Err()
		case first = <-o.c:
		}
		out := first
		if len(o.c) > 0 {
			frame.Reset()
			frame.WriteByte('[')
			frame.Write(first)
			for n := 1; n < MaxBatch && len(o.c) > 0; n++ {
				frame.WriteByte(',')
				frame.Write(<-o.c)
			}
			frame.WriteByte(']')
			out = frame.Bytes()
		}
		if err := s.WriteRaw(ctx, out); err != nil {
			return fmt.Errorf("write: %w", err)
		}
	}
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
