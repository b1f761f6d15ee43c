package telemetry

import (
	"context"
	"errors"
	"net/http"
	"net/http/httptest"
	"slices"
	"strings"
	"sync/atomic"
	"testing"
	"time"
)

// fakeWorker serves fixed answers by path, 404 for anything else (as
// llama-server, vLLM's FastAPI and Ollama's gin all do), and counts requests.
type fakeWorker struct {
	answers map[string]string
	hits    atomic.Int32
}

func (f *fakeWorker) ServeHTTP(w http.ResponseWriter, r *http.Request) {
	f.hits.Add(1)
	body, ok := f.answers[r.URL.Path]
	if !ok {
		http.NotFound(w, r)
		return
	}
	w.Header().Set("Content-Type", "application/json")
	_, _ = w.Write([]byte(body))
}

func startWorker(t *testing.T, h http.Handler) string {
	t.Helper()
	srv := httptest.NewServer(h)
	t.Cleanup(srv.Close)
	return srv.URL
}

func TestAPIProber_Probe_LearnsWhatEachServerServes(t *testing.T) {
	for _, tc := range []struct {
		name    string
		answers map[string]string
		suffix  string // appended to the base URL
		want    APIInfo
	}{
		{"llama-server: slots and model file from /props",
			map[string]string{
				"/props":     `{"default_generation_settings":{"n_ctx":8192,"params":{}},"total_slots":4,"model_path":"./models/llama-3.2-1b-instruct-q4_k_m.gguf","chat_template":"{{ x }}","build_info":"b5000"}`,
				"/v1/models": `{"object":"list","data":[{"id":"./models/llama-3.2-1b-instruct-q4_k_m.gguf","object":"model","owned_by":"llamacpp"}]}`,
			},
			"", APIInfo{Kind: KindLlamaServer, Slots: 4, Version: "b5000", Models: []string{"llama-3.2-1b-instruct-q4_k_m"}}},
		{"llama-server with --alias: the served name from /v1/models",
			map[string]string{
				"/props":     `{"total_slots":2,"model_path":"/models/mistral-7b.Q4_K_M.gguf"}`,
				"/v1/models": `{"object":"list","data":[{"id":"mistral-7b","object":"model"}]}`,
			},
			"", APIInfo{Kind: KindLlamaServer, Slots: 2, Models: []string{"mistral-7b"}}},
		{"older llama-server: model under default_generation_settings, no /v1/models",
			map[string]string{
				"/props": `{"default_generation_settings":{"model":"/models/phi-2.Q8_0.gguf","n_ctx":2048},"total_slots":1}`,
			},
			"", APIInfo{Kind: KindLlamaServer, Slots: 1, Models: []string{"phi-2.Q8_0"}}},
		{"vLLM: /v1/models, served name as it is",
			map[string]string{
				"/v1/models": `{"object":"list","data":[{"id":"meta-llama/Llama-3.2-1B-Instruct","object":"model","owned_by":"vllm","root":"meta-llama/Llama-3.2-1B-Instruct","max_model_len":131072}]}`,
			},
			"", APIInfo{Kind: KindOpenAI, Models: []string{"meta-llama/Llama-3.2-1B-Instruct"}}},
		{"vLLM with a local directory reports its base name, base URL with /v1",
			map[string]string{
				"/v1/models": `{"object":"list","data":[{"id":"/models/Llama-3.2-1B-Instruct","object":"model"}]}`,
			},
			"/v1/", APIInfo{Kind: KindOpenAI, Models: []string{"Llama-3.2-1B-Instruct"}}},
		{"Ollama: every installed model from /api/tags, loaded or not",
			map[string]string{
				"/api/tags":    `{"models":[{"name":"llama3.2:1b","model":"llama3.2:1b","modified_at":"2026-12-06T12:00:00Z","size":2019393189,"digest":"baf6a787fdffd633537aa2eb51cfd54cb93ff08e28040095462bb63daf552878","details":{"format":"gguf","family":"llama"}},{"name":"","model":"qwen2.5:0.5b"},{"name":"tiny:latest","model":"tiny:latest"},{"name":"tiny:latest","model":"tiny:latest"}]}`,
				"/api/ps":      `{"models":[]}`,
				"/api/version": `{"version":"0.17.4"}`,
				"/v1/models":   `{"object":"list","data":[{"id":"llama3.2:1b"}]}`,
			},
			"", APIInfo{Kind: KindOllama, Models: []string{"llama3.2:1b", "qwen2.5:0.5b", "tiny:latest"}, Version: "0.17.4"}},
		{"Ollama: its version from /api/version; names the wire would refuse are skipped",
			map[string]string{
				"/api/tags":    `{"models":[{"name":"bad\u001b[2Jname:latest"},{"name":"` + strings.Repeat("x", 600) + `"},{"name":"tiny:latest"}]}`,
				"/api/version": `{"version":"0.17.4"}`,
			},
			"", APIInfo{Kind: KindOllama, Version: "0.17.4", Models: []string{"tiny:latest"}}},
		{"Ollama with nothing installed answers with no models",
			map[string]string{"/api/tags": `{"models":[]}`},
			"", APIInfo{Kind: KindOllama}},
		{"props that are not llama-server's are skipped",
			map[string]string{
				"/props":     `{"theme":"dark"}`,
				"/v1/models": `{"data":[{"id":"org/m"},{"id":"org/m"},{"id":""}]}`,
			},
			"", APIInfo{Kind: KindOpenAI, Models: []string{"org/m"}}},
		{"an /api/tags without a models list is not Ollama's",
			map[string]string{
				"/api/tags":  `{"error":"not supported"}`,
				"/v1/models": `{"data":[{"id":"org/m"}]}`,
			},
			"", APIInfo{Kind: KindOpenAI, Models: []string{"org/m"}}},
		{"absurd total_slots is unknown",
			map[string]string{"/props": `{"total_slots":-3,"model_path":"a.gguf"}`},
			"", APIInfo{Kind: KindLlamaServer, Models: []string{"a"}}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			base := startWorker(t, &fakeWorker{answers: tc.answers})
			got, err := APIProber{}.Probe(context.Background(), base+tc.suffix)
			if err != nil {
				t.Fatalf("probe: %v", err)
			}
			if got.Kind != tc.want.Kind || got.Slots != tc.want.Slots || got.Version != tc.want.Version || !slices.Equal(got.Models, tc.want.Models) {
				t.Errorf("probe = %+v, want %+v", got, tc.want)
			}
		})
	}
}

