package scheduler

import (
	"fmt"
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
		// Ollama's default tag is optional; any other tag is not.
		{"tiny:latest", []string{"tiny:latest", "tiny"}},
		{"library/Qwen2.5:LATEST", []string{"library/qwen2.5:latest", "library/qwen2.5", "qwen2.5"}},
		{"llama3.2:1b", []string{"llama3.2:1b"}},
		{":latest", []string{":latest"}},
		{"", nil},
	}
	for _, c := range cases {
		if got := ModelKeys(c.in); !slices.Equal(got, c.want) {
			t.Errorf("ModelKeys(%q) = %q, want %q", c.in, got, c.want)
		}
	}
}

func TestModelName_LabelsEverySpellingByTheServedName(t *testing.T) {
	s := New(Config{})
	s.SetWarm(true)
	s.UpdateHive("h1", []Worker{w("g/1", "Llama-3.2-1B-Instruct-Q4_K_M.gguf", 1)}, nil, t0)
	s.UpdateHive("h2", []Worker{w("g/1", "org/llama-3.2-1b-instruct", 1)}, nil, t0)
	s.UpdateModels("h2", HiveModels{Catalog: []CatalogModel{{Name: "Qwen2.5-0.5B.gguf"}}}, t0)
	s.UpdateHive("h3", []Worker{w("g/1", "gone-model", 1)}, nil, t0)
	s.HiveGone("h3", "failed", t0)
	for _, tc := range []struct{ asked, want string }{
		// Two workers answer to it: the smaller name, every time.
		{"llama-3.2-1b-instruct", "Llama-3.2-1B-Instruct-Q4_K_M.gguf"},
		{"  LLAMA-3.2-1B-Instruct ", "Llama-3.2-1B-Instruct-Q4_K_M.gguf"},
		{"llama-3.2-1b-instruct.Q4_K_M.GGUF", ""},
		{"org/llama-3.2-1b-instruct", "org/llama-3.2-1b-instruct"},
		{"qwen2.5-0.5b", "Qwen2.5-0.5B.gguf"},
		{" QWEN2.5-0.5B.GGUF", "Qwen2.5-0.5B.gguf"},
		{"gone-model", "gone-model"},
		{"no-such-model", ""},
		{"llama", ""},
	} {
		if got := s.ModelName(tc.asked); got != tc.want {
			t.Errorf("ModelName(%q) = %q, want %q", tc.asked, got, tc.want)
		}
	}
}

// Requests waiting for a model a hive is starting are listed under the
// model's name, however the first of them spelt it.
func TestModels_WaitingForAStartAreListedByTheModelsName(t *testing.T) {
	s := New(Config{})
	s.SetWarm(true)
	report(s, "h1", HiveModels{Catalog: []CatalogModel{entry("Qwen2.5-0.5B.gguf", 1000)}, GPUs: []GPU{gpu(0, 24000, 0)}}, t0)
	for i, asked := range []string{" QWEN2.5-0.5b", "qwen2.5-0.5b.gguf"} {
		if g, err := s.Request(req(string(rune('a'+i)), asked), t0); g != nil || err != nil {
			t.Fatalf("request for %q: %v %v, want it to wait for the start", asked, g, err)
		}
	}
	ms := s.Models(t0)
	if len(ms) != 1 || ms[0].Model != "Qwen2.5-0.5B.gguf" || ms[0].Waiting != 2 {
		t.Fatalf("models %+v, want Qwen2.5-0.5B.gguf with 2 waiting", ms)
	}
}

func TestRequestKey(t *testing.T) {
	for _, tc := range []struct{ in, want string }{
		{" Tiny ", "tiny"},
		{"tiny:latest", "tiny"},
		{"TINY:Latest", "tiny"},
		{"tiny:1b", "tiny:1b"},
		{"tiny:latest-q4", "tiny:latest-q4"},
		{":latest", ":latest"},
	} {
		if got := RequestKey(tc.in); got != tc.want {
			t.Errorf("RequestKey(%q) = %q, want %q", tc.in, got, tc.want)
		}
	}
}

