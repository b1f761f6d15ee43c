package sim

import (
	"context"
	"encoding/base64"
	"encoding/binary"
	"encoding/json"
	"fmt"
	"io"
	"math"
	"net/http"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/rbee/rbee/internal/testutil"
)

func TestNew_ChecksConfigAndFillsDefaults(t *testing.T) {
	for _, tc := range []struct {
		name    string
		cfg     Config
		wantErr string
	}{
		{"no model", Config{}, "model is required"},
		{"blank model", Config{Model: "  "}, "model is required"},
		{"control character in model", Config{Model: "a\nb"}, "printable"},
		{"negative slots", Config{Model: "m", Slots: -1}, "slots"},
		{"too many slots", Config{Model: "m", Slots: maxSlots + 1}, "slots"},
		{"NaN rate", Config{Model: "m", TokensPerSecond: math.NaN()}, "tokens per second"},
		{"negative TTFT", Config{Model: "m", TTFT: -time.Second}, "ttft"},
		{"TTFT beyond a day", Config{Model: "m", TTFT: 25 * time.Hour}, "ttft"},
		{"a rate too slow to schedule", Config{Model: "m", TokensPerSecond: 1e-9}, "tokens per second"},
		{"max tokens over the cap", Config{Model: "m", MaxTokens: MaxTokensCap + 1}, "max tokens"},
		{"weights larger than the GPU", Config{Model: "m", TotalVRAMMB: 1000, ModelVRAMMB: 2000}, "model vram"},
		{"negative embedding dim", Config{Model: "m", EmbeddingDim: -3}, "embedding dim"},
		{"minimal", Config{Model: "m"}, ""},
		{"negative rate is unpaced", Config{Model: "m", TokensPerSecond: -1}, ""},
	} {
		t.Run(tc.name, func(t *testing.T) {
			s, err := New(tc.cfg)
			if tc.wantErr != "" {
				if err == nil || !strings.Contains(err.Error(), tc.wantErr) {
					t.Fatalf("New = %v, want an error about %q", err, tc.wantErr)
				}
				return
			}
			if err != nil {
				t.Fatal(err)
			}
			got := s.Config()
			want := Config{Model: "m", Slots: DefaultSlots, TokensPerSecond: tc.cfg.TokensPerSecond, MaxTokens: DefaultMaxTokens,
				TotalVRAMMB: DefaultTotalVRAMMB, ModelVRAMMB: DefaultModelVRAMMB, SlotVRAMMB: DefaultSlotVRAMMB, EmbeddingDim: DefaultEmbeddingDim}
			if got != want {
				t.Errorf("config %+v, want defaults %+v", got, want)
			}
		})
	}
}