func TestAPIProber_Probe_NoAnswerIsErrNoModelAPI(t *testing.T) {
	for _, tc := range []struct {
		name    string
		handler http.Handler
		wantIn  string // in the error, so an operator sees why
	}{
		{"every endpoint 404", &fakeWorker{}, "status 404"},
		{"garbage JSON", &fakeWorker{answers: map[string]string{
			"/props": `{"total_slots": "four"`, "/api/tags": `<html>ollama</html>`, "/v1/models": `{"data": 7}`,
		}}, "decode"},
		{"still loading", http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
			http.Error(w, `{"error":{"code":503,"message":"Loading model"}}`, http.StatusServiceUnavailable)
		}), "status 503"},
		{"a body over the limit, valid JSON were it read whole", http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
			if r.URL.Path != "/v1/models" {
				http.NotFound(w, r)
				return
			}
			_, _ = w.Write([]byte(`{"data":[{"id":"org/m"}],"pad":"` + strings.Repeat("x", 2*maxModelAPIBody) + `"}`))
		}), "body over"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			base := startWorker(t, tc.handler)
			got, err := APIProber{}.Probe(context.Background(), base)
			if !errors.Is(err, ErrNoModelAPI) {
				t.Fatalf("probe = %+v, %v; want ErrNoModelAPI", got, err)
			}
			if !strings.Contains(err.Error(), tc.wantIn) {
				t.Errorf("error %q does not say %q", err, tc.wantIn)
			}
		})
	}
}

func TestAPIProber_Probe_UnreachableWorkerIsErrNoModelAPI(t *testing.T) {
	srv := httptest.NewServer(http.NotFoundHandler())
	base := srv.URL
	srv.Close() // nothing listens there now
	_, err := APIProber{}.Probe(context.Background(), base)
	if !errors.Is(err, ErrNoModelAPI) {
		t.Fatalf("err = %v, want ErrNoModelAPI", err)
	}
}

func TestAPIProber_Probe_BadURLIsAnError(t *testing.T) {
	for _, raw := range []string{"", "127.0.0.1:8080", "ftp://host/", "http://"} {
		if _, err := (APIProber{}).Probe(context.Background(), raw); err == nil || errors.Is(err, ErrNoModelAPI) {
			t.Errorf("Probe(%q) err = %v, want a URL error", raw, err)
		}
	}
}

// hangingWorker answers nothing until the request is abandoned. Its safety
// valve answers every API validly after hangValve, sooner than the prober's
// own per-request limit: a prober that waited on that limit instead of its
// context would get an answer and fail the test, rather than pass it late.
func hangingWorker(hits *atomic.Int32) http.Handler {
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		hits.Add(1)
		select {
		case <-r.Context().Done():
		case <-time.After(hangValve):
			_, _ = w.Write([]byte(`{"total_slots":1,"model_path":"m.gguf","models":[{"name":"m"}],"data":[{"id":"m"}]}`))
		}
	})
}

const hangValve = time.Second

func TestAPIProber_Probe_HungWorkerReturnsWhenContextEnds(t *testing.T) {
	if hangValve >= modelAPIRequestTimeout {
		t.Fatalf("hangValve %v must be under modelAPIRequestTimeout %v", hangValve, modelAPIRequestTimeout)
	}
	var hits atomic.Int32
	base := startWorker(t, hangingWorker(&hits))
	ctx, cancel := context.WithTimeout(context.Background(), 100*time.Millisecond)
	defer cancel()
	got, err := APIProber{}.Probe(ctx, base)
	if !errors.Is(err, context.DeadlineExceeded) {
		t.Fatalf("probe = %+v, %v; want the context's deadline", got, err)
	}
	if errors.Is(err, ErrNoModelAPI) {
		t.Errorf("err = %v: an expired context is not a worker without an API", err)
	}
	if n := hits.Load(); n != 1 {
		t.Errorf("%d requests, want 1: nothing is asked after the context ended", n)
	}
}

func TestAPIProber_Probe_HungEndpointDoesNotHideTheOthers(t *testing.T) {
	var hits atomic.Int32
	hang := hangingWorker(&hits)
	ok := &fakeWorker{answers: map[string]string{"/v1/models": `{"data":[{"id":"org/m"}]}`}}
	mux := http.NewServeMux()
	mux.Handle("/props", hang)
	mux.Handle("/", ok)
	base := startWorker(t, mux)
	// The client's own timeout bounds each request, as the hive's would.
	p := APIProber{Client: &http.Client{Timeout: 100 * time.Millisecond}}
	got, err := p.Probe(context.Background(), base)
	if err != nil {
		t.Fatalf("probe: %v", err)
	}
	if got.Kind != KindOpenAI || !slices.Equal(got.Models, []string{"org/m"}) {
		t.Errorf("probe = %+v, want org/m over /v1/models", got)
	}
}
