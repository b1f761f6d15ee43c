package main

import (
	"bytes"
	"encoding/json"
	"fmt"
	"io"
	"net/http"
	"regexp"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/rbee/rbee/internal/sim"
	"github.com/rbee/rbee/internal/testutil"
	"github.com/rbee/rbee/node/api"
	"github.com/rbee/rbee/wsapi"
)

// Cold-start benchmark parameters: each trial starts a model no worker
// serves, whose simulated engine takes coldLoad to load.
const (
	coldTrials = 10
	coldLoad   = 2 * time.Second
)

// BenchmarkColdStart measures what rbee adds to a cold start, on one node
// (queen and hive) with simulated engines (`rbee worker simulate --load-ms
// 2000`, generating as fast as it can), each trial a model never loaded:
//
//   - added_p50_ms: the request's time beyond the engine's own load time and
//     beyond the same request to the warm worker (what the client waits
//     for, less what any engine would take);
//   - spawn_p50_ms: of that, from the start to the engine answering ready,
//     beyond its load time (process start, readiness polling);
//   - ready_to_request_p50_ms: from the hive seeing the worker ready to the
//     waiting request reaching it (register, report, grant, proxy).
//
// BenchmarkColdStart/failing counts the starts of a model whose engine
// always exits at once over one minute.
func BenchmarkColdStart(b *testing.B) {
	b.Run("cold", func(b *testing.B) {
		var added, spawn, toReq []time.Duration
		for b.Loop() {
			a, s, r := coldTrial(b)
			added, spawn, toReq = append(added, a...), append(spawn, s...), append(toReq, r...)
		}
		am, ax := medianMax(added)
		sm, _ := medianMax(spawn)
		rm, rx := medianMax(toReq)
		b.ReportMetric(ms(am), "added_p50_ms")
		b.ReportMetric(ms(ax), "added_max_ms")
		b.ReportMetric(ms(sm), "spawn_p50_ms")
		b.ReportMetric(ms(rm), "ready_to_request_p50_ms")
		b.ReportMetric(ms(rx), "ready_to_request_max_ms")
		b.Logf("cold start over %d trials (engine load %s): rbee adds p50 %.1f ms (max %.1f); spawn+readiness p50 %.1f ms; ready to request p50 %.2f ms (max %.2f)",
			len(added), coldLoad, ms(am), ms(ax), ms(sm), ms(rm), ms(rx))
	})
	b.Run("failing", func(b *testing.B) {
		var starts int
		for b.Loop() {
			starts = failingTrial(b, time.Minute)
		}
		b.ReportMetric(float64(starts), "starts_per_min")
		b.Logf("a model whose engine always fails was started %d times in a minute", starts)
	})
}

func coldTrial(b *testing.B) (added, spawn, toReq []time.Duration) {
	b.Helper()
	c := newCluster(b)
	defer c.close()
	extra := []string{"--idle-unload", "10m"}
	for i := range coldTrials {
		extra = append(extra, "--model", fmt.Sprintf("cold%d=,engine=sim,load_ms=%d,vram=1000,slots=1,args=--tokens-per-second 0 --max-tokens 1",
			i, coldLoad.Milliseconds()))
	}
	p := c.start(nodeSpec{name: "h", extra: extra})[0]
	testutil.Eventually(b, 20*time.Second, "the catalog reported", func() error {
		var ms struct{ Data []struct{ ID, State string } }
		if err := c.getJSON(p.httpAddr, "/v1/models", &ms); err != nil {
			return err
		}
		if len(ms.Data) < coldTrials {
			return fmt.Errorf("%d models listed", len(ms.Data))
		}
		return nil
	})
	for i := range coldTrials {
		model := "cold" + strconv.Itoa(i)
		start := time.Now()
		got, err := c.chatOnce(p.httpAddr, model)
		if err != nil {
			b.Fatalf("%s: %v", model, err)
		}
		cold := time.Since(start)
		warmStart := time.Now()
		if _, err := c.chatOnce(p.httpAddr, model); err != nil {
			b.Fatalf("%s warm: %v", model, err)
		}
		warm := time.Since(warmStart)
		added = append(added, cold-coldLoad-warm)

		mw := c.managedWorker(b, p, model)
		spawn = append(spawn, mw.ReadyAt.Sub(mw.Since)-coldLoad)
		toReq = append(toReq, got.received.Sub(mw.ReadyAt))
	}
	return added, spawn, toReq
}

type chatResult struct{ received time.Time }

// chatOnce sends one short chat request to addr and returns when the worker
// got it (the simulator's header).
func (c *cluster) chatOnce(addr, model string) (chatResult, error) {
	body := fmt.Sprintf(`{"model":%q,"messages":[{"role":"user","content":"hi"}],"max_tokens":1}`, model)
	req, err := http.NewRequest(http.MethodPost, "http://"+addr+"/v1/chat/completions", strings.NewReader(body))
	if err != nil {
		return chatResult{}, err
	}
	req.Header.Set("Authorization", "Bearer "+c.key.HTTPToken())
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		return chatResult{}, err
	}
	defer resp.Body.Close()
	out, _ := io.ReadAll(resp.Body)
	if resp.StatusCode != http.StatusOK {
		return chatResult{}, fmt.Errorf("status %d: %s", resp.StatusCode, out)
	}
	ns, err := strconv.ParseInt(resp.Header.Get(sim.HeaderReceived), 10, 64)
	if err != nil {
		return chatResult{}, fmt.Errorf("no %s header: %w", sim.HeaderReceived, err)
	}
	return chatResult{received: time.Unix(0, ns)}, nil
}

// managedWorker is the worker rbee started for model, as /v1/cluster shows it.
func (c *cluster) managedWorker(tb testing.TB, p *proc, model string) wsapi.ManagedWorker {
	tb.Helper()
	var v api.ClusterView
	if err := c.getJSON(p.httpAddr, "/v1/cluster", &v); err != nil {
		tb.Fatal(err)
	}
	for _, h := range v.Hives {
		for _, m := range h.Managed {
			if m.Model == model && m.State == wsapi.ManagedReady {
				return m
			}
		}
	}
	raw, _ := json.Marshal(v.Hives)
	tb.Fatalf("no ready worker for %s in %s", model, raw)
	return wsapi.ManagedWorker{}
}

var startingRE = regexp.MustCompile(`msg="starting worker".* model=bad `)

// failingTrial sends a request every 500 ms for d for a model whose engine
// exits at once, and counts the hive's starts.
func failingTrial(tb testing.TB, d time.Duration) int {
	tb.Helper()
	c := newCluster(tb)
	defer c.close()
	p := c.start(nodeSpec{name: "h", extra: []string{
		"--engine", `broken=/bin/sh -c "echo cannot load model weights; exit 3" sh {port}`,
		"--model", "bad=/bin/sh,engine=broken",
	}})[0]
	end := time.Now().Add(d)
	for t := time.NewTicker(500 * time.Millisecond); time.Now().Before(end); <-t.C {
		body := []byte(`{"model":"bad","messages":[{"role":"user","content":"hi"}]}`)
		req, _ := http.NewRequest(http.MethodPost, "http://"+p.httpAddr+"/v1/chat/completions", bytes.NewReader(body))
		req.Header.Set("Authorization", "Bearer "+c.key.HTTPToken())
		if resp, err := http.DefaultClient.Do(req); err == nil {
			_, _ = io.Copy(io.Discard, resp.Body)
			resp.Body.Close()
		}
	}
	return len(startingRE.FindAllString(p.log(), -1))
}
