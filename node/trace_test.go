package node_test

import (
	"context"
	"encoding/hex"
	"fmt"
	"io"
	"net/http"
	"net/http/httptest"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"

	sdktrace "go.opentelemetry.io/otel/sdk/trace"
	coltracepb "go.opentelemetry.io/proto/otlp/collector/trace/v1"
	commonpb "go.opentelemetry.io/proto/otlp/common/v1"
	"google.golang.org/protobuf/proto"

	"github.com/rbee/rbee/internal/testutil"
	"github.com/rbee/rbee/node"
	"github.com/rbee/rbee/node/nodetest"
	"github.com/rbee/rbee/node/tracing"
)

// otlpReceiver is an OTLP/HTTP trace backend in the test's process: it
// decodes what the nodes' exporters post to /v1/traces.
type otlpReceiver struct {
	srv   *httptest.Server
	mu    sync.Mutex
	spans []gotSpan
}

type gotSpan struct {
	node, name                string
	trace, id, parent         string // hex
	attrs                     map[string]string
	events                    map[string]map[string]string // name -> attributes
	start, end                time.Time
	statusError               bool
	scope, service, serviceID string
}

func newOTLPReceiver(t testing.TB) *otlpReceiver {
	o := &otlpReceiver{}
	o.srv = httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		b, err := io.ReadAll(r.Body)
		var req coltracepb.ExportTraceServiceRequest
		if err == nil {
			err = proto.Unmarshal(b, &req)
		}
		if r.URL.Path != "/v1/traces" || err != nil {
			t.Errorf("OTLP receiver: %s %s: %v", r.Method, r.URL.Path, err)
			http.Error(w, "bad request", http.StatusBadRequest)
			return
		}
		o.mu.Lock()
		for _, rs := range req.ResourceSpans {
			res := attrMap(rs.Resource.GetAttributes())
			for _, ss := range rs.ScopeSpans {
				for _, s := range ss.Spans {
					g := gotSpan{node: res["rbee.node"], service: res["service.name"], serviceID: res["service.instance.id"], name: s.Name,
						trace: hex.EncodeToString(s.TraceId), id: hex.EncodeToString(s.SpanId), parent: hex.EncodeToString(s.ParentSpanId),
						attrs: attrMap(s.Attributes), events: map[string]map[string]string{}, scope: ss.Scope.GetName(),
						start: time.Unix(0, int64(s.StartTimeUnixNano)), end: time.Unix(0, int64(s.EndTimeUnixNano)),
						statusError: s.Status.GetCode() == 2}
					for _, e := range s.Events {
						g.events[e.Name] = attrMap(e.Attributes)
					}
					o.spans = append(o.spans, g)
				}
			}
		}
		o.mu.Unlock()
		out, _ := proto.Marshal(&coltracepb.ExportTraceServiceResponse{})
		w.Header().Set("Content-Type", "application/x-protobuf")
		_, _ = w.Write(out)
	}))
	t.Cleanup(o.srv.Close)
	return o
}

func attrMap(kvs []*commonpb.KeyValue) map[string]string {
	m := map[string]string{}
	for _, kv := range kvs {
		switch v := kv.Value.GetValue().(type) {
		case *commonpb.AnyValue_StringValue:
			m[kv.Key] = v.StringValue
		case *commonpb.AnyValue_IntValue:
			m[kv.Key] = strconv.FormatInt(v.IntValue, 10)
		case *commonpb.AnyValue_DoubleValue:
			m[kv.Key] = strconv.FormatFloat(v.DoubleValue, 'g', -1, 64)
		case *commonpb.AnyValue_BoolValue:
			m[kv.Key] = strconv.FormatBool(v.BoolValue)
		default:
			m[kv.Key] = fmt.Sprint(v)
		}
	}
	return m
}

func (o *otlpReceiver) all() []gotSpan {
	o.mu.Lock()
	defer o.mu.Unlock()
	return append([]gotSpan(nil), o.spans...)
}

