package models

import (
	"context"
	"net/http"
	"net/http/httptest"
	"testing"
	"time"
)

func TestReadiness_ByEngine(t *testing.T) {
	for engine, want := range map[string]string{
		EngineLlamaServer: readyHealth,
		EngineVLLM:        readyHealthAndModel,
		EngineOllama:      readyOllamaPS,
		EngineSim:         readyAny,
		"mine":            readyAny,
	} {
		if got := readiness(engine); got != want {
			t.Errorf("readiness(%q) = %q, want %q", engine, got, want)
		}
	}
}

// TestProbeReady_PerEngine asks fake engines, one answer per path (a path
// not listed answers 404), whether they are ready to serve "m".
func TestProbeReady_PerEngine(t *testing.T) {
	type answer struct {
		code int
		body string
	}
	ok := answer{200, `{"status":"ok"}`}
	loading := answer{503, `{"error":{"message":"Loading model"}}`}
	for _, tc := range []struct {
		name  string
		kind  string
		paths map[string]answer
		want  bool
	}{
		{"llama-server loading", readyHealth, map[string]answer{"/health": loading, "/v1/models": {200, `{"data":[{"id":"m"}]}`}}, false},
		{"llama-server loaded", readyHealth, map[string]answer{"/health": ok}, true},
		{"llama-server without /health is not ready", readyHealth, map[string]answer{"/v1/models": {200, `{"data":[{"id":"m"}]}`}}, false},
		{"vllm healthy, model not listed yet", readyHealthAndModel, map[string]answer{"/health": ok, "/v1/models": {200, `{"data":[]}`}}, false},
		{"vllm healthy, another model listed", readyHealthAndModel, map[string]answer{"/health": ok, "/v1/models": {200, `{"data":[{"id":"other"}]}`}}, false},
		{"vllm not healthy", readyHealthAndModel, map[string]answer{"/health": loading, "/v1/models": {200, `{"data":[{"id":"m"}]}`}}, false},
		{"vllm healthy, model listed by its path (no --served-model-name)", readyHealthAndModel, map[string]answer{"/health": ok, "/v1/models": {200, `{"data":[{"id":"/srv/m"}]}`}}, true},
		{"vllm healthy, model listed", readyHealthAndModel, map[string]answer{"/health": ok, "/v1/models": {200, `{"object":"list","data":[{"id":"m","object":"model"}]}`}}, true},
		{"ollama up, nothing loaded", readyOllamaPS, map[string]answer{"/api/ps": {200, `{"models":[]}`}, "/health": ok}, false},
		{"ollama up, another model loaded", readyOllamaPS, map[string]answer{"/api/ps": {200, `{"models":[{"name":"mm:latest","model":"mm:latest"}]}`}}, false},
		{"ollama, model loaded", readyOllamaPS, map[string]answer{"/api/ps": {200, `{"models":[{"name":"m:latest","model":"m:latest","expires_at":"2319-03-18T12:03:54Z"}]}`}}, true},
		{"ollama, model loaded with its tag", readyOllamaPS, map[string]answer{"/api/ps": {200, `{"models":[{"name":"m","model":"m"}]}`}}, true},
		{"ollama answers garbage", readyOllamaPS, map[string]answer{"/api/ps": {200, `not json`}}, false},
		{"any: health 200", readyAny, map[string]answer{"/health": ok}, true},
		{"any: loading", readyAny, map[string]answer{"/health": loading, "/v1/models": ok}, false},
		{"any: no /health, /v1/models 200", readyAny, map[string]answer{"/v1/models": ok}, true},
		{"any: nothing answers", readyAny, map[string]answer{}, false},
	} {
		t.Run(tc.name, func(t *testing.T) {
			srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
				a, ok := tc.paths[r.URL.Path]
				if !ok || r.Method != http.MethodGet {
					http.NotFound(w, r)
					return
				}
				w.WriteHeader(a.code)
				_, _ = w.Write([]byte(a.body))
			}))
			defer srv.Close()
			hc := &http.Client{Timeout: time.Second, Transport: &http.Transport{DisableKeepAlives: true}}
			if got := probeReady(context.Background(), hc, tc.kind, srv.URL, "m", "/srv/m"); got != tc.want {
				t.Fatalf("probeReady(%s) = %v, want %v", tc.kind, got, tc.want)
			}
		})
	}
}

// An engine that is gone is not ready, whatever its kind.
func TestProbeReady_NothingListening(t *testing.T) {
	srv := httptest.NewServer(http.NotFoundHandler())
	base := srv.URL
	srv.Close()
	hc := &http.Client{Timeout: time.Second}
	for _, kind := range []string{readyHealth, readyHealthAndModel, readyOllamaPS, readyAny} {
		if probeReady(context.Background(), hc, kind, base, "m") {
			t.Errorf("%s: ready with nothing listening", kind)
		}
	}
}
