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
	var before, after syscall.Rusage
	b.ReportAllocs()
	b.ResetTimer()
	_ = syscall.Getrusage(syscall.RUSAGE_SELF, &before)
	b.SetParallelism(16)
	b.RunParallel(func(pb *testing.PB) {
		for pb.Next() {
			if !one() {
				return
			}
		}
	})
	_ = syscall.Getrusage(syscall.RUSAGE_SELF, &after)
	b.StopTimer()
	cpu := time.Duration(syscall.TimevalToNsec(after.Utime) - syscall.TimevalToNsec(before.Utime) +
		syscall.TimevalToNsec(after.Stime) - syscall.TimevalToNsec(before.Stime))
	b.ReportMetric(float64(cpu.Microseconds())/float64(b.N), "cpu-µs/req")
}
