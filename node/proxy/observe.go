package proxy

// What every request leaves behind: its request id (returned to the client,
// passed on to hives and workers), one access log line, the latency figures
// per model and worker, and, with tracing on, its spans (trace.go). The
// request path fills a record at points it passes anyway; everything is
// written once, when the handler returns.

import (
	"context"
	"encoding/hex"
	"log/slog"
	"math/rand/v2"
	"net/http"
	"time"

	"go.opentelemetry.io/otel/trace"

	"github.com/rbee/rbee/wsapi"
)

// HeaderRequestID carries a request's id: a client's own (when it is
// printable ASCII of at most maxRequestID bytes) is kept, else the entry node
// makes one. It is passed on to the hive and the worker, returned to the
// client, and named in the access log, the spans and error bodies.
const HeaderRequestID = "X-Request-Id"

// maxRequestID bounds a client's request id: longer ones are replaced.
const maxRequestID = 128

// record is what the entry node learns of one client request on its way.
// Only the request's own goroutine writes it (keep-alive comments written
// by another goroutine are ordered with it by the keep-alive's stop).
type record struct {
	id    string
	start time.Time
	key   string
	// model is the served name once a lease names it, else the label the
	// refusal was counted under.
	model string
	// asked is the model as the client named it, which the access log
	// names when no worker served the request.
	asked        string
	hive, worker string
	status       int
	errCode      string
	stream       bool
	// queueWait sums the waits for leases; ttft is from the request's
	// arrival to the first byte of the worker's answer.
	queueWait time.Duration
	ttft      time.Duration
	leases    int
	prompt    int64
	complete  int64
	usage     bool
	bytesIn   int64
	bytesOut  int64
	migration int
	aborted   bool

	span trace.Span // nil with tracing off
}

type recordKey struct{}

// recordOf is r's record, nil for a request the entry node does not observe
// (a hive's, or a test's that calls a handler directly).
func recordOf(r *http.Request) *record {
	rec, _ := r.Context().Value(recordKey{}).(*record)
	return rec
}

// obsWriter notes the status and size of the answer the client gets.
type obsWriter struct {
	http.ResponseWriter
	rec *record
}

func (o *obsWriter) WriteHeader(code int) {
	if o.rec.status == 0 {
		o.rec.status = code
	}
	o.ResponseWriter.WriteHeader(code)
}

func (o *obsWriter) Write(b []byte) (int, error) {
	if o.rec.status == 0 {
		o.rec.status = http.StatusOK
	}
	n, err := o.ResponseWriter.Write(b)
	o.rec.bytesOut += int64(n)
	return n, err
}

// Unwrap lets http.ResponseController reach the connection (flushes).
func (o *obsWriter) Unwrap() http.ResponseWriter { return o.ResponseWriter }

// noteError records the error code an error body carries on the record of
// the client's answer that w writes, if any.
func noteError(w http.ResponseWriter, code string) {
	for {
		if o, ok := w.(*obsWriter); ok {
			if o.rec.errCode == "" {
				o.rec.errCode = code
			}
			return
		}
		u, ok := w.(interface{ Unwrap() http.ResponseWriter })
		if !ok {
			return
		}
		w = u.Unwrap()
	}
}

// validRequestID reports whether a client's request id can be kept: it goes
// into logs and headers as it is.
func validRequestID(s string) bool {
	if s == "" || len(s) > maxRequestID {
		return false
	}
	for i := 0; i < len(s); i++ {
		if s[i] < 0x21 || s[i] > 0x7e {
			return false
		}
	}
	return true
}

// newRequestID makes a request id in OpenAI's style: random, so that it
// names no node and cannot be guessed from another.
func newRequestID() string {
	var b [16]byte
	var out [4 + 32]byte
	hi, lo := rand.Uint64(), rand.Uint64()
	for i := range 8 {
		b[i], b[8+i] = byte(hi>>(8*i)), byte(lo>>(8*i))
	}
	copy(out[:], "req_")
	hex.Encode(out[4:], b[:])
	return string(out[:])
}

// Observe wraps the entry node's inference handler (authentication
// included, so that a refused key is logged too): it settles the request
// id, starts the request's span, and when h returns writes the access log
// line and the latency figures.
func (p *Proxy) Observe(h http.HandlerFunc) http.HandlerFunc {
	return func(w http.ResponseWriter, r *http.Request) {
		rec := &record{start: time.Now(), key: "-"}
		if id := r.Header.Get(HeaderRequestID); validRequestID(id) {
			rec.id = id
		} else {
			rec.id = newRequestID()
			// Set on the request too: hives, workers and peers
			// get it with the headers passed on.
			r.Header.Set(HeaderRequestID, rec.id)
		}
		w.Header().Set(HeaderRequestID, rec.id)
		ctx := context.WithValue(r.Context(), recordKey{}, rec)
		if p.tracer != nil {
			ctx = p.startRequestSpan(ctx, r, rec)
		}
		defer func() {
			if v := recover(); v != nil {
				// The answer was cut off on purpose
				// (http.ErrAbortHandler): log it, then let
				// net/http close the connection.
				rec.aborted = true
				p.finish(r, rec)
				panic(v)
			}
			p.finish(r, rec)
		}()
		h(&obsWriter{ResponseWriter: w, rec: rec}, r.WithContext(ctx))
	}
}