// tracedCluster is routeCluster with every node tracing to recv as the
// OTEL_* environment says, sampler as given; flush sends what the nodes
// hold.
func tracedCluster(t *testing.T, recv *otlpReceiver, sampler string, c endpointCollector) (entry *nodetest.Node, flush func()) {
	t.Setenv("OTEL_EXPORTER_OTLP_ENDPOINT", recv.srv.URL)
	t.Setenv("OTEL_TRACES_SAMPLER", sampler)
	t.Setenv("OTEL_BSP_SCHEDULE_DELAY", "50")
	var mu sync.Mutex
	var providers []*sdktrace.TracerProvider
	_, _, entry = routeCluster(t, endpointCollector{}, c, func(cfg *node.Config) {
		tp, err := tracing.FromEnv(context.Background(), cfg.Name)
		if err != nil || tp == nil {
			t.Fatalf("tracing for %s: %v, %v", cfg.Name, tp, err)
		}
		// Registered before the node's own cleanup, so it runs after
		// the node stopped.
		t.Cleanup(func() {
			if err := tp.Shutdown(context.Background()); err != nil {
				t.Errorf("tracer shutdown: %v", err)
			}
		})
		cfg.Tracer = tp
		mu.Lock()
		providers = append(providers, tp)
		mu.Unlock()
	})
	return entry, func() {
		mu.Lock()
		defer mu.Unlock()
		for _, tp := range providers {
			if err := tp.ForceFlush(context.Background()); err != nil {
				t.Errorf("flush: %v", err)
			}
		}
	}
}

