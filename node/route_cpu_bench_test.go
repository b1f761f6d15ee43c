package node_test

import (
	"io"
	"net/http"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/rbee/rbee/node/api"
)

// BenchmarkRouteCPU is BenchmarkRoute reporting the process's CPU time per
// request (user and system, the fake worker and the client included), for
// each tracing mode of routeTraceModes. Each sub-benchmark builds its own
// cluster: run it with a fixed count, -benchtime=3000x.
func BenchmarkRouteCPU(b *testing.B) {
	for _, m := range routeTraceModes {
		b.Run(m.name, func(b *testing.B) {
			m.setup(b)
			routeCPU(b, m.opts(b)...)
		})
	}
}

func routeCPU(b *testing.B, opts ...routeOption) {
	fw := newFakeWorker(b, "w1")
	c := workersOf("m", 1024, fw)
	_, _, entry := routeCluster(b, endpointCollector{}, c, opts...)
	tr := &http.Transport{MaxIdleConnsPerHost: 256, DisableCompression: true}
	defer tr.CloseIdleConnections()
	hc := &http.Client{Transport: tr, Timeout: 30 * time.Second}
	url := "http://" + entry.HTTPAddr() + api.PathChat
	body := chat("m", true)
	one := func() bool {
		resp, err := hc.Post(url, "application/json", strings.NewReader(body))
		if err != nil {
			b.Error(err)
			return false
		}
		_, _ = io.Copy(io.Discard, resp.Body)
		resp.Body.Close()
		if resp.StatusCode != 200 {
			b.Errorf("status %d", resp.StatusCode)
			return false
		}
		return true
	}
	for range 200 { // warm the connections and the pools
		if !one() {
			return
		}
	}
	// The idle cluster's own CPU (gossip, telemetry, the queen's
	// events) runs on while the requests do: its rate, taken first, is
	// taken off, so a slower run on a busy machine is not charged for
	// its longer wall time.
	idleStart, idleCPU := time.Now(), cpuTime()
	time.Sleep(2 * time.Second) // a fixed span to measure over, not a wait for a condition
	idleRate := float64(cpuTime()-idleCPU) / float64(time.Since(idleStart))
	b.ReportAllocs()
	b.ResetTimer()
	start, before := time.Now(), cpuTime()
	b.SetParallelism(16)
	b.RunParallel(func(pb *testing.PB) {
		for pb.Next() {
			if !one() {
				return
			}
		}
	})
	cpu, wall := cpuTime()-before, time.Since(start)
	b.StopTimer()
	b.ReportMetric(float64(cpu.Microseconds())/float64(b.N), "cpu-µs/req")
	net := float64(cpu) - idleRate*float64(wall)
	b.ReportMetric(net/1e3/float64(b.N), "net-cpu-µs/req")
}

// cpuTime is the CPU time (user and system) the process has used.
func cpuTime() time.Duration {
	var ru syscall.Rusage
	_ = syscall.Getrusage(syscall.RUSAGE_SELF, &ru)
	return time.Duration(syscall.TimevalToNsec(ru.Utime) + syscall.TimevalToNsec(ru.Stime))
}