func TestEmbeddings_DeterministicUnitVectors(t *testing.T) {
	ts := startSim(t, Config{Model: "m", EmbeddingDim: 64})
	type list struct {
		Object string `json:"object"`
		Model  string `json:"model"`
		Data   []struct {
			Object    string          `json:"object"`
			Index     int             `json:"index"`
			Embedding json.RawMessage `json:"embedding"`
		} `json:"data"`
		Usage struct {
			PromptTokens int `json:"prompt_tokens"`
			TotalTokens  int `json:"total_tokens"`
		} `json:"usage"`
	}
	vectors := func(t *testing.T, l list, b64 bool) [][]float32 {
		t.Helper()
		var out [][]float32
		for i, d := range l.Data {
			if d.Object != "embedding" || d.Index != i {
				t.Errorf("data[%d] = %q index %d", i, d.Object, d.Index)
			}
			var v []float32
			if b64 {
				var s string
				if err := json.Unmarshal(d.Embedding, &s); err != nil {
					t.Fatalf("data[%d]: want a base64 string: %v", i, err)
				}
				raw, err := base64.StdEncoding.DecodeString(s)
				if err != nil || len(raw)%4 != 0 {
					t.Fatalf("data[%d]: base64 %v, %d bytes", i, err, len(raw))
				}
				for j := 0; j < len(raw); j += 4 {
					v = append(v, math.Float32frombits(binary.LittleEndian.Uint32(raw[j:])))
				}
			} else if err := json.Unmarshal(d.Embedding, &v); err != nil {
				t.Fatalf("data[%d]: want floats: %v", i, err)
			}
			var sq float64
			for _, x := range v {
				sq += float64(x) * float64(x)
			}
			if math.Abs(math.Sqrt(sq)-1) > 1e-5 {
				t.Errorf("data[%d]: length %v, want 1", i, math.Sqrt(sq))
			}
			out = append(out, v)
		}
		return out
	}
	for _, tc := range []struct {
		name       string
		body       string
		b64        bool
		wantN      int
		wantDim    int
		wantModel  string
		wantTokens int
	}{
		{"one string", `{"model":"embed","input":"hello world!"}`, false, 1, 64, "embed", 3},
		{"strings", `{"input":["one","two","three"]}`, false, 3, 64, "m", 4},
		{"base64, as the openai JS client asks", `{"input":["one","two"],"encoding_format":"base64"}`, true, 2, 64, "m", 2},
		{"token ids", `{"input":[1,2,3]}`, false, 1, 64, "m", 3},
		{"arrays of token ids", `{"input":[[1,2],[3]],"encoding_format":"float"}`, false, 2, 64, "m", 3},
		{"dimensions", `{"input":"x","dimensions":8}`, false, 1, 8, "m", 1},
	} {
		t.Run(tc.name, func(t *testing.T) {
			var l list
			ts.postJSON(t, "/v1/embeddings", tc.body, &l)
			if l.Object != "list" || l.Model != tc.wantModel || len(l.Data) != tc.wantN {
				t.Fatalf("list %q model %q with %d items, want %d for %q", l.Object, l.Model, len(l.Data), tc.wantN, tc.wantModel)
			}
			if l.Usage.PromptTokens != tc.wantTokens || l.Usage.TotalTokens != tc.wantTokens {
				t.Errorf("usage %+v, want %d tokens", l.Usage, tc.wantTokens)
			}
			for i, v := range vectors(t, l, tc.b64) {
				if len(v) != tc.wantDim {
					t.Errorf("data[%d]: %d dims, want %d", i, len(v), tc.wantDim)
				}
			}
		})
	}

	// The same input gets the same vector, in either encoding; another
	// input another vector.
	var f, b list
	ts.postJSON(t, "/v1/embeddings", `{"input":["one","two"]}`, &f)
	ts.postJSON(t, "/v1/embeddings", `{"input":["one","two"],"encoding_format":"base64"}`, &b)
	fv, bv := vectors(t, f, false), vectors(t, b, true)
	for i := range fv {
		for j := range fv[i] {
			if fv[i][j] != bv[i][j] {
				t.Fatalf("input %d: float and base64 differ at %d: %v vs %v", i, j, fv[i][j], bv[i][j])
			}
		}
	}
	same := true
	for j := range fv[0] {
		same = same && fv[0][j] == fv[1][j]
	}
	if same {
		t.Error(`"one" and "two" got the same vector`)
	}
}

func TestInfoEndpoints_LlamaServerShapes(t *testing.T) {
	ts := startSim(t, Config{Model: "qwen2.5-0.5b", Slots: 3})
	var models struct {
		Object string `json:"object"`
		Data   []struct {
			ID      string `json:"id"`
			Object  string `json:"object"`
			Created int64  `json:"created"`
			OwnedBy string `json:"owned_by"`
		} `json:"data"`
	}
	for _, path := range []string{"/v1/models", "/models"} {
		ts.getJSON(t, path, &models)
		if models.Object != "list" || len(models.Data) != 1 || models.Data[0].ID != "qwen2.5-0.5b" ||
			models.Data[0].Object != "model" || models.Data[0].Created == 0 || models.Data[0].OwnedBy != "rbee-simulator" {
			t.Errorf("%s = %+v", path, models)
		}
	}
	var props struct {
		TotalSlots int    `json:"total_slots"`
		ModelPath  string `json:"model_path"`
		Settings   struct {
			NCtx int `json:"n_ctx"`
		} `json:"default_generation_settings"`
		Simulated bool `json:"rbee_simulated"`
	}
	ts.getJSON(t, "/props", &props)
	if props.TotalSlots != 3 || props.ModelPath != "/models/qwen2.5-0.5b.gguf" || props.Settings.NCtx <= 0 || !props.Simulated {
		t.Errorf("/props = %+v", props)
	}
	for _, path := range []string{"/health", "/v1/health"} {
		var h map[string]string
		ts.getJSON(t, path, &h)
		if h["status"] != "ok" {
			t.Errorf("%s = %v", path, h)
		}
	}
	var st map[string]int64
	ts.getJSON(t, "/rbee/sim/stats", &st)
	for _, k := range []string{"in_flight", "peak", "active", "served", "cancelled", "aborted", "rejected"} {
		if _, ok := st[k]; !ok {
			t.Errorf("/rbee/sim/stats lacks %q: %v", k, st)
		}
	}
	var g map[string]float64
	ts.getJSON(t, "/rbee/sim/gpu", &g)
	if g["gpu_util_pct"] != 0 || g["vram_mb"] != DefaultModelVRAMMB || g["total_vram_mb"] != DefaultTotalVRAMMB {
		t.Errorf("idle /rbee/sim/gpu = %v, want 0%%, the weights, the total", g)
	}
}

