package main

import (
	"context"
	"fmt"
	"io"
	"math"
	"net/http"
	"strings"
	"testing"
	"time"

	"github.com/rbee/rbee/internal/testutil"
	"github.com/rbee/rbee/node/api"
)

// TestE2E_DemoGPUsAgreeWithWorkers: in `rbee demo`, each hive's simulated
// GPU is the one its simulated workers report on: the same size, with the
// sum of their VRAM and of their utilization (at most 100%), idle and
// under load. It once said 0% and 0 of 8 GiB next to workers at 92% of
// 24 GiB.
func TestE2E_DemoGPUsAgreeWithWorkers(t *testing.T) {
	addr := startDemo(t)
	c := &cluster{hc: http.DefaultClient}
	check := func(v api.ClusterView) error {
		if len(v.Hives) != 2 {
			return fmt.Errorf("%d hives", len(v.Hives))
		}
		for _, h := range v.Hives {
			if len(h.GPUs) != 1 {
				return fmt.Errorf("hive %s: %d GPUs, want 1", h.HiveID, len(h.GPUs))
			}
			g := h.GPUs[0]
			var used uint64
			var util float64
			n := 0
			for _, w := range h.Workers {
				if !w.Simulated {
					continue
				}
				n++
				if w.TotalVRAMMB != g.TotalVRAMMB {
					return fmt.Errorf("hive %s: worker %s simulates %d MiB, its GPU has %d", h.HiveID, w.ID(), w.TotalVRAMMB, g.TotalVRAMMB)
				}
				used += w.VRAMMB
				util += w.GPUUtilPct
			}
			if n < 2 {
				return fmt.Errorf("hive %s: %d simulated workers", h.HiveID, n)
			}
			util = math.Round(min(100, util)*10) / 10
			if g.UsedVRAMMB != used || g.UtilPct != util {
				return fmt.Errorf("hive %s: GPU %d MiB used at %v%%, its workers %d MiB at %v%%", h.HiveID, g.UsedVRAMMB, g.UtilPct, used, util)
			}
		}
		return nil
	}
	read := func() (api.ClusterView, error) {
		var v api.ClusterView
		err := c.getJSON(addr, "/v1/cluster", &v)
		return v, err
	}
	testutil.Every(100*time.Millisecond).Eventually(t, 10*time.Second, "idle: each hive's GPU adds up its workers", func() error {
		v, err := read()
		if err != nil {
			return err
		}
		return check(v)
	})

	// Keep one worker busy (200 tokens a second, 4000 tokens) and look
	// again until a GPU shows the load.
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	done := make(chan struct{})
	go func() {
		defer close(done)
		req, _ := http.NewRequestWithContext(ctx, http.MethodPost, "http://"+addr+"/v1/chat/completions",
			strings.NewReader(`{"model":"llama-3.2-1b","max_tokens":4000,"stream":true,"messages":[{"role":"user","content":"hi"}]}`))
		resp, err := http.DefaultClient.Do(req)
		if err == nil {
			_, _ = io.Copy(io.Discard, resp.Body)
			resp.Body.Close()
		}
	}()
	testutil.Every(100*time.Millisecond).Eventually(t, 15*time.Second, "busy: a GPU shows its worker's load, and adds up", func() error {
		v, err := read()
		if err != nil {
			return err
		}
		if err := check(v); err != nil {
			return err
		}
		for _, h := range v.Hives {
			if h.GPUs[0].UtilPct > 0 {
				return nil
			}
		}
		return fmt.Errorf("no GPU busy yet: %+v", v.Hives)
	})
	cancel()
	<-done
}
