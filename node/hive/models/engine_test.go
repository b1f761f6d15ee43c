package models

import (
	"os"
	"path/filepath"
	"slices"
	"strings"
	"testing"
)

func TestBuiltinEngines_FreshCopies(t *testing.T) {
	a := BuiltinEngines()
	a[EngineLlamaServer].Words[0] = "/changed"
	delete(a, EngineVLLM)
	b := BuiltinEngines()
	if got := b[EngineLlamaServer].Words[0]; got != "llama-server" {
		t.Errorf("a caller's edit leaked into the next BuiltinEngines: Words[0] = %q", got)
	}
	if b[EngineVLLM] == nil || !b[EngineSim].Sim || !b[EngineSim].Builtin {
		t.Errorf("built-ins not fresh: %+v", b)
	}
}

func TestParseEngineFlag(t *testing.T) {
	tests := []struct {
		name      string
		flag      string
		engine    string // which engine to inspect afterwards
		wantWords []string
		builtin   bool
		sim       bool
		wantErr   string // substring; "" when none is expected
	}{
		{
			name: "binary override keeps the template", flag: "llama-server=/opt/llama/bin/llama-server", engine: EngineLlamaServer,
			wantWords: strings.Fields("/opt/llama/bin/llama-server -m {path} --alias {name} --host {host} --port {port} -np {slots} -c {ctx_total} -ngl 999 --tensor-split {tensor_split}"),
			builtin:   true,
		},
		{
			name: "binary override of sim keeps Sim", flag: "sim=/usr/local/bin/rbee", engine: EngineSim,
			wantWords: strings.Fields("/usr/local/bin/rbee worker simulate --model {name} --host {host} --port {port} --slots {slots}"),
			builtin:   true, sim: true,
		},
		{
			name: "new engine from a template", flag: "mlx=mlx_lm.server --model {path} --port={port} --max-tokens {ctx}", engine: "mlx",
			wantWords: strings.Fields("mlx_lm.server --model {path} --port={port} --max-tokens {ctx}"),
		},
		{
			name: "JSON in a template reads as a placeholder", flag: `mlx=mlx_lm.server --model {path} --chat-template-args '{"a": 1}'`,
			wantErr: `unknown placeholder {"a": 1}`,
		},
		{
			name: "new engine with quoted words", flag: `tgi=text-generation-launcher --model-id {path} --port {port} --hostname '{host}' --extra "a b"`, engine: "tgi",
			wantWords: []string{"text-generation-launcher", "--model-id", "{path}", "--port", "{port}", "--hostname", "{host}", "--extra", "a b"},
		},
		{
			name: "template replaces a built-in's", flag: "vllm=vllm serve {path} --port {port} --max-model-len {ctx}", engine: EngineVLLM,
			wantWords: strings.Fields("vllm serve {path} --port {port} --max-model-len {ctx}"),
			builtin:   true,
		},
		{
			name: "a brace alone makes a template", flag: "one=serve-{name}", engine: "one",
			wantErr: `program "serve-{name}" may not hold a placeholder`,
		},
		{
			name: "unknown placeholder quotes the template", flag: "x=serve {model}",
			wantErr: `engine "x": unknown placeholder {model} in "serve {model}" (known: {path} {port} {slots} {ctx} {ctx_total} {name} {host} {mem_fraction} {gpus} {tp} {tensor_split})`,
		},
		{
			name: "a template without {port} is refused", flag: "x=serve {path} --listen 127.0.0.1:8000",
			wantErr: `engine "x": template "serve {path} --listen 127.0.0.1:8000" has no {port}`,
		},
		{
			name: "a built-in's template without {port} is refused", flag: "vllm=vllm serve {path}",
			wantErr: `engine "vllm": template "vllm serve {path}" has no {port}`,
		},
		{
			name: "Ollama is told its port by its environment", flag: "ollama=ollama serve --verbose", engine: EngineOllama,
			wantWords: strings.Fields("ollama serve --verbose"), builtin: true,
		},
		{
			name: "{port} in the program does not count", flag: "x=srv",
			wantErr: `not a built-in engine`,
		},
		{name: "empty placeholder", flag: "x=serve {}", wantErr: "unknown placeholder {}"},
		{name: "unclosed brace", flag: "x=serve --port={port", wantErr: "unbalanced braces"},
		{name: "stray closing brace", flag: "x=serve port}", wantErr: "unbalanced braces"},
		{name: "nested braces", flag: "x=serve {{port}}", wantErr: "unbalanced braces"},
		{name: "binary for an unknown engine", flag: "tgi=/usr/bin/tgi", wantErr: `engine "tgi": not a built-in engine (known: llama-server, ollama, sglang, sim, vllm)`},
		{name: "empty name", flag: "=serve {path}", wantErr: "empty name"},
		{name: "bad name", flag: "a b=serve {path}", wantErr: "name may hold only"},
		{name: "empty value", flag: "vllm=", wantErr: "empty binary or template"},
		{name: "blank template", flag: "x=  ", wantErr: "empty binary or template"},
		{name: "no equals", flag: "vllm", wantErr: "want NAME=BINARY or NAME=TEMPLATE"},
		{name: "unterminated quote", flag: "x=serve '{path}", wantErr: "unterminated single quote"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			engines := BuiltinEngines()
			err := ParseEngineFlag(tt.flag, engines)
			if tt.wantErr != "" {
				if err == nil || !strings.Contains(err.Error(), tt.wantErr) {
					t.Fatalf("ParseEngineFlag(%q) error = %v, want one containing %q", tt.flag, err, tt.wantErr)
				}
				return
			}
			if err != nil {
				t.Fatalf("ParseEngineFlag(%q): %v", tt.flag, err)
			}
			e := engines[tt.engine]
			if e == nil {
				t.Fatalf("engine %q not defined", tt.engine)
			}
			if e.Name != tt.engine || !slices.Equal(e.Words, tt.wantWords) || e.Builtin != tt.builtin || e.Sim != tt.sim {
				t.Errorf("engine = {Name:%q Words:%q Builtin:%v Sim:%v}, want {Name:%q Words:%q Builtin:%v Sim:%v}",
					e.Name, e.Words, e.Builtin, e.Sim, tt.engine, tt.wantWords, tt.builtin, tt.sim)
			}
		})
	}
}

