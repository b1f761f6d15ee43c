package proxy

import (
	"io"
	"net/http"
	"strconv"
	"strings"
	"sync"
	"time"
)

// copyResponse copies a response to the client as it arrives, flushing each
// read of an event stream so that server-sent events reach the client one by
// one. A source that breaks mid-way (the worker or hive died) aborts the
// client's connection, so the client sees an error, never a silently
// truncated answer.
//
// Only the entry node (entry) counts the request in its metrics, so a request
// is counted once however many hops it took.
func (p *Proxy) copyResponse(w http.ResponseWriter, r *http.Request, resp *http.Response, model string, start time.Time, entry bool) {
	h := w.Header()
	for k, vs := range resp.Header {
		if hopHeader[k] || strings.HasPrefix(k, "X-Rbee-") {
			continue
		}
		h[k] = vs
	}
	w.WriteHeader(resp.StatusCode)
	if entry {
		p.metrics.requests.WithLabelValues(keyLabel(r), model, strconv.Itoa(resp.StatusCode)).Inc()
		p.metrics.seen(model)
	}
	// Only event streams are flushed per read: a JSON answer goes out in
	// as few writes as the server can manage, often one with the headers.
	stream := strings.HasPrefix(resp.Header.Get("Content-Type"), "text/event-stream")
	rc := http.NewResponseController(w)
	bufp := copyBufs.Get().(*[]byte)
	defer copyBufs.Put(bufp)
	buf := *bufp
	first := true
	for {
		nr, rerr := resp.Body.Read(buf)
		if nr > 0 {
			if first && entry {
				p.metrics.ttfb.WithLabelValues(model).Observe(time.Since(start).Seconds())
				first = false
			}
			if _, werr := w.Write(buf[:nr]); werr != nil {
				return // the client went away; closing resp cancels upstream
			}
			if stream {
				_ = rc.Flush()
			}
		}
		if rerr == io.EOF {
			return
		}
		if rerr != nil {
			if r.Context().Err() == nil {
				p.log.Warn("upstream broke mid-response", "model", model, "err", rerr)
				if entry {
					p.metrics.broken.WithLabelValues(model).Inc()
				}
				panic(http.ErrAbortHandler)
			}
			return
		}
	}
}

var copyBufs = sync.Pool{New: func() any { b := make([]byte, 32<<10); return &b }}

// hopHeader lists the hop-by-hop headers a proxy must not forward (RFC 9110
// 7.6.1).
var hopHeader = map[string]bool{
	"Connection": true, "Proxy-Connection": true, "Keep-Alive": true, "Proxy-Authenticate": true,
	"Proxy-Authorization": true, "Te": true, "Trailer": true, "Transfer-Encoding": true, "Upgrade": true,
}

// copyRequestHeaders passes on what a worker may care about, and not the
// client's credentials, which are rbee's business. A multipart form keeps
// its Content-Type, boundary and all; any other body was parsed as JSON, so
// it goes on labelled as JSON whatever the client said (curl -d says form
// data).
func copyRequestHeaders(dst, src http.Header) {
	for _, k := range []string{"Accept", "Accept-Language", "User-Agent", "X-Request-Id", "Openai-Organization"} {
		if v := src.Values(k); len(v) > 0 {
			dst[k] = v
		}
	}
	dst.Set("Content-Type", requestContentType(src))
}