// admitted notes what admission learnt of the request.
func (p *Proxy) admitted(r *http.Request, a *admission, ok bool) {
	rec := recordOf(r)
	if rec == nil {
		return
	}
	rec.key, rec.asked = keyLabel(r), a.model
	if !ok {
		return
	}
	rec.stream, rec.bytesIn = a.stream, int64(len(a.clientBody))
	if rec.span != nil {
		p.admissionSpan(r.Context(), rec, a)
	}
}

// failed notes a refusal counted under model.
func (p *Proxy) failed(r *http.Request, model string) {
	if rec := recordOf(r); rec != nil {
		rec.key = keyLabel(r)
		if rec.model == "" {
			rec.model = model
		}
	}
}

// leased notes the answer to one lease request, asked at since.
func (p *Proxy) leased(r *http.Request, ls trace.Span, since time.Time, g *wsapi.LeaseGrant, lerr *wsapi.LeaseError) {
	rec := recordOf(r)
	if rec == nil {
		return
	}
	rec.queueWait += time.Since(since)
	if g != nil {
		rec.leases++
		rec.model, rec.hive, rec.worker = g.Model, g.Hive, g.Worker
	}
	if ls != nil {
		endLeaseSpan(ls, g, lerr)
	}
}

// firstByte notes the first byte of the first worker's answer.
func (p *Proxy) firstByte(r *http.Request) {
	if rec := recordOf(r); rec != nil && rec.ttft == 0 {
		rec.ttft = time.Since(rec.start)
		if rec.span != nil {
			rec.span.AddEvent("first_token")
		}
	}
}

// replied notes the usage of the answer and its migrations.
func (p *Proxy) replied(r *http.Request, rp *reply) {
	rec := recordOf(r)
	if rec == nil {
		return
	}
	rec.migration = rp.migrated
	if rp.tap != nil && rp.tap.found {
		rec.usage, rec.prompt, rec.complete = true, rp.tap.prompt, rp.tap.completion
	}
}

// finish writes what the request leaves behind once its handler returned.
func (p *Proxy) finish(r *http.Request, rec *record) {
	total := time.Since(rec.start)
	if rec.status == 0 {
		// The client went away before any answer: net/http writes
		// nothing, and metrics count it as 499.
		rec.status = 499
	}
	p.obs.observe(rec, total)
	if rec.span != nil {
		p.endRequestSpan(rec)
	}
	if p.cfg.AccessLog != nil {
		p.accessLog(r, rec, total)
	}
}

// accessLog writes rec's line: never the prompt, the answer or the key.
func (p *Proxy) accessLog(r *http.Request, rec *record, total time.Duration) {
	model := rec.model
	if rec.worker == "" && rec.asked != "" {
		model = TruncateText(rec.asked, 200)
	}
	attrs := make([]slog.Attr, 0, 22)
	attrs = append(attrs,
		slog.String("request_id", rec.id),
		slog.String("method", r.Method),
		slog.String("path", r.URL.Path),
		slog.String("key", rec.key),
		slog.String("model", model),
		slog.String("entry", p.cfg.Name),
		slog.String("hive", rec.hive),
		slog.String("worker", rec.worker),
		slog.Int("status", rec.status),
		slog.String("error", rec.errCode),
		slog.Float64("queue_wait_ms", ms(rec.queueWait)),
		slog.Float64("ttft_ms", ms(rec.ttft)),
		slog.Float64("total_ms", ms(total)),
		slog.Int64("prompt_tokens", rec.prompt),
		slog.Int64("completion_tokens", rec.complete),
		slog.Int64("bytes_in", rec.bytesIn),
		slog.Int64("bytes_out", rec.bytesOut),
		slog.Int("retries", max(rec.leases-1-rec.migration, 0)),
		slog.Int("migrations", rec.migration),
		slog.String("client", r.RemoteAddr),
	)
	if rec.aborted {
		attrs = append(attrs, slog.Bool("aborted", true))
	}
	if rec.span != nil {
		if sc := rec.span.SpanContext(); sc.IsValid() {
			attrs = append(attrs, slog.String("trace_id", sc.TraceID().String()))
		}
	}
	p.cfg.AccessLog.LogAttrs(context.Background(), slog.LevelInfo, "request", attrs...)
}

// ms is d in milliseconds, to the microsecond.
func ms(d time.Duration) float64 { return float64(d.Microseconds()) / 1000 }
