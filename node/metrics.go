package node

import (
	"net/http"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/collectors"
	"github.com/prometheus/client_golang/prometheus/promhttp"
)

// metrics are the node's Prometheus figures. Each node has its own registry
// (not the global one) so that several nodes in one process, as in tests,
// keep their figures apart.
type metrics struct {
	reg       *prometheus.Registry
	requests  *prometheus.CounterVec
	queueWait *prometheus.HistogramVec
	ttfb      *prometheus.HistogramVec
	broken    *prometheus.CounterVec
}

// latencyBuckets span a loopback hop (100 µs) to a long queue wait (2 min).
var latencyBuckets = []float64{.0001, .00025, .0005, .001, .0025, .005, .01, .025, .05, .1, .25, .5, 1, 2.5, 5, 10, 30, 60, 120}

func newMetrics(n *Node) *metrics {
	m := &metrics{
		reg: prometheus.NewRegistry(),
		requests: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "rbee_requests_total", Help: "Inference requests this node answered as entry node, by model and HTTP status (499: client went away).",
		}, []string{"model", "code"}),
		queueWait: prometheus.NewHistogramVec(prometheus.HistogramOpts{
			Name: "rbee_queue_wait_seconds", Help: "Time an inference request waited for a lease.", Buckets: latencyBuckets,
		}, []string{"model"}),
		ttfb: prometheus.NewHistogramVec(prometheus.HistogramOpts{
			Name: "rbee_time_to_first_byte_seconds", Help: "From the request's arrival to the first byte of the worker's answer.", Buckets: latencyBuckets,
		}, []string{"model"}),
		broken: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "rbee_responses_broken_total", Help: "Responses cut off because the worker or hive failed mid-way.",
		}, []string{"model"}),
	}
	m.reg.MustRegister(m.requests, m.queueWait, m.ttfb, m.broken, &queenCollector{n: n},
		collectors.NewGoCollector(), collectors.NewProcessCollector(collectors.ProcessCollectorOpts{}))
	return m
}

func (m *metrics) handler() http.Handler {
	return promhttp.HandlerFor(m.reg, promhttp.HandlerOpts{Registry: m.reg})
}

// queenCollector reports, on the queen, the queues and leases per model and
// every worker's telemetry, read at scrape time from the scheduler and the
// registry (so nothing is kept for workers that went away).
type queenCollector struct{ n *Node }

var (
	descWaiting  = prometheus.NewDesc("rbee_queue_depth", "Requests waiting for a lease (queen only).", []string{"model"}, nil)
	descLeases   = prometheus.NewDesc("rbee_leases", "Leases held (queen only).", []string{"model"}, nil)
	descSlots    = prometheus.NewDesc("rbee_slots", "Slots of the fresh workers serving the model (queen only).", []string{"model"}, nil)
	descIsQueen  = prometheus.NewDesc("rbee_is_queen", "1 on the queen.", nil, nil)
	workerLabels = []string{"hive", "worker", "model", "simulated"}
	descGPU      = prometheus.NewDesc("rbee_worker_gpu_utilization_percent", "Worker GPU utilization (queen only).", workerLabels, nil)
	descVRAM     = prometheus.NewDesc("rbee_worker_vram_used_bytes", "Worker VRAM used (queen only).", workerLabels, nil)
	descVRAMTot  = prometheus.NewDesc("rbee_worker_vram_total_bytes", "VRAM of the worker's GPUs (queen only).", workerLabels, nil)
	descCPU      = prometheus.NewDesc("rbee_worker_cpu_percent", "Worker CPU, percent of one core (queen only).", workerLabels, nil)
	descRSS      = prometheus.NewDesc("rbee_worker_rss_bytes", "Worker resident memory (queen only).", workerLabels, nil)
	descWSlots   = prometheus.NewDesc("rbee_worker_slots", "Requests the worker serves at once (queen only).", workerLabels, nil)
	descBusy     = prometheus.NewDesc("rbee_worker_leases", "Requests the worker is serving (queen only).", workerLabels, nil)
)

func (c *queenCollector) Describe(ch chan<- *prometheus.Desc) {
	for _, d := range []*prometheus.Desc{descWaiting, descLeases, descSlots, descIsQueen, descGPU, descVRAM, descVRAMTot, descCPU, descRSS, descWSlots, descBusy} {
		ch <- d
	}
}

func (c *queenCollector) Collect(ch chan<- prometheus.Metric) {
	n := c.n
	if !n.isQueen() {
		ch <- prometheus.MustNewConstMetric(descIsQueen, prometheus.GaugeValue, 0)
		return
	}
	ch <- prometheus.MustNewConstMetric(descIsQueen, prometheus.GaugeValue, 1)
	now := time.Now()
	qs, _ := n.queueStats(now)
	for _, q := range qs {
		ch <- prometheus.MustNewConstMetric(descWaiting, prometheus.GaugeValue, float64(q.Waiting), q.Model)
		ch <- prometheus.MustNewConstMetric(descLeases, prometheus.GaugeValue, float64(q.Leases), q.Model)
		ch <- prometheus.MustNewConstMetric(descSlots, prometheus.GaugeValue, float64(q.Slots), q.Model)
	}
	const mb = 1 << 20
	for _, h := range n.registry.Hives(now) {
		if !h.Online {
			continue
		}
		busy := leasesPerWorker(h.Leases)
		for _, w := range h.Workers {
			model := "unknown"
			if w.Model != nil {
				model = *w.Model
			}
			sim := "false"
			if w.Simulated {
				sim = "true"
			}
			name := w.Group + "/" + w.Instance
			lv := []string{h.HiveID, name, model, sim}
			for _, v := range []struct {
				d *prometheus.Desc
				x float64
			}{
				{descGPU, w.GPUUtilPct}, {descVRAM, float64(w.VRAMMB) * mb}, {descVRAMTot, float64(w.TotalVRAMMB) * mb},
				{descCPU, w.CPUPct}, {descRSS, float64(w.RSSMB) * mb}, {descWSlots, float64(max(w.Slots, 1))}, {descBusy, float64(busy[name])},
			} {
				ch <- prometheus.MustNewConstMetric(v.d, prometheus.GaugeValue, v.x, lv...)
			}
		}
	}
}
