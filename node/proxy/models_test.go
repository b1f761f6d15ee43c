package proxy

import (
	"context"
	"encoding/json"
	"net/http"
	"net/http/httptest"
	"testing"
	"time"

	"github.com/rbee/rbee/wsapi"
)

type queuesFunc func(ctx context.Context) ([]wsapi.QueueStats, error)

func (f queuesFunc) Queues(ctx context.Context) ([]wsapi.QueueStats, error) { return f(ctx) }

func TestHandleModels_SaysWhatTheModelNeedsAndItsFiles(t *testing.T) {
	qs := []wsapi.QueueStats{{Model: "llama", State: "available", Hives: []string{"gpu-1"}, VRAMMB: 5212, VRAMSource: "gguf",
		Facts: &wsapi.ModelFacts{Format: "gguf", Architecture: "llama", Parameters: 8_030_261_312, Quantization: "Q4_K_M",
			Layers: 32, KVHeads: 8, HeadDim: 128, ContextLength: 131072, ChatTemplate: true, EstimateMB: 5212}}}
	p, err := New(Config{Name: "n", Start: time.Unix(0, 0),
		Queues: queuesFunc(func(context.Context) ([]wsapi.QueueStats, error) { return qs, nil })})
	if err != nil {
		t.Fatal(err)
	}
	rec := httptest.NewRecorder()
	p.HandleModels(rec, httptest.NewRequest(http.MethodGet, "/v1/models", nil))
	var got struct {
		Data []map[string]any `json:"data"`
	}
	if err := json.Unmarshal(rec.Body.Bytes(), &got); err != nil || len(got.Data) != 1 {
		t.Fatalf("body %s: %v", rec.Body, err)
	}
	m := got.Data[0]
	facts, _ := m["facts"].(map[string]any)
	if m["vram_mb"] != 5212.0 || m["vram_source"] != "gguf" || facts["quantization"] != "Q4_K_M" || facts["layers"] != 32.0 ||
		facts["chat_template"] != true {
		t.Fatalf("model %v", m)
	}
}