// TestTrace_OneTraceAcrossNodes sends a traced streaming request to entry
// node c, whose queen is a and whose worker is on hive b: the client's trace
// is continued, and the spans of all three nodes join it, each under the
// span that caused it.
func TestTrace_OneTraceAcrossNodes(t *testing.T) {
	recv := newOTLPReceiver(t)
	uw := newUsageWorker(t)
	entry, flush := tracedCluster(t, recv, "parentbased_always_on", uw.collector("m"))
	const traceID, clientSpan = "4bf92f3577b34da6a3ce929d0e0e4736", "00f067aa0ba902b7"
	resp, body := chatRequest(t, entry.HTTPAddr(), `{"model":"m","messages":[],"stream":true}`, map[string]string{
		"traceparent": "00-" + traceID + "-" + clientSpan + "-01", "X-Request-Id": "traced-1"})
	if resp.StatusCode != 200 || !strings.Contains(body, "[DONE]") {
		t.Fatalf("%d %s", resp.StatusCode, body)
	}
	names := []string{"rbee.request", "rbee.admission", "rbee.lease", "rbee.queen.schedule", "rbee.hive_hop", "rbee.hive", "rbee.worker"}
	byName := map[string]gotSpan{}
	testutil.Eventually(t, 10*time.Second, "the spans of entry, queen and hive", func() error {
		flush()
		clear(byName)
		for _, s := range recv.all() {
			if s.trace != traceID {
				return testutil.Stop(fmt.Errorf("span %s of node %s in trace %s, want all in the client's %s", s.name, s.node, s.trace, traceID))
			}
			if _, dup := byName[s.name]; dup {
				return testutil.Stop(fmt.Errorf("two %s spans", s.name))
			}
			byName[s.name] = s
		}
		for _, n := range names {
			if _, ok := byName[n]; !ok {
				return fmt.Errorf("no %s span yet (have %d)", n, len(byName))
			}
		}
		return nil
	})
	wantNode := map[string]string{"rbee.request": "c", "rbee.admission": "c", "rbee.lease": "c", "rbee.hive_hop": "c",
		"rbee.queen.schedule": "a", "rbee.hive": "b", "rbee.worker": "b"}
	for name, n := range wantNode {
		if s := byName[name]; s.node != n || s.service != "rbee" || s.serviceID != n {
			t.Errorf("%s from node %q (service %q, instance %q), want %s", name, s.node, s.service, s.serviceID, n)
		}
	}
	parentOf := map[string]string{"rbee.admission": "rbee.request", "rbee.lease": "rbee.request", "rbee.hive_hop": "rbee.request",
		"rbee.queen.schedule": "rbee.lease", "rbee.hive": "rbee.hive_hop", "rbee.worker": "rbee.hive"}
	if got := byName["rbee.request"].parent; got != clientSpan {
		t.Errorf("rbee.request's parent %s, want the client's span %s", got, clientSpan)
	}
	for child, parent := range parentOf {
		if got, want := byName[child].parent, byName[parent].id; got != want {
			t.Errorf("%s's parent %s, want %s (%s)", child, got, parent, want)
		}
	}
	req := byName["rbee.request"]
	if req.attrs["rbee.request_id"] != "traced-1" || req.attrs["rbee.worker"] != "llm/w" || req.attrs["rbee.hive"] != "b" {
		t.Errorf("rbee.request attributes %v", req.attrs)
	}
	if u := req.events["usage"]; u["gen_ai.usage.input_tokens"] != "5" || u["gen_ai.usage.output_tokens"] != "4" {
		t.Errorf("rbee.request's usage event %v (events %v)", u, req.events)
	}
	if _, ok := req.events["first_token"]; !ok {
		t.Errorf("rbee.request has no first_token event: %v", req.events)
	}
	q := byName["rbee.queen.schedule"].events["lease.granted"]
	if q == nil || q["rbee.worker"] != "llm/w" || q["rbee.hive"] != "b" || q["rbee.why"] == "" || q["rbee.queue_position"] == "" {
		t.Errorf("the queen's decision: %v", byName["rbee.queen.schedule"].events)
	}
	if _, ok := byName["rbee.lease"].events["lease.granted"]; !ok {
		t.Errorf("rbee.lease events %v", byName["rbee.lease"].events)
	}
	if _, ok := byName["rbee.worker"].events["first_token"]; !ok {
		t.Errorf("rbee.worker events %v", byName["rbee.worker"].events)
	}
	if h := byName["rbee.hive"].attrs["rbee.request_id"]; h != "traced-1" {
		t.Errorf("the hive's span names request %q", h)
	}
	// The worker is asked under the hive's worker span, so a worker
	// that traces joins the trace.
	if got := uw.headers()[0].Get("traceparent"); !strings.Contains(got, traceID+"-"+byName["rbee.worker"].id) {
		t.Errorf("the worker got traceparent %q, want it under rbee.worker", got)
	}
}

// TestTrace_SamplingOff: with a sampler that keeps nothing (a ratio of 0,
// not parent-based: a client's sampled traceparent is not kept either),
// requests leave no span anywhere, and the worker is told the trace is not
// sampled. (OTEL_TRACES_SAMPLER=always_off turns tracing off altogether:
// see package tracing.)
func TestTrace_SamplingOff(t *testing.T) {
	recv := newOTLPReceiver(t)
	uw := newUsageWorker(t)
	t.Setenv("OTEL_TRACES_SAMPLER_ARG", "0")
	entry, flush := tracedCluster(t, recv, "traceidratio", uw.collector("m"))
	for i := range 3 {
		hdr := map[string]string{}
		if i == 0 {
			hdr["traceparent"] = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01"
		}
		if resp, body := chatRequest(t, entry.HTTPAddr(), `{"model":"m","messages":[],"stream":true}`, hdr); resp.StatusCode != 200 {
			t.Fatalf("%d %s", resp.StatusCode, body)
		}
	}
	flush()
	if got := recv.all(); len(got) != 0 {
		t.Errorf("%d spans with sampling off, first %s of %s", len(got), got[0].name, got[0].node)
	}
	for _, h := range uw.headers() {
		if tp := h.Get("traceparent"); tp != "" && !strings.HasSuffix(tp, "-00") {
			t.Errorf("the worker was told %q: a sampled trace", tp)
		}
	}
}
