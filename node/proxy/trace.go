package proxy

// The entry node's and the hive's spans (OpenTelemetry). With tracing off
// (Config.Tracer nil) none of this runs: the hooks check p.tracer or the
// record's span first, so the request path pays a nil check.
//
// Entry node: rbee.request (server; continues a client's traceparent) with
// children rbee.admission, rbee.lease (one per lease asked for: the queen's
// span joins it through the lease request's trace field), rbee.hive_hop
// (client, to a hive on another node) or rbee.worker (when this node is the
// hive). Hive: rbee.hive (server, a child of the entry node's hop) with
// rbee.worker under it. A migrated stream's continuation adds a lease and a
// hop of its own.

import (
	"context"
	"io"
	"net/http"
	"time"

	"go.opentelemetry.io/otel/attribute"
	"go.opentelemetry.io/otel/codes"
	"go.opentelemetry.io/otel/propagation"
	"go.opentelemetry.io/otel/trace"

	"github.com/rbee/rbee/wsapi"
)

// tracerName names the instrumentation scope of the data plane's spans.
const tracerName = "github.com/rbee/rbee/node/proxy"

// propagator is W3C Trace Context (traceparent, tracestate), the only
// propagation rbee speaks, between nodes and with clients and workers.
var propagator = propagation.TraceContext{}

// traceparent is the W3C traceparent of the span in ctx, "" when there is
// none: what a lease request carries to the queen.
func traceparent(ctx context.Context) string {
	c := propagation.MapCarrier{}
	propagator.Inject(ctx, c)
	return c["traceparent"]
}

func (p *Proxy) startRequestSpan(ctx context.Context, r *http.Request, rec *record) context.Context {
	ctx = propagator.Extract(ctx, propagation.HeaderCarrier(r.Header))
	ctx, sp := p.tracer.Start(ctx, "rbee.request", trace.WithSpanKind(trace.SpanKindServer), trace.WithTimestamp(rec.start))
	if sp.IsRecording() {
		// Attributes are built only for a span that is kept: an
		// unsampled request costs the span's ids alone.
		sp.SetAttributes(attribute.String("rbee.request_id", rec.id), attribute.String("http.request.method", r.Method),
			attribute.String("url.path", r.URL.Path), attribute.String("rbee.entry", p.cfg.Name),
			attribute.String("client.address", r.RemoteAddr))
		rec.span = sp
	}
	return ctx
}

// admissionSpan covers the request from its arrival to its admission: the
// body read, parsed and checked against the key.
func (p *Proxy) admissionSpan(ctx context.Context, rec *record, a *admission) {
	_, sp := p.tracer.Start(ctx, "rbee.admission", trace.WithTimestamp(rec.start),
		trace.WithAttributes(attribute.String("rbee.model.requested", TruncateText(a.model, 200)), attribute.String("rbee.key", rec.key),
			attribute.Int64("rbee.bytes_in", rec.bytesIn), attribute.Bool("rbee.stream", a.stream)))
	sp.End()
}

// startLeaseSpan starts the wait for a lease and returns it with the
// traceparent the lease request carries (both empty with tracing off).
func (p *Proxy) startLeaseSpan(r *http.Request, model string) (trace.Span, string) {
	if p.tracer == nil {
		return nil, ""
	}
	ctx, sp := p.tracer.Start(r.Context(), "rbee.lease", trace.WithSpanKind(trace.SpanKindClient))
	if !sp.IsRecording() {
		// The queen learns that the trace is not sampled.
		return nil, traceparent(ctx)
	}
	sp.SetAttributes(attribute.String("rbee.model.requested", TruncateText(model, 200)))
	return sp, traceparent(ctx)
}

// endLeaseSpan ends a lease wait with the queen's decision as an event.
func endLeaseSpan(sp trace.Span, g *wsapi.LeaseGrant, lerr *wsapi.LeaseError) {
	switch {
	case g != nil:
		sp.AddEvent("lease.granted", trace.WithAttributes(attribute.String("rbee.hive", g.Hive), attribute.String("rbee.worker", g.Worker),
			attribute.String("rbee.model", g.Model), attribute.String("rbee.lease_id", g.LeaseID)))
	case lerr != nil:
		sp.AddEvent("lease.refused", trace.WithAttributes(attribute.Int("http.response.status_code", lerr.Status),
			attribute.String("error.type", lerr.ErrorType), attribute.String("rbee.reason", lerr.Message)))
		sp.SetStatus(codes.Error, lerr.ErrorType)
	default:
		sp.AddEvent("lease.abandoned") // the client went away
	}
	sp.End()
}

