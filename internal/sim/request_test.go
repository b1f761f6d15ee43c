package sim

import (
	"encoding/json"
	"strings"
	"testing"
)

// FuzzDecode feeds arbitrary bodies to the four request decoders: they
// must never panic, and what they accept must be within bounds.
func FuzzDecode(f *testing.F) {
	for _, seed := range []string{
		`{"model":"m","messages":[{"role":"user","content":"hi"}],"stream":true,"stream_options":{"include_usage":true},"max_tokens":3}`,
		`{"messages":[{"role":"system","content":[{"type":"text","text":"x"},{"type":"image_url","image_url":{"url":"data:"}}]},{"role":"assistant","content":null}]}`,
		`{"messages":[{"role":"user","content":"x"}],"max_completion_tokens":-1,"max_tokens":0}`,
		`{"prompt":["a","b"],"max_tokens":99999999}`,
		`{"prompt":[[1,2],[3]],"n_predict":2}`,
		`{"input":[1,2,3],"encoding_format":"base64","dimensions":8}`,
		`{"input":["a",[1],true]}`,
		`{"messages":"x"}`,
		`{"model":"m","input":"hi","instructions":"Be brief.","max_output_tokens":16,"stream":true}`,
		`{"input":[{"role":"user","content":[{"type":"input_text","text":"hi"}]},{"type":"function_call_output","call_id":"c","output":"x"}],"previous_response_id":"resp_1"}`,
		`{"input":[{"type":"message","content":"x"}],"max_output_tokens":-1}`,
		`{"input":[{"role":""}],"instructions":null}`,
		`{"messages":[{"role":"user","content":"hi"},{"role":"assistant","content":"The qu"}],"continue_final_message":true,"add_generation_prompt":false}`,
		`{"messages":[{"role":"assistant","content":"x"}],"continue_final_message":true,"add_generation_prompt":true}`,
		`{"prompt":"Q: The quick brown fox jumps over the lazy dog. The"}`,
		`{"input":[{"role":"user","content":"hi"},{"type":"message","role":"assistant","content":[{"type":"output_text","text":"The quick"}]}]}`,
		`{"messages":[{"role":"user","content":"x"}],"tools":[{"type":"function","function":{"name":"f","parameters":{"type":"object","properties":{"a":{"type":"array","items":{"$ref":"#"}}}}}}],"tool_choice":"required"}`,
		`{"messages":[{"role":"user","content":"x"},{"role":"assistant","content":"{\"a"}],"response_format":{"type":"json_schema","json_schema":{"schema":{"type":"object","properties":{"a":{"enum":[1,"x"]}}}}},"seed":7}`,
		`{"messages":[{"role":"tool","content":"x"}],"tools":[{"type":"function","function":{"name":"f"}}],"tool_choice":{"type":"function","function":{"name":"f"}},"response_format":{"type":"json_object"}}`,
		`{"input":[{"type":"function_call_output","call_id":"c","output":"x"}],"tools":[{"type":"function","name":"f","parameters":{"anyOf":[{"type":"string","pattern":"^a+b{2,3}$"},{"type":"null"}]}}],"text":{"format":{"type":"json_schema","schema":{"allOf":[{"type":"integer"}]}}}}`,
		`[]`, `{`, ``, `null`, `{"max_tokens":1e400}`,
	} {
		f.Add([]byte(seed))
	}
	f.Fuzz(func(t *testing.T, body []byte) {
		for name, decode := range map[string]func([]byte) (genRequest, error){"chat": decodeChat, "completion": decodeCompletion} {
			g, err := decode(body)
			if err != nil {
				if err.Error() == "" {
					t.Errorf("%s: empty error", name)
				}
				continue
			}
			if g.MaxTokens < 0 || g.PromptTokens < 0 || !validCont(g) {
				t.Errorf("%s: accepted %q as %+v", name, body, g)
			}
		}
		if r, err := decodeResponses(body); err == nil && (r.MaxTokens < 0 || r.PromptTokens < 0 || !validCont(r.genRequest)) {
			t.Errorf("responses: accepted %q as %+v", body, r)
		}
		e, err := decodeEmbedding(body, DefaultEmbeddingDim)
		if err != nil {
			return
		}
		if len(e.Inputs) < 1 || len(e.Inputs) > maxInputs || e.Dim < 0 || e.Dim > DefaultEmbeddingDim {
			t.Errorf("embedding: accepted %q as %d inputs of dim %d", body, len(e.Inputs), e.Dim)
		}
		for _, in := range e.Inputs {
			if in.tokens < 0 {
				t.Errorf("embedding: negative tokens for %q", body)
			}
		}
	})
}

// validCont reports whether a request's continuation is one the answer can
// go on from: within its tokens, with text still to come unless a document
// (Fixed) is already whole; and whether a call's arguments are JSON.
func validCont(g genRequest) bool {
	if g.Call != "" && (g.Cont != nil || !json.Valid([]byte(strings.Join(g.Fixed, "")))) {
		return false
	}
	c := g.Cont
	if c == nil {
		return true
	}
	if g.Fixed != nil {
		return c.k >= 0 && c.k <= len(g.Fixed) && (c.rest != "") == (c.k < len(g.Fixed))
	}
	return c.k >= 0 && c.rest != ""
}
