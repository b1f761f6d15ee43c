package sim

import (
	"bytes"
	"encoding/binary"
	"encoding/json"
	"hash/fnv"
	"math"
	"net/http"
	"strings"
)

// routes maps llama-server's paths (with and without /v1, as it serves
// them) and the simulator's own.
func (s *Simulator) routes() *http.ServeMux {
	mux := http.NewServeMux()
	for _, prefix := range []string{"/v1", ""} {
		mux.Handle(prefix+"/chat/completions", s.inference(s.handleChat))
		mux.Handle(prefix+"/completions", s.inference(s.handleCompletion))
		mux.Handle(prefix+"/embeddings", s.inference(s.handleEmbeddings))
		mux.Handle(prefix+"/responses", s.inference(s.handleResponses))
		mux.Handle(prefix+"/models", get(s.handleModels))
		mux.Handle(prefix+"/health", get(handleHealth))
	}
	mux.Handle("/props", get(s.handleProps))
	mux.Handle("/rbee/sim/gpu", get(func(w http.ResponseWriter, r *http.Request) { writeJSON(w, http.StatusOK, s.GPU()) }))
	mux.Handle("/rbee/sim/stats", get(func(w http.ResponseWriter, r *http.Request) { writeJSON(w, http.StatusOK, s.Stats()) }))
	mux.Handle("/", http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		writeError(w, http.StatusNotFound, "invalid_request_error", "no endpoint "+r.Method+" "+r.URL.Path)
	}))
	return mux
}

// Handler serves the worker's HTTP API. While the model loads it answers
// every path with 503, as llama-server does before routing, except the
// simulator's own /rbee/sim/ endpoints.
func (s *Simulator) Handler() http.Handler {
	if s.cfg.LoadTime <= 0 {
		return s.mux
	}
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if !s.Loaded() && !strings.HasPrefix(r.URL.Path, "/rbee/sim/") {
			writeJSON(w, http.StatusServiceUnavailable, loadingError{Error: loadingErrorBody{
				Message: "Loading model", Type: "unavailable_error", Code: http.StatusServiceUnavailable,
			}})
			return
		}
		s.mux.ServeHTTP(w, r)
	})
}

// loadingError is llama-server's answer while it loads the model; unlike
// apiError, its code is the HTTP status as a number.
type loadingError struct {
	Error loadingErrorBody `json:"error"`
}

type loadingErrorBody struct {
	Message string `json:"message"`
	Type    string `json:"type"`
	Code    int    `json:"code"`
}

// get serves h for GET and HEAD only.
func get(h http.HandlerFunc) http.Handler {
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if r.Method != http.MethodGet && r.Method != http.MethodHead {
			methodNotAllowed(w, http.MethodGet+", "+http.MethodHead)
			return
		}
		h(w, r)
	})
}

func handleHealth(w http.ResponseWriter, _ *http.Request) {
	writeJSON(w, http.StatusOK, map[string]string{"status": "ok"})
}

type modelList struct {
	Object string      `json:"object"`
	Data   []modelCard `json:"data"`
}

type modelCard struct {
	ID      string `json:"id"`
	Object  string `json:"object"`
	Created int64  `json:"created"`
	OwnedBy string `json:"owned_by"`
}

func (s *Simulator) handleModels(w http.ResponseWriter, _ *http.Request) {
	writeJSON(w, http.StatusOK, modelList{Object: "list", Data: []modelCard{{
		ID: s.cfg.Model, Object: "model", Created: s.created, OwnedBy: "rbee-simulator",
	}}})
}

// props is the part of llama-server's /props that clients and rbee's
// collector read, plus rbee_simulated.
type props struct {
	DefaultGenerationSettings generationSettings `json:"default_generation_settings"`
	TotalSlots                int                `json:"total_slots"`
	ModelAlias                string             `json:"model_alias"`
	ModelPath                 string             `json:"model_path"`
	Modalities                map[string]bool    `json:"modalities"`
	ChatTemplate              string             `json:"chat_template"`
	BOSToken                  string             `json:"bos_token"`
	EOSToken                  string             `json:"eos_token"`
	BuildInfo                 string             `json:"build_info"`
	// Simulated tells a hive that this worker's GPU figures come from
	// /rbee/sim/gpu.
	Simulated bool `json:"rbee_simulated"`
}

type generationSettings struct {
	ID           int            `json:"id"`
	IDTask       int            `json:"id_task"`
	NCtx         int            `json:"n_ctx"`
	Speculative  bool           `json:"speculative"`
	IsProcessing bool           `json:"is_processing"`
	Params       map[string]any `json:"params"`
}