// startHopSpan starts the call to the hive of g and puts its context in the
// request to it, where the hive continues it.
func (p *Proxy) startHopSpan(r, req *http.Request, g *wsapi.LeaseGrant) trace.Span {
	if p.tracer == nil {
		return nil
	}
	ctx, sp := p.tracer.Start(r.Context(), "rbee.hive_hop", trace.WithSpanKind(trace.SpanKindClient))
	propagator.Inject(ctx, propagation.HeaderCarrier(req.Header))
	if !sp.IsRecording() {
		return nil
	}
	sp.SetAttributes(attribute.String("rbee.hive", g.Hive), attribute.String("server.address", g.HiveAddr),
		attribute.String("rbee.worker", g.Worker), attribute.String("rbee.lease_id", g.LeaseID))
	return sp
}

// startHiveSpan continues the entry node's hop on the hive; r carries it on
// to the worker call.
func (p *Proxy) startHiveSpan(r *http.Request, lease wsapi.LeaseInfo) (*http.Request, trace.Span) {
	if p.tracer == nil {
		return r, nil
	}
	ctx := propagator.Extract(r.Context(), propagation.HeaderCarrier(r.Header))
	ctx, sp := p.tracer.Start(ctx, "rbee.hive", trace.WithSpanKind(trace.SpanKindServer))
	if sp.IsRecording() {
		sp.SetAttributes(attribute.String("rbee.hive", p.cfg.Name), attribute.String("rbee.entry", lease.Entry),
			attribute.String("rbee.worker", lease.Worker), attribute.String("rbee.lease_id", lease.LeaseID),
			attribute.String("rbee.request_id", r.Header.Get(HeaderRequestID)))
	} else {
		sp = nil
	}
	return r.WithContext(ctx), sp
}

// startWorkerSpan starts the call to the worker, passing its context on (a
// worker that traces, such as vLLM with OTLP, joins the trace).
func (p *Proxy) startWorkerSpan(r, req *http.Request, lease wsapi.LeaseInfo) trace.Span {
	if p.tracer == nil {
		return nil
	}
	ctx, sp := p.tracer.Start(r.Context(), "rbee.worker", trace.WithSpanKind(trace.SpanKindClient))
	propagator.Inject(ctx, propagation.HeaderCarrier(req.Header))
	if !sp.IsRecording() {
		return nil
	}
	sp.SetAttributes(attribute.String("rbee.worker", lease.Worker), attribute.String("rbee.model", lease.Model),
		attribute.String("server.address", req.URL.Host))
	return sp
}

// firstTokenBody adds the first_token event to sp when the first bytes of
// the worker's answer arrive.
type firstTokenBody struct {
	io.ReadCloser
	sp    trace.Span
	start time.Time
	seen  bool
}

func (b *firstTokenBody) Read(p []byte) (int, error) {
	n, err := b.ReadCloser.Read(p)
	if n > 0 && !b.seen {
		b.seen = true
		b.sp.AddEvent("first_token", trace.WithAttributes(attribute.Float64("rbee.ttft_ms", ms(time.Since(b.start)))))
	}
	return n, err
}

// watchFirstToken returns resp's body, wrapped to mark sp's first token when
// sp is kept.
func watchFirstToken(resp *http.Response, sp trace.Span, start time.Time) {
	if sp == nil {
		return
	}
	sp.SetAttributes(attribute.Int("http.response.status_code", resp.StatusCode))
	if resp.StatusCode >= 500 {
		sp.SetStatus(codes.Error, resp.Status)
	}
	resp.Body = &firstTokenBody{ReadCloser: resp.Body, sp: sp, start: start}
}

// injectTrace puts the request's trace context in h, for a peer that serves
// the request instead of this node (peers.go).
func (p *Proxy) injectTrace(ctx context.Context, h http.Header) {
	if p.tracer != nil {
		propagator.Inject(ctx, propagation.HeaderCarrier(h))
	}
}

func endSpan(sp trace.Span) {
	if sp != nil {
		sp.End()
	}
}

// endRequestSpan ends the request's span with what became of it and its
// usage.
func (p *Proxy) endRequestSpan(rec *record) {
	sp := rec.span
	sp.SetAttributes(attribute.Int("http.response.status_code", rec.status), attribute.String("rbee.key", rec.key),
		attribute.String("rbee.model", rec.model), attribute.String("rbee.hive", rec.hive), attribute.String("rbee.worker", rec.worker),
		attribute.Int("rbee.retries", max(rec.leases-1-rec.migration, 0)), attribute.Int("rbee.migrations", rec.migration),
		attribute.Float64("rbee.queue_wait_ms", ms(rec.queueWait)), attribute.Float64("rbee.ttft_ms", ms(rec.ttft)))
	if rec.usage {
		sp.AddEvent("usage", trace.WithAttributes(attribute.Int64("gen_ai.usage.input_tokens", rec.prompt),
			attribute.Int64("gen_ai.usage.output_tokens", rec.complete)))
	}
	if rec.errCode != "" {
		sp.SetAttributes(attribute.String("error.type", rec.errCode))
	}
	if rec.status >= 500 || rec.aborted {
		sp.SetStatus(codes.Error, rec.errCode)
	}
	sp.End()
}