func TestGPU_FollowsLoad(t *testing.T) {
	for _, tc := range []struct {
		name             string
		cfg              Config
		busy             int
		minUtil, maxUtil float64
		wantVRAM         uint64
	}{
		{"half the slots busy", Config{Slots: 4}, 2, 42, 48, DefaultModelVRAMMB + 2*DefaultSlotVRAMMB},
		{"all busy", Config{Slots: 2}, 2, 87, 93, DefaultModelVRAMMB + 2*DefaultSlotVRAMMB},
		{"KV caches capped at the card", Config{Slots: 4, TotalVRAMMB: 5000, ModelVRAMMB: 4500}, 3, 64.5, 70.5, 5000},
	} {
		t.Run(tc.name, func(t *testing.T) {
			tc.cfg.TTFT = time.Hour
			ts := startSim(t, tc.cfg)
			ctx, cancel := context.WithCancel(context.Background())
			var wg sync.WaitGroup
			for range tc.busy {
				wg.Add(1)
				go func() {
					defer wg.Done()
					req, _ := http.NewRequestWithContext(ctx, http.MethodPost, ts.srv.URL+"/v1/completions", strings.NewReader(`{"prompt":"x"}`))
					if resp, err := ts.hc.Do(req); err == nil {
						resp.Body.Close()
					}
				}()
			}
			defer wg.Wait()
			defer cancel()
			testutil.Eventually(t, 5*time.Second, "slots busy", func() error {
				if a := ts.Stats().Active; a != int64(tc.busy) {
					return fmt.Errorf("active %d", a)
				}
				return nil
			})
			g := ts.GPU()
			if g.UtilPct < tc.minUtil || g.UtilPct > tc.maxUtil || g.VRAMMB != tc.wantVRAM || g.TotalVRAMMB != ts.Config().TotalVRAMMB {
				t.Errorf("gpu %+v, want utilization %v..%v and %d MiB", g, tc.minUtil, tc.maxUtil, tc.wantVRAM)
			}
			if again := ts.GPU(); again != g {
				t.Errorf("same load read %+v then %+v", g, again)
			}
		})
	}
}

