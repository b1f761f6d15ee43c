package queen

// The queen's span of each traced lease request: from its arrival to its
// grant, refusal or withdrawal, a child of the entry node's rbee.lease span
// (the lease request's trace field), with the decision as its last event:
// the worker, the queue position last reported, and why.

import (
	"context"
	"sync"
	"time"

	"go.opentelemetry.io/otel/attribute"
	"go.opentelemetry.io/otel/codes"
	"go.opentelemetry.io/otel/propagation"
	"go.opentelemetry.io/otel/trace"

	"github.com/rbee/rbee/scheduler"
	"github.com/rbee/rbee/wsapi"
)

const tracerName = "github.com/rbee/rbee/node/queen"

// maxTracedWaits bounds the spans open at once: past it, requests go
// untraced at the queen rather than grow the table.
const maxTracedWaits = 1 << 14

// leaseSpans are the open spans by request id. Its lock is its own: spans
// start under the scheduler's lock and end where answers are delivered.
type leaseSpans struct {
	tracer trace.Tracer // nil: tracing off
	mu     sync.Mutex
	open   map[string]*leaseSpan
}

type leaseSpan struct {
	sp       trace.Span
	entry    string
	arrived  time.Time
	position int // the last one reported while it waited; 0: none
	pinned   bool
	conv     bool
}

func newLeaseSpans(tp trace.TracerProvider) *leaseSpans {
	s := &leaseSpans{open: map[string]*leaseSpan{}}
	if tp != nil {
		s.tracer = tp.Tracer(tracerName)
	}
	return s
}

// start opens the span of lease request m from node entry.
func (s *leaseSpans) start(entry string, m *wsapi.LeaseRequest, now time.Time) {
	if s == nil || s.tracer == nil || m.Trace == "" {
		return
	}
	ctx := propagation.TraceContext{}.Extract(context.Background(), propagation.MapCarrier{"traceparent": m.Trace})
	if !trace.SpanContextFromContext(ctx).IsSampled() {
		return
	}
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.open[m.RequestID] != nil || len(s.open) >= maxTracedWaits {
		return // asked again (after a reconnect): the first span holds
	}
	_, sp := s.tracer.Start(ctx, "rbee.queen.schedule", trace.WithSpanKind(trace.SpanKindServer), trace.WithTimestamp(now),
		trace.WithAttributes(attribute.String("rbee.lease_request_id", m.RequestID), attribute.String("rbee.entry", entry),
			attribute.String("rbee.model.requested", m.Model), attribute.String("rbee.key", m.Key),
			attribute.Int64("rbee.wait_limit_ms", m.WaitMS), attribute.Int("rbee.avoid", len(m.Avoid))))
	s.open[m.RequestID] = &leaseSpan{sp: sp, entry: entry, arrived: now, pinned: m.Hive != "", conv: m.Conversation != ""}
}

func (s *leaseSpans) take(id string) *leaseSpan {
	if s == nil || s.tracer == nil {
		return nil
	}
	s.mu.Lock()
	defer s.mu.Unlock()
	ls := s.open[id]
	delete(s.open, id)
	return ls
}

// position notes where a waiting request stands.
func (s *leaseSpans) position(id string, pos int) {
	if s == nil || s.tracer == nil {
		return
	}
	s.mu.Lock()
	if ls := s.open[id]; ls != nil {
		ls.position = pos
	}
	s.mu.Unlock()
}

// granted ends g's span with the decision.
func (s *leaseSpans) granted(g scheduler.Grant, now time.Time) {
	ls := s.take(g.Request.ID)
	if ls == nil {
		return
	}
	waited := now.Sub(ls.arrived)
	why := "a worker had a free slot"
	switch {
	case ls.pinned && g.Lease.Hive == g.Request.Hive && g.Lease.Worker == g.Request.Worker:
		why = "the worker the request asked for (it holds the previous response)"
	case ls.pinned:
		why = "the worker asked for is gone: another one"
	case ls.position > 0 || waited >= schedTickInterval:
		why = "a slot freed after the wait in the model's queue"
	case ls.conv:
		why = "a free slot, preferring the worker that served the conversation"
	}
	ls.sp.AddEvent("lease.granted", trace.WithTimestamp(now), trace.WithAttributes(
		attribute.String("rbee.hive", g.Lease.Hive), attribute.String("rbee.worker", g.Lease.Worker),
		attribute.String("rbee.lease_id", g.Lease.ID), attribute.Int("rbee.queue_position", ls.position),
		attribute.Float64("rbee.waited_ms", float64(waited.Microseconds())/1000), attribute.String("rbee.why", why)))
	ls.sp.End(trace.WithTimestamp(now))
}

// failed ends f's span with the refusal.
func (s *leaseSpans) failed(f scheduler.Failure, now time.Time) {
	ls := s.take(f.Request.ID)
	if ls == nil {
		return
	}
	ls.sp.AddEvent("lease.refused", trace.WithTimestamp(now), trace.WithAttributes(
		attribute.Int("http.response.status_code", f.Err.Status), attribute.String("error.type", f.Err.Type),
		attribute.Int("rbee.queue_position", ls.position), attribute.String("rbee.why", f.Err.Msg)))
	ls.sp.SetStatus(codes.Error, f.Err.Type)
	ls.sp.End(trace.WithTimestamp(now))
}

// withdrawn ends the span of a request its entry node cancelled.
func (s *leaseSpans) withdrawn(id, why string) {
	if ls := s.take(id); ls != nil {
		ls.sp.AddEvent("lease.withdrawn", trace.WithAttributes(attribute.String("rbee.why", why)))
		ls.sp.End()
	}
}

// entryGone ends the spans of a node whose session ended (or all of them,
// with entry "", when this node stops being queen).
func (s *leaseSpans) entryGone(entry string) {
	if s == nil || s.tracer == nil {
		return
	}
	s.mu.Lock()
	var ended []*leaseSpan
	for id, ls := range s.open {
		if entry == "" || ls.entry == entry {
			ended = append(ended, ls)
			delete(s.open, id)
		}
	}
	s.mu.Unlock()
	for _, ls := range ended {
		ls.sp.AddEvent("lease.withdrawn", trace.WithAttributes(attribute.String("rbee.why", "the entry node's session ended, or this node stopped being queen")))
		ls.sp.End()
	}
}
