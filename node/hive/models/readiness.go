package models

import (
	"fmt"
	"io"
	"net"
	"net/http"
	"time"

	"github.com/rbee/rbee/node/hive/launch"
)

// Readiness polling: often at first, so a quick engine is used within
// milliseconds of getting ready, then less (a big model loads for minutes).
const (
	pollFast    = 20 * time.Millisecond
	pollSlow    = 250 * time.Millisecond
	pollFastFor = 10 * time.Second
	pollTimeout = 2 * time.Second
)

// await polls the engine until it answers ready, exits, runs out of time, or
// is stopped. It returns "ready", or the failure's result and reason.
func (m *Manager) await(it *item, w *worker, proc *launch.Process, out *tail, start time.Time) (result, why string) {
	base := "http://" + net.JoinHostPort("127.0.0.1", w.instance)
	deadline := time.NewTimer(m.cfg.LoadTimeout)
	defer deadline.Stop()
	poll := time.NewTimer(pollFast)
	defer poll.Stop()
	for {
		select {
		case <-proc.Done():
			return "failed", fmt.Sprintf("%s before it was ready%s", exitText(proc.Err()), out.text())
		case <-deadline.C:
			return "timeout", fmt.Sprintf("not ready within %s%s", m.cfg.LoadTimeout, out.text())
		case <-m.ctx.Done():
			return "stopped", "hive stopping"
		case <-w.stopCh:
			return "stopped", m.whyStopped(w)
		case <-poll.C:
		}
		if m.ready(base) {
			return "ready", ""
		}
		if time.Since(start) < pollFastFor {
			poll.Reset(pollFast)
		} else {
			poll.Reset(pollSlow)
		}
	}
}

// ready asks an engine whether it serves: llama-server's and vLLM's
// GET /health answers 200 once the model is loaded (503 before); a server
// without /health counts as ready when GET /v1/models answers 200.
func (m *Manager) ready(base string) bool {
	for _, path := range []string{"/health", "/v1/models"} {
		req, err := http.NewRequestWithContext(m.ctx, http.MethodGet, base+path, nil)
		if err != nil {
			return false
		}
		resp, err := m.client.Do(req)
		if err != nil {
			return false
		}
		_, _ = io.Copy(io.Discard, io.LimitReader(resp.Body, 64<<10))
		resp.Body.Close()
		switch {
		case resp.StatusCode == http.StatusOK:
			return true
		case resp.StatusCode != http.StatusNotFound:
			return false // loading (503) or broken: ask again
		}
	}
	return false
}
