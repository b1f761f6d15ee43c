package node_test

import (
	"io"
	"net/http"
	"strings"
	"testing"
	"time"

	"github.com/rbee/rbee/node/api"
)

// BenchmarkRoute sends short chat completions through an entry-only node to
// a hive's worker, with the queen on a third node: the whole routing path in
// one process (for profiles; BenchmarkRouting in cmd/rbee measures real
// processes beside nginx).
func BenchmarkRoute(b *testing.B) {
	fw := newFakeWorker(b, "w1")
	c := workersOf("m", 1024, fw)
	_, _, entry := routeCluster(b, endpointCollector{}, c)
	tr := &http.Transport{MaxIdleConnsPerHost: 256, DisableCompression: true}
	defer tr.CloseIdleConnections()
	hc := &http.Client{Transport: tr, Timeout: 30 * time.Second}
	url := "http://" + entry.HTTPAddr() + api.PathChat
	body := chat("m", false)
	b.ResetTimer()
	b.SetParallelism(32)
	b.RunParallel(func(pb *testing.PB) {
		for pb.Next() {
			resp, err := hc.Post(url, "application/json", strings.NewReader(body))
			if err != nil {
				b.Error(err)
				return
			}
			_, _ = io.Copy(io.Discard, resp.Body)
			resp.Body.Close()
			if resp.StatusCode != 200 {
				b.Errorf("status %d", resp.StatusCode)
				return
			}
		}
	})
}
