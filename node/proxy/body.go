package proxy

import (
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
	// DefaultBodyMinRate is the slowest a body may arrive once its grace
	// (bodyGrace) has passed: a 1 Mbit/s uplink sends eight times as
	// fast; a client that sends a byte a second is cut after 5 s instead
	// of holding its connection and memory for the whole body timeout.
	DefaultBodyMinRate = 16 << 10
)

// bodyGrace is what a body gets before the minimum rate counts (round trips
// and TCP's slow start on a far link): a twelfth of the body timeout, 5 s of
// the default 60 s; an operator who shortens the timeout expects bodies
// that come at once.
func bodyGrace(timeout time.Duration) time.Duration { return timeout / 12 }

// chunk is the least a body's buffer grows by: the most a client that has
// sent nothing yet holds.
const chunk = 64 << 10

// share is how much of the budget one API key, or one remote address, may
// hold: a quarter, and never less than one body of the largest size, so that
// a client alone on the node can still send one.
func share(limit int64) int64 { return min(limit, max(limit/4, maxInferenceBody)) }

// holder is who a body's bytes are counted against besides the node: its
// API key's tenant and its remote address; "" for neither (the cluster
// token, loopback, another node forwarding what it already admitted).
type holder struct {
	key, addr string
}

// budget counts the body bytes a node holds, in all and by holder.
type budget struct {
	mu     sync.Mutex
	used   int64
	limit  int64
	share  int64
	byKey  map[string]int64
	byAddr map[string]int64
}

func newBudget(limit int64) *budget {
	return &budget{limit: limit, share: share(limit), byKey: map[string]int64{}, byAddr: map[string]int64{}}
}

// Which bound a refused reservation hit.
const (
	overNode = "node"
	overKey  = "key"
	overAddr = "address"
)

// take reserves n bytes for h, or says which bound it would pass.
func (b *budget) take(h holder, n int64) (over string) {
	b.mu.Lock()
	defer b.mu.Unlock()
	switch {
	case h.key != "" && b.byKey[h.key]+n > b.share:
		return overKey
	case h.addr != "" && b.byAddr[h.addr]+n > b.share:
		return overAddr
	case b.used+n > b.limit:
		return overNode
	}
	b.used += n
	if h.key != "" {
		b.byKey[h.key] += n
	}
	if h.addr != "" {
		b.byAddr[h.addr] += n
	}
	return ""
}

func (b *budget) give(h holder, n int64) {
	b.mu.Lock()
	defer b.mu.Unlock()
	b.used -= n
	for _, c := range []struct {
		m map[string]int64
		k string
	}{{b.byKey, h.key}, {b.byAddr, h.addr}} {
		if c.k == "" {
			continue
		}
		if c.m[c.k] -= n; c.m[c.k] <= 0 {
			delete(c.m, c.k)
		}
	}
}

// bodyError is why a body could not be read, with the status to answer.
type bodyError struct {
	status int
	typ    string
	msg    string
}

// bodyHolder is who r's body counts against: its tenant, and its address
// unless it comes from this machine (a reverse proxy in front of the node
// carries every client's requests).
func bodyHolder(r *http.Request) holder {
	var h holder
	if t := tenantOf(r); t != nil {
		h.key = t.Name
	}
	if host, _, err := net.SplitHostPort(r.RemoteAddr); err == nil {
		if ip := net.ParseIP(host); ip != nil && !ip.IsLoopback() {
			h.addr = ip.String()
		}
	}
	return h
}