// chatTemplate is ChatML, which the simulator pretends to apply.
const chatTemplate = "{% for message in messages %}{{'<|im_start|>' + message['role'] + '\\n' + message['content'] + '<|im_end|>' + '\\n'}}{% endfor %}{% if add_generation_prompt %}{{ '<|im_start|>assistant\\n' }}{% endif %}"

func (s *Simulator) handleProps(w http.ResponseWriter, _ *http.Request) {
	writeJSON(w, http.StatusOK, props{
		DefaultGenerationSettings: generationSettings{
			IDTask: -1, NCtx: contextSize, IsProcessing: s.active.Load() > 0,
			Params: map[string]any{"n_predict": -1, "temperature": 0.8, "top_k": 40, "top_p": 0.95, "min_p": 0.05, "seed": -1},
		},
		TotalSlots:   s.cfg.Slots,
		ModelAlias:   s.cfg.Model,
		ModelPath:    "/models/" + strings.TrimLeft(s.cfg.Model, "/") + ".gguf",
		Modalities:   map[string]bool{"vision": false, "audio": false},
		ChatTemplate: chatTemplate,
		BOSToken:     "<|im_start|>",
		EOSToken:     "<|im_end|>",
		BuildInfo:    "rbee-simulator",
		Simulated:    true,
	})
}

// GPU is the simulated GPU's figures, as GET /rbee/sim/gpu serves them.
type GPU struct {
	UtilPct     float64 `json:"gpu_util_pct"`
	VRAMMB      uint64  `json:"vram_mb"`
	TotalVRAMMB uint64  `json:"total_vram_mb"`
}

// GPU returns made-up figures that follow the load: utilization is 90% of
// the share of busy slots give or take 3 points (0 when idle), memory is the
// weights plus a KV cache per busy slot. The wobble is a hash of the
// counters, so the same load reads the same.
func (s *Simulator) GPU() GPU {
	active := s.active.Load()
	g := GPU{TotalVRAMMB: s.cfg.TotalVRAMMB, VRAMMB: s.cfg.TotalVRAMMB}
	// The KV caches fill what the weights leave, at most (New checked
	// that the weights fit); divided, not multiplied, so nothing overflows.
	if free := s.cfg.TotalVRAMMB - s.cfg.ModelVRAMMB; active == 0 || s.cfg.SlotVRAMMB <= free/uint64(active) {
		g.VRAMMB = s.cfg.ModelVRAMMB + uint64(active)*s.cfg.SlotVRAMMB
	}
	if active > 0 {
		h := fnv.New64a()
		var b [16]byte
		binary.LittleEndian.PutUint64(b[:8], uint64(s.nServed.Load()))
		binary.LittleEndian.PutUint64(b[8:], uint64(active))
		_, _ = h.Write(b[:])
		jitter := float64(h.Sum64()%61)/10 - 3 // -3.0 .. +3.0
		util := float64(active)/float64(s.cfg.Slots)*90 + jitter
		g.UtilPct = math.Round(min(100, max(1, util))*10) / 10
	}
	return g
}

// apiError is the OpenAI error shape.
type apiError struct {
	Error apiErrorBody `json:"error"`
}

type apiErrorBody struct {
	Message string  `json:"message"`
	Type    string  `json:"type"`
	Param   *string `json:"param"`
	Code    *string `json:"code"`
}

func writeError(w http.ResponseWriter, status int, typ, msg string) {
	writeJSON(w, status, apiError{Error: apiErrorBody{Message: msg, Type: typ}})
}

func methodNotAllowed(w http.ResponseWriter, allow string) {
	w.Header().Set("Allow", allow)
	writeError(w, http.StatusMethodNotAllowed, "invalid_request_error", "method not allowed; use "+allow)
}

// writeJSON writes v with status. An error writing means the client has
// gone; there is no one left to tell.
func writeJSON(w http.ResponseWriter, status int, v any) {
	var buf bytes.Buffer
	enc := json.NewEncoder(&buf)
	enc.SetEscapeHTML(false) // chat templates are full of <|...|>
	if err := enc.Encode(v); err != nil {
		// Only our own types reach here, and they always encode.
		status = http.StatusInternalServerError
		buf.Reset()
		buf.WriteString(`{"error":{"message":"encode response","type":"server_error","param":null,"code":null}}` + "\n")
	}
	w.Header().Set("Content-Type", "application/json")
	w.WriteHeader(status)
	_, _ = w.Write(buf.Bytes())
}