func TestParseEngineFlag_OverrideDoesNotTouchOtherMaps(t *testing.T) {
	engines := BuiltinEngines()
	before := engines[EngineLlamaServer]
	if err := ParseEngineFlag("llama-server=/x/llama-server", engines); err != nil {
		t.Fatal(err)
	}
	if before.Words[0] != "llama-server" {
		t.Errorf("override edited the old engine in place: %q", before.Words[0])
	}
}

// fakeBinary writes an executable file named name into a fresh folder.
func fakeBinary(t *testing.T, name string) string {
	t.Helper()
	path := filepath.Join(t.TempDir(), name)
	if err := os.WriteFile(path, []byte("#!/bin/sh\nexit 0\n"), 0o755); err != nil {
		t.Fatal(err)
	}
	return path
}

func TestResolveEngines(t *testing.T) {
	llama := fakeBinary(t, "llama-server")
	t.Setenv("PATH", filepath.Dir(llama)) // vllm is not there

	tests := []struct {
		name        string
		override    string // an --engine flag applied first, if any
		rbee        string
		engine      string
		wantBinary  string
		wantMissing string
	}{
		{name: "found on PATH", engine: EngineLlamaServer, rbee: "/bin/rbee", wantBinary: llama},
		{name: "not on PATH", engine: EngineVLLM, rbee: "/bin/rbee", wantMissing: "vllm: executable file not found in $PATH"},
		{name: "sim runs rbee itself", engine: EngineSim, rbee: "/bin/rbee", wantBinary: "/bin/rbee"},
		{name: "sim without rbee binary", engine: EngineSim, rbee: "", wantMissing: "rbee: own binary unknown"},
		{name: "sim pointed elsewhere is looked up", override: "sim=" + llama, engine: EngineSim, rbee: "/bin/rbee", wantBinary: llama},
		{name: "absolute path missing", override: "vllm=/nonexistent/vllm", engine: EngineVLLM, wantMissing: "/nonexistent/vllm: stat /nonexistent/vllm: no such file or directory"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			engines := BuiltinEngines()
			if tt.override != "" {
				if err := ParseEngineFlag(tt.override, engines); err != nil {
					t.Fatal(err)
				}
			}
			ResolveEngines(engines, tt.rbee)
			e := engines[tt.engine]
			if e.Binary != tt.wantBinary || e.Missing != tt.wantMissing {
				t.Errorf("Binary, Missing = %q, %q; want %q, %q", e.Binary, e.Missing, tt.wantBinary, tt.wantMissing)
			}
		})
	}
}

