package queen

import (
	"time"

	"github.com/prometheus/client_golang/prometheus"
)

// collector reports, on the queen, the queues and leases per model and every
// worker's telemetry, read at scrape time from the scheduler and the registry
// (so nothing is kept for workers that went away).
type collector struct{ q *Queen }

var (
	descWaiting  = prometheus.NewDesc("rbee_queue_depth", "Requests waiting for a lease (queen only).", []string{"model"}, nil)
	descLeases   = prometheus.NewDesc("rbee_leases", "Leases held (queen only).", []string{"model"}, nil)
	descSlots    = prometheus.NewDesc("rbee_slots", "Slots of the fresh workers serving the model (queen only).", []string{"model"}, nil)
	descIsQueen  = prometheus.NewDesc("rbee_is_queen", "1 on the queen.", nil, nil)
	workerLabels = []string{"hive", "worker", "model", "simulated"}
	descGPU      = prometheus.NewDesc("rbee_worker_gpu_utilization_ratio", "Worker GPU utilization, 0 to 1 (queen only).", workerLabels, nil)
	descVRAM     = prometheus.NewDesc("rbee_worker_vram_used_bytes", "Worker VRAM used (queen only).", workerLabels, nil)
	descVRAMTot  = prometheus.NewDesc("rbee_worker_vram_total_bytes", "VRAM of the worker's GPUs (queen only).", workerLabels, nil)
	descCPU      = prometheus.NewDesc("rbee_worker_cpu_cores", "Worker CPU use, in cores (1 = one core busy) (queen only).", workerLabels, nil)
	descRSS      = prometheus.NewDesc("rbee_worker_rss_bytes", "Worker resident memory (queen only).", workerLabels, nil)
	descWSlots   = prometheus.NewDesc("rbee_worker_slots", "Requests the worker serves at once (queen only).", workerLabels, nil)
	descBusy     = prometheus.NewDesc("rbee_worker_leases", "Requests the worker is serving (queen only).", workerLabels, nil)
)

func (c *collector) Describe(ch chan<- *prometheus.Desc) {
	for _, d := range []*prometheus.Desc{descWaiting, descLeases, descSlots, descIsQueen, descGPU, descVRAM, descVRAMTot, descCPU, descRSS, descWSlots, descBusy} {
		ch <- d
	}
}

func (c *collector) Collect(ch chan<- prometheus.Metric) {
	q := c.q
	if !q.IsQueen() {
		ch <- prometheus.MustNewConstMetric(descIsQueen, prometheus.GaugeValue, 0)
		return
	}
	ch <- prometheus.MustNewConstMetric(descIsQueen, prometheus.GaugeValue, 1)
	now := time.Now()
	qs, _ := q.Queues(now)
	for _, m := range qs {
		ch <- prometheus.MustNewConstMetric(descWaiting, prometheus.GaugeValue, float64(m.Waiting), m.Model)
		ch <- prometheus.MustNewConstMetric(descLeases, prometheus.GaugeValue, float64(m.Leases), m.Model)
		ch <- prometheus.MustNewConstMetric(descSlots, prometheus.GaugeValue, float64(m.Slots), m.Model)
	}
	const mb = 1 << 20
	for _, h := range q.registry.Hives(now) {
		if !h.Online {
			continue
		}
		busy := leasesPerWorker(h.Leases)
		for i := range h.Workers {
			w := &h.Workers[i]
			model := "unknown"
			if w.Model != nil {
				model = *w.Model
			}
			sim := "false"
			if w.Simulated {
				sim = "true"
			}
			name := w.ID()
			lv := []string{h.HiveID, name, model, sim}
			for _, v := range []struct {
				d *prometheus.Desc
				x float64
			}{
				{descGPU, w.GPUUtilPct / 100}, {descVRAM, float64(w.VRAMMB) * mb}, {descVRAMTot, float64(w.TotalVRAMMB) * mb},
				{descCPU, w.CPUPct / 100}, {descRSS, float64(w.RSSMB) * mb}, {descWSlots, float64(max(w.Slots, 1))}, {descBusy, float64(busy[name])},
			} {
				ch <- prometheus.MustNewConstMetric(v.d, prometheus.GaugeValue, v.x, lv...)
			}
		}
	}
}
