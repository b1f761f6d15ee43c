package proxy

import (
	"fmt"
	"time"

	"github.com/prometheus/client_golang/prometheus"
)

// obsMetrics are the latency figures operators chart, taken by the entry
// node when a request ends: per model (its served name, a bounded set) and
// per worker (hive and group/instance: the cluster's own, as the queen's
// rbee_worker_* gauges).
type obsMetrics struct {
	ttft     *prometheus.HistogramVec
	tpot     *prometheus.HistogramVec
	duration *prometheus.HistogramVec
	tps      *prometheus.HistogramVec
	served   *prometheus.CounterVec
}

// llmBuckets span a cached short answer (10 ms) to a long generation behind
// a model load (10 min).
var llmBuckets = []float64{.01, .025, .05, .1, .25, .5, .75, 1, 1.5, 2, 3, 5, 7.5, 10, 15, 20, 30, 45, 60, 90, 120, 180, 300, 600}

// tpotBuckets span a small model on a fast GPU (1 ms a token) to a large one
// on a CPU (2 s).
var tpotBuckets = []float64{.001, .0025, .005, .0075, .01, .015, .02, .025, .03, .04, .05, .075, .1, .15, .2, .3, .5, 1, 2}

// tpsBuckets span a CPU worker (1 token/s) to a batch of small answers on a
// fast GPU (2000).
var tpsBuckets = []float64{1, 2, 5, 10, 15, 20, 30, 40, 50, 60, 75, 100, 150, 200, 300, 500, 1000, 2000}

func newObsMetrics(reg prometheus.Registerer) (*obsMetrics, error) {
	m := &obsMetrics{
		ttft: prometheus.NewHistogramVec(prometheus.HistogramOpts{
			Name: "rbee_time_to_first_token_seconds", Help: "Streamed answers: from the request's arrival at its entry node to the first event of the worker's answer, by model.", Buckets: llmBuckets,
		}, []string{"model"}),
		tpot: prometheus.NewHistogramVec(prometheus.HistogramOpts{
			Name: "rbee_time_per_output_token_seconds", Help: "Streamed answers of two tokens or more: the time after the first token divided by the tokens after it, by model.", Buckets: tpotBuckets,
		}, []string{"model"}),
		duration: prometheus.NewHistogramVec(prometheus.HistogramOpts{
			Name: "rbee_request_duration_seconds", Help: "Requests a worker answered: from their arrival at the entry node to the answer's end, by model.", Buckets: llmBuckets,
		}, []string{"model"}),
		tps: prometheus.NewHistogramVec(prometheus.HistogramOpts{
			Name: "rbee_worker_tokens_per_second", Help: "Completion tokens per second of each answer that reported its usage, after its first token when streamed, by hive and worker (group/instance).", Buckets: tpsBuckets,
		}, []string{"hive", "worker"}),
		served: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "rbee_worker_requests_total", Help: "Requests whose answer came from each worker (group/instance on hive; the last one, for a migrated stream), by HTTP status class.",
		}, []string{"hive", "worker", "code"}),
	}
	if reg == nil {
		return m, nil
	}
	for _, c := range []prometheus.Collector{m.ttft, m.tpot, m.duration, m.tps, m.served} {
		if err := reg.Register(c); err != nil {
			return nil, fmt.Errorf("register latency metrics: %w", err)
		}
	}
	return m, nil
}

// statusClasses are the code label's values: a class keeps a worker's
// series few.
var statusClasses = [...]string{"1xx", "2xx", "3xx", "4xx", "5xx"}

// observe takes a finished request's figures. Requests no worker answered
// (refused, or gone before a lease) have no latency to chart.
func (m *obsMetrics) observe(rec *record, total time.Duration) {
	if rec.worker == "" || rec.ttft == 0 {
		return
	}
	class := "5xx"
	if c := rec.status / 100; c >= 1 && c <= 5 {
		class = statusClasses[c-1]
	}
	m.served.WithLabelValues(rec.hive, rec.worker, class).Inc()
	if rec.status/100 != 2 || rec.aborted {
		return
	}
	m.duration.WithLabelValues(rec.model).Observe(total.Seconds())
	gen := total
	if rec.stream {
		m.ttft.WithLabelValues(rec.model).Observe(rec.ttft.Seconds())
		gen = total - rec.ttft
		if rec.complete > 1 && gen > 0 {
			m.tpot.WithLabelValues(rec.model).Observe(gen.Seconds() / float64(rec.complete-1))
		}
	}
	if rec.usage && rec.complete > 0 && gen > 0 {
		m.tps.WithLabelValues(rec.hive, rec.worker).Observe(float64(rec.complete) / gen.Seconds())
	}
}