func TestBadInput_OpenAIErrors(t *testing.T) {
	ts := startSim(t, Config{})
	huge := `{"messages":[{"role":"user","content":"` + strings.Repeat("x", MaxBodyBytes) + `"}]}`
	for _, tc := range []struct {
		name, method, path, body string
		wantStatus               int
		wantInMessage            string
	}{
		{"malformed JSON", "POST", "/v1/chat/completions", `{"messages":[`, 400, "not valid JSON"},
		{"empty body", "POST", "/v1/chat/completions", ``, 400, "empty body"},
		{"not an object", "POST", "/v1/chat/completions", `[1]`, 400, "not a JSON object"},
		{"trailing garbage", "POST", "/v1/chat/completions", `{"messages":[{"role":"user","content":"x"}]} x`, 400, "not valid JSON"},
		{"no messages", "POST", "/v1/chat/completions", `{"model":"m"}`, 400, `"messages" is required`},
		{"empty messages", "POST", "/v1/chat/completions", `{"messages":[]}`, 400, "at least one"},
		{"messages of the wrong type", "POST", "/v1/chat/completions", `{"messages":"hi"}`, 400, "messages: want an array"},
		{"message without role", "POST", "/v1/chat/completions", `{"messages":[{"content":"x"}]}`, 400, "messages[0].role"},
		{"content of the wrong type", "POST", "/v1/chat/completions", `{"messages":[{"role":"user","content":5}]}`, 400, "messages[0].content"},
		{"stream of the wrong type", "POST", "/v1/chat/completions", `{"messages":[{"role":"user","content":"x"}],"stream":"yes"}`, 400, "stream: want true or false"},
		{"max_tokens 0", "POST", "/v1/chat/completions", `{"messages":[{"role":"user","content":"x"}],"max_tokens":0}`, 400, "max_tokens must be at least 1"},
		{"max_tokens not an integer", "POST", "/v1/chat/completions", `{"messages":[{"role":"user","content":"x"}],"max_tokens":1.5}`, 400, "max_tokens: want an integer"},
		{"no prompt", "POST", "/v1/completions", `{"model":"m"}`, 400, `"prompt" is required`},
		{"empty prompt list", "POST", "/v1/completions", `{"prompt":[]}`, 400, "must not be empty"},
		{"prompt of the wrong type", "POST", "/v1/completions", `{"prompt":{"a":1}}`, 400, "prompt: want a string"},
		{"no input", "POST", "/v1/embeddings", `{"model":"m"}`, 400, `"input" is required`},
		{"mixed input", "POST", "/v1/embeddings", `{"input":["a",[1],true]}`, 400, "input[2]"},
		{"unknown encoding", "POST", "/v1/embeddings", `{"input":"a","encoding_format":"hex"}`, 400, "encoding_format"},
		{"too many dimensions", "POST", "/v1/embeddings", `{"input":"a","dimensions":100000}`, 400, "dimensions"},
		{"too many inputs", "POST", "/v1/embeddings", `{"input":[` + strings.Repeat(`"a",`, maxInputs) + `"a"]}`, 400, "at most"},
		{"responses without input", "POST", "/v1/responses", `{"model":"m"}`, 400, `"input" is required`},
		{"responses with empty input", "POST", "/v1/responses", `{"input":[]}`, 400, "must not be empty"},
		{"responses input item without role or type", "POST", "/v1/responses", `{"input":[{"content":"x"}]}`, 400, "input[0]"},
		{"responses input of the wrong type", "POST", "/v1/responses", `{"input":5}`, 400, "input: want a string"},
		{"max_output_tokens 0", "POST", "/v1/responses", `{"input":"x","max_output_tokens":0}`, 400, "max_output_tokens must be at least 1"},
		{"body over the limit", "POST", "/v1/chat/completions", huge, 413, "larger than"},
		{"GET on an inference endpoint", "GET", "/v1/chat/completions", "", 405, "method not allowed"},
		{"GET on responses", "GET", "/v1/responses", "", 405, "method not allowed"},
		{"POST on an info endpoint", "POST", "/v1/models", "{}", 405, "method not allowed"},
		{"unknown path", "GET", "/v2/whatever", "", 404, "no endpoint"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			req, err := http.NewRequest(tc.method, ts.srv.URL+tc.path, strings.NewReader(tc.body))
			if err != nil {
				t.Fatal(err)
			}
			resp, err := ts.hc.Do(req)
			if err != nil {
				t.Fatal(err)
			}
			defer resp.Body.Close()
			b, _ := io.ReadAll(resp.Body)
			if resp.StatusCode != tc.wantStatus {
				t.Fatalf("status %d, want %d: %s", resp.StatusCode, tc.wantStatus, b)
			}
			var e struct {
				Error *struct {
					Message string  `json:"message"`
					Type    string  `json:"type"`
					Param   *string `json:"param"`
					Code    *string `json:"code"`
				} `json:"error"`
			}
			if err := json.Unmarshal(b, &e); err != nil || e.Error == nil {
				t.Fatalf("body %s is not an OpenAI error: %v", b, err)
			}
			if e.Error.Type != "invalid_request_error" || !strings.Contains(e.Error.Message, tc.wantInMessage) {
				t.Errorf("error %+v, want invalid_request_error saying %q", *e.Error, tc.wantInMessage)
			}
			if !strings.Contains(string(b), `"param":null`) || !strings.Contains(string(b), `"code":null`) {
				t.Errorf("error %s lacks param and code nulls", b)
			}
			if tc.wantStatus == 405 && resp.Header.Get("Allow") == "" {
				t.Error("405 without Allow")
			}
		})
	}
	// Refused bodies are counted and hold nothing.
	testutil.Eventually(t, 5*time.Second, "bad input counted", func() error {
		if st := ts.Stats(); st.InFlight != 0 || st.Active != 0 || st.Served != 0 || st.Rejected != 26 {
			return fmt.Errorf("stats %+v, want 26 rejected, nothing else", st)
		}
		return nil
	})
}

// A field of the fields chat completions and completions share is named as
// the client wrote it, not by the Go struct that holds it.
func TestDecodeObject_NamesSharedFieldsAsSent(t *testing.T) {
	var b chatBody
	err := decodeObject([]byte(`{"messages":[],"max_tokens":"five"}`), &b)
	if err == nil || err.Error() != "max_tokens: want an integer, got string" {
		t.Fatalf("error %v, want \"max_tokens: want an integer, got string\"", err)
	}
}
