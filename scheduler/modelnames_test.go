package scheduler

import (
	"slices"
	"testing"
)

func TestModelKeys(t *testing.T) {
	cases := []struct {
		in   string
		want []string
	}{
		{"llama-3.2-1b", []string{"llama-3.2-1b"}},
		{"Llama-3.2-1B-Instruct-Q4_K_M.gguf", []string{"llama-3.2-1b-instruct-q4_k_m.gguf", "llama-3.2-1b-instruct-q4_k_m", "llama-3.2-1b-instruct"}},
		{"/models/qwen2.5-7b-instruct.Q8_0.gguf", []string{"/models/qwen2.5-7b-instruct.q8_0.gguf", "qwen2.5-7b-instruct.q8_0.gguf", "qwen2.5-7b-instruct.q8_0", "qwen2.5-7b-instruct"}},
		{"meta-llama/Llama-3.1-8B-Instruct", []string{"meta-llama/llama-3.1-8b-instruct", "llama-3.1-8b-instruct"}},
		{"TheBloke/Mistral-7B-AWQ", []string{"thebloke/mistral-7b-awq", "mistral-7b-awq", "mistral-7b"}},
		{"phi-3-mini-f16", []string{"phi-3-mini-f16", "phi-3-mini"}},
		{"model-IQ3_XXS.gguf", []string{"model-iq3_xxs.gguf", "model-iq3_xxs", "model"}},
		{"qwen3-8b-q4", []string{"qwen3-8b-q4", "qwen3-8b"}},
		// Not quantization tags: a size, a version, a plain word.
		{"gpt-q", []string{"gpt-q"}},
		{"mixtral-8x7b", []string{"mixtral-8x7b"}},
		{"model-q9", []string{"model-q9"}},
		{"", nil},
	}
	for _, c := range cases {
		if got := ModelKeys(c.in); !slices.Equal(got, c.want) {
			t.Errorf("ModelKeys(%q) = %q, want %q", c.in, got, c.want)
		}
	}
}