func TestEngineArgv(t *testing.T) {
	vars := map[string]string{
		"path": "/models/my model.gguf", "port": "9001", "slots": "4", "ctx": "8192",
		"name": "qwen{port}", "host": "127.0.0.1", "ctx_total": "32768", "mem_fraction": "0.42", "gpus": "1,2", "tp": "2",
		"tensor_split": "1,1",
	}
	tests := []struct {
		name    string
		engine  *Engine
		vars    map[string]string
		want    []string
		wantErr string
	}{
		{
			name:   "llama-server",
			engine: &Engine{Name: "llama-server", Words: BuiltinEngines()[EngineLlamaServer].Words, Binary: "/usr/bin/llama-server"},
			vars:   vars,
			want: []string{"/usr/bin/llama-server", "-m", "/models/my model.gguf", "--alias", "qwen{port}", "--host", "127.0.0.1",
				"--port", "9001", "-np", "4", "-c", "32768", "-ngl", "999", "--tensor-split", "1,1"},
		},
		{
			name:   "values are not re-expanded",
			engine: &Engine{Name: "vllm", Words: BuiltinEngines()[EngineVLLM].Words, Binary: "/venv/bin/vllm"},
			vars:   vars,
			want: []string{"/venv/bin/vllm", "serve", "/models/my model.gguf", "--host", "127.0.0.1", "--port", "9001",
				"--served-model-name", "qwen{port}", "--max-num-seqs", "4", "--max-model-len", "8192",
				"--gpu-memory-utilization", "0.42", "--tensor-parallel-size", "2"},
		},
		{
			name:   "sglang",
			engine: &Engine{Name: "sglang", Words: BuiltinEngines()[EngineSGLang].Words, Binary: "/usr/bin/python3"},
			vars:   vars,
			want: []string{"/usr/bin/python3", "-m", "sglang.launch_server", "--model-path", "/models/my model.gguf", "--host", "127.0.0.1",
				"--port", "9001", "--served-model-name", "qwen{port}", "--mem-fraction-static", "0.42", "--max-running-requests", "4",
				"--context-length", "8192", "--tp", "2"},
		},
		{
			name:   "several placeholders in one word",
			engine: &Engine{Name: "x", Words: []string{"srv", "--listen={host}:{port}", "plain"}, Binary: "/bin/srv"},
			vars:   vars,
			want:   []string{"/bin/srv", "--listen=127.0.0.1:9001", "plain"},
		},
		{
			name:    "placeholder without a value",
			engine:  &Engine{Name: "x", Words: []string{"srv", "-c", "{ctx}"}, Binary: "/bin/srv"},
			vars:    map[string]string{"port": "1"},
			wantErr: "no value for placeholder {ctx}",
		},
		{
			name:    "missing engine",
			engine:  &Engine{Name: "vllm", Words: []string{"vllm"}, Missing: "vllm: executable file not found in $PATH"},
			wantErr: `engine "vllm" cannot run: vllm: executable file not found in $PATH`,
		},
		{
			name:    "not resolved",
			engine:  &Engine{Name: "x", Words: []string{"srv"}},
			wantErr: "binary not resolved",
		},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			got, err := tt.engine.Argv(tt.vars)
			if tt.wantErr != "" {
				if err == nil || !strings.Contains(err.Error(), tt.wantErr) {
					t.Fatalf("Argv error = %v, want one containing %q", err, tt.wantErr)
				}
				return
			}
			if err != nil {
				t.Fatalf("Argv: %v", err)
			}
			if !slices.Equal(got, tt.want) {
				t.Errorf("Argv = %q\nwant   %q", got, tt.want)
			}
		})
	}
}