// An Ollama serves every model it has installed from one worker, with one
// set of slots: each of them is listed with those slots, answers to its
// short and full names, and a lease names the model it was granted for.
func TestWorker_ServingSeveralModels(t *testing.T) {
	s := New(Config{})
	s.SetWarm(true)
	ollama := w("ext/11434", "tiny:latest", 2)
	ollama.Models = []string{"tiny:latest", "mini:latest", "llama3.2:1b"}
	s.UpdateHive("h1", []Worker{ollama, w("g/1", "other", 1)}, nil, t0)

	ms := s.Models(t0)
	var listed []string
	for _, m := range ms {
		listed = append(listed, fmt.Sprintf("%s:%d/%d", m.Model, m.Workers, m.Slots))
	}
	if want := []string{"llama3.2:1b:1/2", "mini:latest:1/2", "other:1/1", "tiny:latest:1/2"}; !slices.Equal(listed, want) {
		t.Fatalf("Models = %v, want %v", listed, want)
	}
	for _, tc := range []struct{ asked, want string }{
		{"tiny", "tiny:latest"},
		{"TINY:latest", "tiny:latest"},
		{"mini", "mini:latest"},
		{"llama3.2:1b", "llama3.2:1b"},
		{"llama3.2", ""},
		{"other:latest", "other"},
	} {
		if got := s.ModelName(tc.asked); got != tc.want {
			t.Errorf("ModelName(%q) = %q, want %q", tc.asked, got, tc.want)
		}
	}
	// Two slots in all: two requests for two of its models fill them, and
	// a third waits.
	g1 := mustGrant(t, s, req("a", "mini"), t0)
	g2 := mustGrant(t, s, req("b", "tiny:latest"), t0)
	if g1.Lease.Worker != "ext/11434" || g1.Lease.Model != "mini:latest" || g2.Lease.Model != "tiny:latest" {
		t.Fatalf("leases %+v, %+v: want both on ext/11434, for mini:latest and tiny:latest", g1.Lease, g2.Lease)
	}
	if g, err := s.Request(req("c", "llama3.2:1b"), t0); g != nil || err != nil {
		t.Fatalf("third request: %v %v, want it to wait for a slot", g, err)
	}
	grants := s.Release(g1.Lease.ID, t0)
	if len(grants) != 1 || grants[0].Request.ID != "c" || grants[0].Lease.Model != "llama3.2:1b" {
		t.Fatalf("release grants %+v, want c on llama3.2:1b", grants)
	}
}

// A worker the user named otherwise (--worker URL,model=llama-3.2-1b) keeps
// answering to its own name: a client that talked to llama-server directly
// asks for the file's name, in any of its spellings, and is served under the
// cluster's name.
func TestWorker_AliasesAreServed(t *testing.T) {
	s := New(Config{})
	s.SetWarm(true)
	named := w("ext/8080", "llama-3.2-1b", 1)
	named.Aliases = []string{"Llama-3.2-1B-Instruct-Q4_K_M.gguf"}
	s.UpdateHive("h1", []Worker{named, w("g/1", "other", 1)}, nil, t0)
	for _, tc := range []struct{ asked, want string }{
		{"llama-3.2-1b", "llama-3.2-1b"},
		{"Llama-3.2-1B-Instruct-Q4_K_M.gguf", "llama-3.2-1b"},
		{"llama-3.2-1b-instruct-q4_k_m", "llama-3.2-1b"},
		{"Llama-3.2-1B-Instruct", "llama-3.2-1b"},
		{"other", "other"},
		{"llama-3.2", ""},
	} {
		if got := s.ModelName(tc.asked); got != tc.want {
			t.Errorf("ModelName(%q) = %q, want %q", tc.asked, got, tc.want)
		}
	}
	ms := s.Models(t0)
	if len(ms) != 2 || ms[0].Model != "llama-3.2-1b" || !slices.Equal(ms[0].Aliases, named.Aliases) || ms[1].Aliases != nil {
		t.Fatalf("Models = %+v, want llama-3.2-1b with its alias, then other without", ms)
	}
	g := mustGrant(t, s, req("a", "Llama-3.2-1B-Instruct-Q4_K_M.gguf"), t0)
	if g.Lease.Worker != "ext/8080" || g.Lease.Model != "llama-3.2-1b" {
		t.Fatalf("lease %+v: want ext/8080 serving llama-3.2-1b", g.Lease)
	}
	// The alias waits in the model's one queue, behind nobody else's name.
	if g, err := s.Request(req("b", "llama-3.2-1b"), t0); g != nil || err != nil {
		t.Fatalf("second request: %v %v, want it to wait", g, err)
	}
	if ms := s.Models(t0); ms[0].Waiting != 1 || ms[0].Leases != 1 {
		t.Fatalf("Models = %+v, want one lease and one waiting under llama-3.2-1b", ms[0])
	}
	// A worker that stops reporting the alias stops answering to it.
	named.Aliases = nil
	s.UpdateHive("h1", []Worker{named, w("g/1", "other", 1)}, []HiveLease{{ID: g.Lease.ID, Worker: "ext/8080"}}, t0)
	if got := s.ModelName("Llama-3.2-1B-Instruct-Q4_K_M.gguf"); got != "" {
		t.Errorf("after the alias went: ModelName = %q, want \"\"", got)
	}
}
