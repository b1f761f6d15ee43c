package scheduler

import (
	"slices"
	"strings"
)

// quantSuffixes end a model file's name without changing which model it is:
// a request for "llama-3.2-1b-instruct" is served by
// "Llama-3.2-1B-Instruct-Q4_K_M.gguf".
var quantSuffixes = []string{
	"f16", "f32", "bf16", "fp16", "fp8", "int4", "int8", "awq", "gptq", "gguf", "exl2", "mlx",
}

// latestTag ends an Ollama model name that names no tag of its own: Ollama
// serves "tiny:latest" to a request for "tiny", and so does rbee.
const latestTag = ":latest"

// ModelKeys returns the names under which a worker's model can be asked for,
// lower-cased: the name itself, without an Ollama ":latest" tag, its last
// path element, and that without a .gguf extension and without quantization
// suffixes (-Q4_K_M, .Q8_0, -f16, -AWQ...). The first key is the exact name.
func ModelKeys(model string) []string {
	exact := strings.ToLower(strings.TrimSpace(model))
	if exact == "" {
		return nil
	}
	keys := []string{exact}
	base := exact
	if short, ok := strings.CutSuffix(exact, latestTag); ok && short != "" {
		keys = append(keys, short)
		base = short
	}
	add := func(k string) {
		if k == "" {
			return
		}
		for _, have := range keys {
			if have == k {
				return
			}
		}
		keys = append(keys, k)
	}
	if i := strings.LastIndexAny(base, `/\`); i >= 0 {
		base = base[i+1:]
	}
	add(base)
	base = strings.TrimSuffix(base, ".gguf")
	add(base)
	for {
		stripped := stripQuant(base)
		if stripped == base {
			break
		}
		base = stripped
		add(base)
	}
	return keys
}

// RequestKey is the key a request's model name is looked up by: lower-cased,
// and without an Ollama ":latest" tag, which ModelKeys makes optional.
func RequestKey(model string) string {
	k := strings.ToLower(strings.TrimSpace(model))
	if short, ok := strings.CutSuffix(k, latestTag); ok && short != "" {
		return short
	}
	return k
}

// ModelName is the name the cluster serves a request's model under: the
// model of a worker the request could go to, else a catalog entry a hive can
// start, else a model whose last hive left lately; "" when nothing answers to
// it. Entry nodes label their metrics by it: clients choose spellings ("
// M1", "m1.gguf"), and each would otherwise become a series of its own. Of
// several names the smallest wins, so that the label does not flap.
func (s *Scheduler) ModelName(model string) string {
	key := RequestKey(model)
	name := ""
	pick := func(n string) {
		if name == "" || n < name {
			name = n
		}
	}
	for _, w := range s.byKey[key] {
		pick(w.servedFor(key))
	}
	if name != "" {
		return name
	}
	for _, h := range s.models {
		for i, ks := range h.keys {
			if slices.Contains(ks, key) {
				pick(h.Catalog[i].Name)
			}
		}
	}
	if name != "" {
		return name
	}
	return s.gone[key].model
}

// stripQuant removes one trailing quantization tag, separated by - . or _.
func stripQuant(s string) string {
	i := strings.LastIndexAny(s, "-._")
	if i <= 0 {
		return s
	}
	tag := s[i+1:]
	if isQuantTag(tag) {
		return s[:i]
	}
	// Tags with an underscore inside (q4_k_m, iq3_xxs): look one separator
	// further back.
	if j := strings.LastIndexAny(s[:i], "-."); j > 0 && s[i] == '_' && isQuantTag(s[j+1:]) {
		return s[:j]
	}
	return s
}

func isQuantTag(tag string) bool {
	for _, q := range quantSuffixes {
		if tag == q {
			return true
		}
	}
	// q4, q8_0, q4_k_m, iq3_xxs, q5_k_s: ggml's quantization names.
	t := tag
	if strings.HasPrefix(t, "iq") {
		t = t[2:]
	} else if strings.HasPrefix(t, "q") {
		t = t[1:]
	} else {
		return false
	}
	if t == "" || t[0] < '1' || t[0] > '8' {
		return false
	}
	for _, c := range t[1:] {
		if c != '_' && (c < 'a' || c > 'z') && (c < '0' || c > '9') {
			return false
		}
	}
	return len(t) == 1 || t[1] == '_'
}
