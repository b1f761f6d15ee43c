package proxy

import (
	"bytes"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"sync"
	"time"
)

// maxInferenceBody bounds a request body: embeddings of a large batch are the
// biggest legitimate ones.
const maxInferenceBody = 32 << 20

// Defaults for the node-wide bounds on request bodies.
const (
	// DefaultBodyMemory is how many bytes of request bodies a node holds
	// at once, entry and hive together: thousands of chat requests, or
	// eight of the largest embedding batches. Beyond it a request gets a
	// 503 instead of the node growing without bound.
	DefaultBodyMemory = 256 << 20
	// DefaultBodyTimeout bounds reading one body: a 32 MiB body takes 30 s
	// at 1 MB/s; a client trickling slower holds a connection and memory
	// for nothing.
	DefaultBodyTimeout = 60 * time.Second
)

// chunk is how much of a body of unknown length is reserved at a time.
const chunk = 64 << 10

// budget counts the body bytes a node holds.
type budget struct {
	mu    sync.Mutex
	used  int64
	limit int64
}

func (b *budget) take(n int64) bool {
	b.mu.Lock()
	defer b.mu.Unlock()
	if b.used+n > b.limit {
		return false
	}
	b.used += n
	return true
}

func (b *budget) give(n int64) {
	b.mu.Lock()
	b.used -= n
	b.mu.Unlock()
}

// bodyError is why a body could not be read, with the status to answer.
type bodyError struct {
	status int
	typ    string
	msg    string
}

// readBody reads a request body whole, within the node's memory budget and
// the body timeout. The caller must call release once it no longer needs
// the bytes.
func (p *Proxy) readBody(w http.ResponseWriter, r *http.Request) (body []byte, release func(), berr *bodyError) {
	if r.ContentLength > maxInferenceBody {
		return nil, nil, tooLarge()
	}
	rc := http.NewResponseController(w)
	_ = rc.SetReadDeadline(time.Now().Add(p.cfg.BodyTimeout))
	defer func() {
		if berr != nil {
			// The connection is not worth keeping, and the server
			// must not try to read the rest of a body first.
			w.Header().Set("Connection", "close")
			return
		}
		// The deadline must not outlive the body: the server's
		// background read, which notices a client that goes away,
		// would trip on it.
		_ = rc.SetReadDeadline(time.Time{})
	}()
	var held int64
	release = func() { p.bodies.give(held) }
	overloaded := func() *bodyError {
		release()
		return &bodyError{http.StatusServiceUnavailable, "server_overloaded",
			"this node holds as many request bodies as it may; retry shortly or send to another node"}
	}
	rd := http.MaxBytesReader(w, r.Body, maxInferenceBody)
	var buf []byte
	if n := r.ContentLength; n >= 0 {
		if !p.bodies.take(n) {
			return nil, nil, overloaded()
		}
		held = n
		buf = make([]byte, n)
		if _, err := io.ReadFull(rd, buf); err != nil {
			release()
			return nil, nil, readFailed(err)
		}
		return buf, release, nil
	}
	var bb bytes.Buffer
	for {
		if !p.bodies.take(chunk) {
			return nil, nil, overloaded()
		}
		held += chunk
		bb.Grow(chunk)
		_, err := io.CopyN(&bb, rd, chunk)
		if errors.Is(err, io.EOF) {
			// Hand back what the last chunk did not use.
			unused := held - int64(bb.Len())
			p.bodies.give(unused)
			held -= unused
			return bb.Bytes(), release, nil
		}
		if err != nil {
			release()
			return nil, nil, readFailed(err)
		}
	}
}

func tooLarge() *bodyError {
	return &bodyError{http.StatusRequestEntityTooLarge, "invalid_request_error", fmt.Sprintf("body larger than %d bytes", maxInferenceBody)}
}

func readFailed(err error) *bodyError {
	var mbe *http.MaxBytesError
	var ne net.Error
	switch {
	case errors.As(err, &mbe):
		return tooLarge()
	case errors.As(err, &ne) && ne.Timeout():
		return &bodyError{http.StatusRequestTimeout, "request_timeout", "the request body did not arrive in time"}
	}
	return &bodyError{http.StatusBadRequest, "invalid_request_error", "read body: " + err.Error()}
}
