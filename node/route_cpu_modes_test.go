package node_test

import (
	"context"
	"io"
	"net/http"
	"net/http/httptest"
	"testing"

	"github.com/rbee/rbee/node"
	"github.com/rbee/rbee/node/nodetest"
	"github.com/rbee/rbee/node/tracing"
)

type routeOption = nodetest.Option

// routeTraceModes are BenchmarkRouteCPU's: tracing off (no OTEL_* set), and
// on with 1% and 100% of the requests sampled, exporting to a receiver that
// reads and drops what it gets.
var routeTraceModes = []struct {
	name  string
	setup func(testing.TB)
	opts  func(testing.TB) []routeOption
}{
	{"off", func(testing.TB) {}, func(testing.TB) []routeOption { return nil }},
	{"sampled-1pct", traceTo("parentbased_traceidratio", "0.01"), tracedNodes},
	{"sampled-100pct", traceTo("parentbased_always_on", ""), tracedNodes},
}

func traceTo(sampler, arg string) func(testing.TB) {
	return func(tb testing.TB) {
		sink := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
			_, _ = io.Copy(io.Discard, r.Body)
		}))
		tb.Cleanup(sink.Close)
		tb.Setenv("OTEL_EXPORTER_OTLP_ENDPOINT", sink.URL)
		tb.Setenv("OTEL_TRACES_SAMPLER", sampler)
		tb.Setenv("OTEL_TRACES_SAMPLER_ARG", arg)
	}
}

func tracedNodes(tb testing.TB) []routeOption {
	return []routeOption{func(cfg *node.Config) {
		tp, err := tracing.FromEnv(context.Background(), cfg.Name)
		if err != nil || tp == nil {
			tb.Fatalf("tracing: %v, %v", tp, err)
		}
		tb.Cleanup(func() { _ = tp.Shutdown(context.Background()) })
		cfg.Tracer = tp
	}}
}
