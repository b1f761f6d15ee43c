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
// is counted once however many hops it took; it also reads the answer's
// usage on the way (usage.go), holding back at most the stream event being
// read.
func (p *Proxy) copyResponse(w http.ResponseWriter, r *http.Request, resp *http.Response, model string, start time.Time, entry bool) {
	h := w.Header()
	for k, vs := range resp.Header {
		if hopHeader[k] || strings.HasPrefix(k, "X-Rbee-") {
			continue
		}
		h[k] = vs
	}
	w.WriteHeader(resp.StatusCode)
	var tap *usageTap
	if entry {
		p.metrics.requests.WithLabelValues(keyLabel(r), model, strconv.Itoa(resp.StatusCode)).Inc()
		p.metrics.seen(model)
		tap = newUsageTap(resp, usageOf(r).strip)
		whole := false
		// Deferred, so that an answer that broke off (copyBody's panic)
		// is recorded too.
		defer func() { p.recordUsage(r, model, tap, whole && resp.StatusCode < 400) }()
		whole = p.copyBody(w, r, resp, model, start, tap)
		return
	}
	p.copyBody(w, r, resp, model, start, nil)
}

// copyBody is copyResponse's loop; tap is nil but on the entry node. It
// reports whether the whole answer reached the client.
func (p *Proxy) copyBody(w http.ResponseWriter, r *http.Request, resp *http.Response, model string, start time.Time, tap *usageTap) (whole bool) {
	entry := tap != nil
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
			out := buf[:nr]
			if entry {
				out = tap.feed(out)
			}
			if _, werr := w.Write(out); werr != nil {
				return false // the client went away; closing resp cancels upstream
			}
			if stream {
				_ = rc.Flush()
			}
		}
		if rerr == io.EOF {
			if !entry {
				return true
			}
			// A last event without its blank line, held back by
			// the tap.
			if rest := tap.rest(); len(rest) > 0 {
				if _, werr := w.Write(rest); werr != nil {
					return false
				}
				if stream {
					_ = rc.Flush()
				}
			}
			return true
		}
		if rerr != nil {
			if r.Context().Err() == nil {
				p.log.Warn("upstream broke mid-response", "model", model, "err", rerr)
				if entry {
					p.metrics.broken.WithLabelValues(model).Inc()
				}
				panic(http.ErrAbortHandler)
			}
			return false
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
