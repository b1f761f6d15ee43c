package proxy

import (
	"fmt"
	"io"
	"net/http"
	"strconv"
	"strings"
	"sync"
	"time"

	"github.com/rbee/rbee/wsapi"
)

// outcome is what became of one worker's answer to a request.
type outcome int

const (
	// outcomeDone: the answer ended, whole or not (the client went
	// away); nothing more is tried.
	outcomeDone outcome = iota
	// outcomeRetry: the worker did not take the request and nothing of
	// its answer reached the client: another worker may.
	outcomeRetry
	// outcomeBroken: the answer broke off mid-way; a migratable stream
	// is continued on another worker (migrate.go).
	outcomeBroken
)

// reply is the entry node's side of one client request across the workers
// that serve it: whether the client has had its headers, the usage read on
// the way, and the stream's migration record.
type reply struct {
	w       http.ResponseWriter // the client's
	started bool                // the client has had the first answer's headers
	whole   bool                // the answer reached the client whole
	status  int
	model   string
	tap     *usageTap
	strip   bool
	mig     *migration // nil: the answer is not migrated
	// why the current answer broke off, for the migration's report.
	broke string
	// migrated counts the continuations; report is the one in progress
	// (its figures are complete once the continuation's first text
	// reaches the client).
	migrated int
	report   *pendingMigration
	// Where the next lease must not go (the workers that broke off, the
	// hives this node could not reach), and hives it should rather not.
	avoid     []wsapi.Placement
	elsewhere []string
}

// copyResponse copies a response to the client as it arrives, flushing each
// read of an event stream so that server-sent events reach the client one by
// one. On a hive (rp nil) an answer that breaks mid-way aborts the
// connection, so that the entry node sees it broke; on the entry node the
// outcome says what became of it.
//
// Only the entry node counts the request in its metrics, so a request is
// counted once however many hops it took; it also reads the answer's usage
// on the way (usage.go), holding back at most the stream event being read.
func (p *Proxy) copyResponse(w http.ResponseWriter, r *http.Request, resp *http.Response, model string, start time.Time, rp *reply) outcome {
	if rp == nil {
		copyHeaders(w.Header(), resp.Header)
		w.WriteHeader(resp.StatusCode)
		if p.copyBody(w, r, resp, model, start, nil) == outcomeBroken {
			panic(http.ErrAbortHandler)
		}
		return outcomeDone
	}
	stream := strings.HasPrefix(resp.Header.Get("Content-Type"), "text/event-stream")
	if rp.started {
		// A continuation: the client has its headers, and gets the
		// answer only if it continues the stream.
		if resp.StatusCode != http.StatusOK || !stream {
			b, _ := io.ReadAll(io.LimitReader(resp.Body, 4<<10))
			if resp.StatusCode == http.StatusServiceUnavailable && resp.Header.Get(hdrRetry) != "" {
				return outcomeRetry
			}
			rp.mig.stop(fmt.Sprintf("the continuation was refused (%d %s)", resp.StatusCode, TruncateText(strings.TrimSpace(string(b)), 300)))
			return outcomeBroken
		}
		rp.tap.restart()
		return p.copyBody(w, r, resp, model, start, rp)
	}
	rp.started, rp.status, rp.model = true, resp.StatusCode, model
	copyHeaders(w.Header(), resp.Header)
	w.WriteHeader(resp.StatusCode)
	p.metrics.requests.WithLabelValues(keyLabel(r), model, strconv.Itoa(resp.StatusCode)).Inc()
	p.metrics.seen(model)
	rp.tap = newUsageTap(resp, rp.strip)
	if rp.mig != nil {
		if rp.tap.off || !rp.tap.stream {
			rp.mig.stop("the answer is not an event stream")
		} else {
			rp.tap.mig = rp.mig
		}
	}
	return p.copyBody(w, r, resp, model, start, rp)
}

func copyHeaders(h, from http.Header) {
	for k, vs := range from {
		// The request id stays the entry node's (a worker may name
		// its own).
		if hopHeader[k] || strings.HasPrefix(k, "X-Rbee-") || k == HeaderRequestID {
			continue
		}
		h[k] = vs
	}
}

// copyBody is copyResponse's loop; rp is nil but on the entry node.
func (p *Proxy) copyBody(w http.ResponseWriter, r *http.Request, resp *http.Response, model string, start time.Time, rp *reply) outcome {
	var tap *usageTap
	var mig *migration
	if rp != nil {
		tap, mig = rp.tap, rp.mig
	}
	// Only event streams are flushed per read: a JSON answer goes out in
	// as few writes as the server can manage, often one with the headers.
	stream := strings.HasPrefix(resp.Header.Get("Content-Type"), "text/event-stream")
	rc := http.NewResponseController(w)
	bufp := copyBufs.Get().(*[]byte)
	defer copyBufs.Put(bufp)
	buf := *bufp
	first := rp != nil && rp.migrated == 0
	for {
		nr, rerr := resp.Body.Read(buf)
		if nr > 0 {
			if first {
				p.metrics.ttfb.WithLabelValues(model).Observe(time.Since(start).Seconds())
				p.firstByte(r) // observe.go
				first = false
			}
			out := buf[:nr]
			if tap != nil {
				out = tap.feed(out)
			}
			if len(out) > 0 {
				if _, werr := w.Write(out); werr != nil {
					return outcomeDone // the client went away; closing resp cancels upstream
				}
				if stream {
					_ = rc.Flush()
				}
				if rp != nil && rp.report != nil && mig.tokens > mig.tokBefore {
					p.migrated(rp)
				}
			}
			if mig != nil && mig.broke != nil {
				rp.broke = "the worker sent an error mid-stream"
				return outcomeBroken
			}
		}
		if rerr == io.EOF {
			if tap == nil {
				return outcomeDone
			}
			// A last event without its blank line, held back by
			// the tap.
			if rest := tap.rest(); len(rest) > 0 {
				if _, werr := w.Write(rest); werr != nil {
					return outcomeDone
				}
				if stream {
					_ = rc.Flush()
				}
			}
			if mig != nil && (mig.broke != nil || (mig.why == "" && !mig.ended())) {
				// An answer that stops without its end broke
				// off as surely as one whose connection reset.
				rp.broke = "the answer ended before its finish"
				return outcomeBroken
			}
			rp.whole = true
			return outcomeDone
		}
		if rerr != nil {
			if r.Context().Err() != nil {
				return outcomeDone
			}
			p.log.Warn("upstream broke mid-response", "model", model, "err", rerr)
			if rp != nil {
				p.metrics.broken.WithLabelValues(model).Inc()
				rp.broke = rerr.Error()
			}
			return outcomeBroken
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
