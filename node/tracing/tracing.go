// Package tracing builds a node's OpenTelemetry tracer provider from the
// standard environment: OTEL_EXPORTER_OTLP_ENDPOINT (or
// OTEL_EXPORTER_OTLP_TRACES_ENDPOINT) turns tracing on, with the OTLP/HTTP
// exporter and the rest of its OTEL_EXPORTER_OTLP_* settings (headers,
// timeout, TLS, compression); OTEL_TRACES_SAMPLER and OTEL_TRACES_SAMPLER_ARG
// choose the sampler (default parentbased_always_on: a client's sampled
// traceparent is always continued); OTEL_BSP_* tune the batching; and
// OTEL_SDK_DISABLED=true, OTEL_TRACES_EXPORTER=none or
// OTEL_TRACES_SAMPLER=always_off turn it off. Without
// an endpoint, tracing is off and the request path pays nothing for it.
package tracing

import (
	"context"
	"fmt"
	"os"
	"strings"

	"go.opentelemetry.io/otel/attribute"
	"go.opentelemetry.io/otel/exporters/otlp/otlptrace/otlptracehttp"
	"go.opentelemetry.io/otel/sdk/resource"
	sdktrace "go.opentelemetry.io/otel/sdk/trace"
)

// Enabled reports whether the environment asks for traces.
func Enabled() bool {
	if strings.EqualFold(os.Getenv("OTEL_SDK_DISABLED"), "true") || strings.EqualFold(os.Getenv("OTEL_TRACES_EXPORTER"), "none") {
		return false
	}
	if os.Getenv("OTEL_TRACES_SAMPLER") == "always_off" {
		// Nothing would be kept, whatever the clients send: no
		// tracer at all costs the requests nothing.
		return false
	}
	return os.Getenv("OTEL_EXPORTER_OTLP_ENDPOINT") != "" || os.Getenv("OTEL_EXPORTER_OTLP_TRACES_ENDPOINT") != ""
}

// FromEnv returns node's tracer provider as the environment configures it,
// or nil (and nothing to shut down) when it asks for no traces. The caller
// must Shutdown a provider it got, which sends the spans still batched.
// Each node of a process gets its own, whose resource names it
// (service.name rbee, or OTEL_SERVICE_NAME; service.instance.id the node).
func FromEnv(ctx context.Context, node string) (*sdktrace.TracerProvider, error) {
	if !Enabled() {
		return nil, nil
	}
	exp, err := otlptracehttp.New(ctx)
	if err != nil {
		return nil, fmt.Errorf("OTLP trace exporter: %w", err)
	}
	res, err := resource.Merge(resource.Default(), resource.NewSchemaless(
		attribute.String("service.instance.id", node), attribute.String("rbee.node", node)))
	if err != nil {
		return nil, fmt.Errorf("trace resource: %w", err)
	}
	if os.Getenv("OTEL_SERVICE_NAME") == "" && !strings.Contains(os.Getenv("OTEL_RESOURCE_ATTRIBUTES"), "service.name=") {
		if res, err = resource.Merge(res, resource.NewSchemaless(attribute.String("service.name", "rbee"))); err != nil {
			return nil, fmt.Errorf("trace resource: %w", err)
		}
	}
	// The sampler comes from OTEL_TRACES_SAMPLER(_ARG), which the SDK
	// reads itself; the batcher from OTEL_BSP_*.
	return sdktrace.NewTracerProvider(sdktrace.WithBatcher(exp), sdktrace.WithResource(res)), nil
}