func TestVars(t *testing.T) {
	e := Entry{Name: "qwen", Path: "/m/q.gguf", Slots: 4, Ctx: 8192}
	tests := []struct {
		name string
		p    Placement
		want map[string]string // the placement's placeholders
	}{
		{name: "no GPU known: the engines' own default",
			p:    Placement{VRAMMB: 8000},
			want: map[string]string{"mem_fraction": "0.90", "gpus": "", "tp": "1", "tensor_split": "1"}},
		{name: "one GPU: budget over total, rounded up",
			p:    Placement{GPUs: []int{3}, VRAMMB: 10000, TotalMB: []uint64{24576}},
			want: map[string]string{"mem_fraction": "0.41", "gpus": "3", "tp": "1", "tensor_split": "1"}},
		{name: "a GPU of unknown size",
			p:    Placement{GPUs: []int{0}, VRAMMB: 10000, TotalMB: []uint64{0}},
			want: map[string]string{"mem_fraction": "0.90", "gpus": "0", "tp": "1", "tensor_split": "1"}},
		{name: "two GPUs share it evenly",
			p:    Placement{GPUs: []int{1, 2}, VRAMMB: 40000, TotalMB: []uint64{24576, 24576}},
			want: map[string]string{"mem_fraction": "0.82", "gpus": "1,2", "tp": "2", "tensor_split": "1,1"}},
		{name: "mixed sizes: the smallest GPU's fraction",
			p:    Placement{GPUs: []int{0, 1}, VRAMMB: 30000, TotalMB: []uint64{81920, 24576}},
			want: map[string]string{"mem_fraction": "0.62", "gpus": "0,1", "tp": "2", "tensor_split": "1,1"}},
		{name: "never the whole GPU",
			p:    Placement{GPUs: []int{0}, VRAMMB: 24576, TotalMB: []uint64{24576}},
			want: map[string]string{"mem_fraction": "0.99"}},
		{name: "never nothing",
			p:    Placement{GPUs: []int{0}, VRAMMB: 1, TotalMB: []uint64{81920}},
			want: map[string]string{"mem_fraction": "0.01"}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			got := Vars(e, "9001", tt.p)
			for k, v := range tt.want {
				if got[k] != v {
					t.Errorf("{%s} = %q, want %q", k, got[k], v)
				}
			}
			fixed := map[string]string{"path": "/m/q.gguf", "port": "9001", "slots": "4", "ctx": "8192", "ctx_total": "32768",
				"name": "qwen", "host": "127.0.0.1"}
			for k, v := range fixed {
				if got[k] != v {
					t.Errorf("{%s} = %q, want %q", k, got[k], v)
				}
			}
			for _, p := range Placeholders {
				if _, ok := got[p]; !ok {
					t.Errorf("no value for {%s}", p)
				}
			}
		})
	}
}

func TestEngine_MultiGPU(t *testing.T) {
	b := BuiltinEngines()
	for name, want := range map[string]bool{EngineLlamaServer: true, EngineVLLM: true, EngineSGLang: true, EngineSim: true, EngineOllama: false} {
		if got := b[name].MultiGPU(); got != want {
			t.Errorf("%s: MultiGPU() = %v, want %v", name, got, want)
		}
	}
	for tmpl, want := range map[string]bool{
		"x=srv --port {port} --devices {gpus}": true,
		"x=srv --port {port} -tp={tp}":         true,
		"x=srv --port {port} -c {ctx}":         false,
	} {
		engines := BuiltinEngines()
		if err := ParseEngineFlag(tmpl, engines); err != nil {
			t.Fatal(err)
		}
		if got := engines["x"].MultiGPU(); got != want {
			t.Errorf("%s: MultiGPU() = %v, want %v", tmpl, got, want)
		}
	}
}