// readBody reads a request body whole, within the node's memory budget (and
// h's share of it), the body timeout and the minimum rate. Memory is
// reserved as the body arrives, never from its declared length, so a client
// that declares 32 MiB and sends a byte a second holds one chunk. The caller
// must call release once it no longer needs the bytes.
func (p *Proxy) readBody(w http.ResponseWriter, r *http.Request, h holder) (body []byte, release func(), berr *bodyError) {
	want := r.ContentLength
	if want > maxInferenceBody {
		return nil, nil, tooLarge()
	}
	rc := http.NewResponseController(w)
	start := time.Now()
	end := start.Add(p.cfg.BodyTimeout)
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
	release = func() { p.bodies.give(h, held) }
	fail := func(e *bodyError) ([]byte, func(), *bodyError) {
		release()
		return nil, nil, e
	}
	rd := http.MaxBytesReader(w, r.Body, maxInferenceBody)
	var buf []byte
	for want < 0 || int64(len(buf)) < want {
		if len(buf) == cap(buf) {
			// Grow by doubling, to the declared length at most: what
			// is reserved is what is allocated.
			grow := int64(max(cap(buf), chunk))
			if want >= 0 {
				grow = min(grow, want-int64(cap(buf)))
			} else {
				grow = min(grow, maxInferenceBody+1-int64(cap(buf)))
			}
			if over := p.bodies.take(h, grow); over != "" {
				return fail(p.overBudget(over, h))
			}
			held += grow
			nb := make([]byte, len(buf), int64(cap(buf))+grow)
			copy(nb, buf)
			buf = nb
		}
		// The deadline moves with what arrived: the grace, then one
		// second per BodyMinRate bytes, within the body timeout.
		dl := start.Add(bodyGrace(p.cfg.BodyTimeout) + time.Duration(float64(len(buf))/float64(p.cfg.BodyMinRate)*float64(time.Second)))
		rateBound := dl.Before(end)
		if !rateBound {
			dl = end
		}
		_ = rc.SetReadDeadline(dl)
		n, err := rd.Read(buf[len(buf):cap(buf)])
		buf = buf[:len(buf)+n]
		if errors.Is(err, io.EOF) {
			if want >= 0 && int64(len(buf)) < want {
				return fail(readFailed(io.ErrUnexpectedEOF, false, 0))
			}
			break
		}
		if err != nil {
			return fail(readFailed(err, rateBound, p.cfg.BodyMinRate))
		}
	}
	return buf, release, nil
}

// overBudget is the answer when a body would pass a bound: the node's (503,
// try another node) or the client's own share (429, wait for your other
// requests).
func (p *Proxy) overBudget(over string, h holder) *bodyError {
	switch over {
	case overKey:
		return &bodyError{http.StatusTooManyRequests, "rate_limit_exceeded",
			fmt.Sprintf("key %s holds its share of this node's request-body memory (%d MiB) in bodies still arriving or being served; retry when one ends", h.key, p.bodies.share>>20)}
	case overAddr:
		return &bodyError{http.StatusTooManyRequests, "rate_limit_exceeded",
			fmt.Sprintf("your address holds its share of this node's request-body memory (%d MiB) in bodies still arriving or being served; retry when one ends", p.bodies.share>>20)}
	}
	return &bodyError{http.StatusServiceUnavailable, "server_overloaded",
		"this node holds as many request bodies as it may; retry shortly or send to another node"}
}

func tooLarge() *bodyError {
	return &bodyError{http.StatusRequestEntityTooLarge, "invalid_request_error", fmt.Sprintf("body larger than %d bytes", maxInferenceBody)}
}

// readFailed is the answer to a body that could not be read; rateBound says
// the deadline that passed was the minimum rate's, not the body timeout's.
func readFailed(err error, rateBound bool, minRate int64) *bodyError {
	var mbe *http.MaxBytesError
	var ne net.Error
	switch {
	case errors.As(err, &mbe):
		return tooLarge()
	case errors.As(err, &ne) && ne.Timeout() && rateBound:
		return &bodyError{http.StatusRequestTimeout, "request_timeout",
			fmt.Sprintf("the request body arrived slower than %d KiB/s", max(minRate>>10, 1))}
	case errors.As(err, &ne) && ne.Timeout():
		return &bodyError{http.StatusRequestTimeout, "request_timeout", "the request body did not arrive in time"}
	}
	return &bodyError{http.StatusBadRequest, "invalid_request_error", "read body: " + err.Error()}
}
