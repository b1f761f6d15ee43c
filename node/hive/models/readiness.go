package models

import (
	"context"
	"encoding/json"
	"fmt"
	"io"
	"net"
	"net/http"
	"slices"
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

// Ready means the weights are loaded, so that the load time measured from
// the start to the first ready answer is the real one. How each engine says
// so:
const (
	// readyHealth: GET /health answers 200 (llama-server answers 503
	// while it loads).
	readyHealth = "health"
	// readyHealthAndModel: GET /health answers 200 and GET /v1/models
	// lists the model (vLLM answers /health before its model is served).
	readyHealthAndModel = "health+model"
	// readyOllamaPS: GET /api/ps lists the model, which the hive has
	// created and preloaded (ollama.go).
	readyOllamaPS = "ollama-ps"
	// readyAny: GET /health answers 200, or, on a server without /health
	// (404), GET /v1/models does: the sim engine and templates of one's
	// own, which may be anything.
	readyAny = "any"
)

// readiness is how the engine named engine says it is ready. Engines are
// known by name: --engine NAME=BINARY keeps a built-in's name, and so its
// readiness.
func readiness(engine string) string {
	switch engine {
	case EngineLlamaServer:
		return readyHealth
	case EngineVLLM:
		return readyHealthAndModel
	case EngineOllama:
		return readyOllamaPS
	}
	return readyAny
}

// await polls the engine until it answers ready, exits, runs out of time, or
// is stopped. It returns "ready", or the failure's result and reason. An
// ollama engine is first given its model (ollama.go), which ends with the
// model loaded; only then is it asked whether it is ready.
func (m *Manager) await(it *item, w *worker, proc *launch.Process, out *tail, start time.Time) (result, why string) {
	base := "http://" + net.JoinHostPort("127.0.0.1", w.instance)
	kind := readiness(it.Engine)
	deadline := time.NewTimer(m.cfg.LoadTimeout)
	defer deadline.Stop()
	poll := time.NewTimer(pollFast)
	defer poll.Stop()

	var setupDone chan error
	if kind == readyOllamaPS {
		ctx, cancel := context.WithCancel(m.ctx)
		setupDone = make(chan error, 1)
		done := setupDone
		go func() { done <- m.ollamaSetup(ctx, it, w, base, start) }()
		defer func() {
			cancel()
			if setupDone != nil {
				<-done // not received yet: nothing of it outlives the start
			}
		}()
		poll.Stop() // nothing to ask before the model is created and loaded
	}
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
		case err := <-setupDone:
			setupDone = nil
			if err != nil {
				return "failed", fmt.Sprintf("%v%s", err, out.text())
			}
			poll.Reset(0)
			continue
		case <-poll.C:
		}
		// vLLM serves the model as its path unless told a name.
		if probeReady(m.ctx, m.client, kind, base, it.Name, it.Path) {
			return "ready", ""
		}
		if time.Since(start) < pollFastFor {
			poll.Reset(pollFast)
		} else {
			poll.Reset(pollSlow)
		}
	}
}

// ollamaSetup gives an ollama engine its model, and logs how long its steps
// took.
func (m *Manager) ollamaSetup(ctx context.Context, it *item, w *worker, base string, start time.Time) error {
	dir, err := m.ollama.path(m.cfg.OllamaModels)
	if err != nil {
		return err
	}
	c := &ollamaClient{base: base, hc: &http.Client{Transport: &http.Transport{DisableKeepAlives: true}}}
	loaded, err := c.setup(ctx, &m.ollama, dir, it)
	if err != nil {
		return err
	}
	m.log.Info("ollama loaded the model", "model", it.Name, "instance", w.instance,
		"create", loaded.Create.Round(time.Millisecond), "preload", loaded.Preload.Round(time.Millisecond),
		"since_start", time.Since(start).Round(time.Millisecond))
	return nil
}

// probeReady asks the engine at base, once, whether it is ready to serve
// the model, known by any of names, the way kind says.
func probeReady(ctx context.Context, hc *http.Client, kind, base string, names ...string) bool {
	switch kind {
	case readyHealth:
		code, _ := probeGet(ctx, hc, base+"/health")
		return code == http.StatusOK
	case readyHealthAndModel:
		if code, _ := probeGet(ctx, hc, base+"/health"); code != http.StatusOK {
			return false
		}
		code, body := probeGet(ctx, hc, base+"/v1/models")
		return code == http.StatusOK && slices.ContainsFunc(names, func(n string) bool { return openAIModelListed(body, n) })
	case readyOllamaPS:
		code, body := probeGet(ctx, hc, base+"/api/ps")
		// The hive created it under the catalog name, the first.
		return code == http.StatusOK && len(names) > 0 && ollamaLists(body, names[0])
	}
	switch code, _ := probeGet(ctx, hc, base+"/health"); code {
	case http.StatusOK:
		return true
	case http.StatusNotFound:
		code, _ := probeGet(ctx, hc, base+"/v1/models")
		return code == http.StatusOK
	}
	return false // loading (503) or broken: ask again
}

// probeGet is GET url's status and body (64 KiB at most); 0 when it could
// not be asked.
func probeGet(ctx context.Context, hc *http.Client, url string) (int, []byte) {
	req, err := http.NewRequestWithContext(ctx, http.MethodGet, url, nil)
	if err != nil {
		return 0, nil
	}
	resp, err := hc.Do(req)
	if err != nil {
		return 0, nil
	}
	defer resp.Body.Close()
	b, _ := io.ReadAll(io.LimitReader(resp.Body, 64<<10))
	return resp.StatusCode, b
}

// openAIModelListed says whether a GET /v1/models answer lists model.
func openAIModelListed(body []byte, model string) bool {
	var list struct {
		Data []struct {
			ID string `json:"id"`
		} `json:"data"`
	}
	if json.Unmarshal(body, &list) != nil {
		return false
	}
	for _, d := range list.Data {
		if d.ID == model {
			return true
		}
	}
	return false
}
