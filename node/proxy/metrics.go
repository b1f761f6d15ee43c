package proxy

import (
	"fmt"

	"github.com/prometheus/client_golang/prometheus"
)

// metrics are the entry node's figures: a request is counted once, where the
// client sent it, however many hops it took.
type metrics struct {
	requests  *prometheus.CounterVec
	queueWait *prometheus.HistogramVec
	ttfb      *prometheus.HistogramVec
	broken    *prometheus.CounterVec
	// migrations counts streams whose worker broke off, by what became
	// of them (migrate.go).
	migrations *prometheus.CounterVec
	// slotWait is the hive's: requests that waited there for a slot.
	slotWait prometheus.Histogram
}

// seen starts a model's counters at 0 the first time the entry node answers
// for it, so that a dashboard's rate() of broken responses has a series to
// read before the first one breaks.
func (m *metrics) seen(model string) {
	m.broken.WithLabelValues(model)
}

// latencyBuckets span a loopback hop (100 µs) to a long queue wait (2 min).
var latencyBuckets = []float64{.0001, .00025, .0005, .001, .0025, .005, .01, .025, .05, .1, .25, .5, 1, 2.5, 5, 10, 30, 60, 120}

func newMetrics(reg prometheus.Registerer) (*metrics, error) {
	m := &metrics{
		requests: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "rbee_requests_total", Help: "Inference requests this node answered as entry node, by API key name (- without one), model and HTTP status (499: client went away).",
		}, []string{"key", "model", "code"}),
		queueWait: prometheus.NewHistogramVec(prometheus.HistogramOpts{
			Name: "rbee_queue_wait_seconds", Help: "Time an inference request waited for a lease.", Buckets: latencyBuckets,
		}, []string{"model"}),
		ttfb: prometheus.NewHistogramVec(prometheus.HistogramOpts{
			Name: "rbee_time_to_first_byte_seconds", Help: "From the request's arrival to the first byte of the worker's answer.", Buckets: latencyBuckets,
		}, []string{"model"}),
		broken: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "rbee_responses_broken_total", Help: "Responses cut off because the worker or hive failed mid-way.",
		}, []string{"model"}),
		migrations: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "rbee_migrations_total", Help: "Streams whose worker broke off mid-way, by model and result: continued on another worker, failed (no continuation could be made), or not_migratable (the stream could not be continued: a tool call, reasoning, several choices, migration off for it).",
		}, []string{"model", "result"}),
		slotWait: prometheus.NewHistogram(prometheus.HistogramOpts{
			Name: "rbee_hive_slot_wait_seconds", Help: "Time a request waited at this hive for a slot of its worker: one granted ahead while every slot was busy (--grant-ahead), or one granted as the slot's last request was ending. Part of the request's queue wait in the access log.", Buckets: latencyBuckets,
		}),
	}
	// Dashboards expect a series for every model before anything goes
	// wrong: see count.
	if reg == nil {
		return m, nil
	}
	for _, c := range []prometheus.Collector{m.requests, m.queueWait, m.ttfb, m.broken, m.migrations, m.slotWait} {
		if err := reg.Register(c); err != nil {
			return nil, fmt.Errorf("register proxy metrics: %w", err)
		}
	}
	return m, nil
}
