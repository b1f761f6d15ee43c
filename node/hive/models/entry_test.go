package models

import (
	"os"
	"path/filepath"
	"slices"
	"strings"
	"testing"
)

func TestParseModelFlag(t *testing.T) {
	dir := t.TempDir()
	gguf := filepath.Join(dir, "m.gguf")
	if err := os.WriteFile(gguf, []byte("GGUF"), 0o644); err != nil {
		t.Fatal(err)
	}
	hf := filepath.Join(dir, "hf")
	if err := os.Mkdir(hf, 0o755); err != nil {
		t.Fatal(err)
	}
	def := func(e Entry) Entry {
		if e.Slots == 0 {
			e.Slots = DefaultSlots
		}
		if e.Ctx == 0 {
			e.Ctx = DefaultCtx
		}
		return e
	}

	tests := []struct {
		name    string
		flag    string
		want    Entry
		wantErr string
	}{
		{name: "file defaults to llama-server", flag: "qwen=" + gguf, want: def(Entry{Name: "qwen", Path: gguf, Engine: EngineLlamaServer})},
		{name: "folder defaults to vllm", flag: "Qwen/Qwen2.5-7B=" + hf, want: def(Entry{Name: "Qwen/Qwen2.5-7B", Path: hf, Engine: EngineVLLM})},
		{name: "missing path defaults to llama-server", flag: "x=/nonexistent/x.gguf", want: def(Entry{Name: "x", Path: "/nonexistent/x.gguf", Engine: EngineLlamaServer})},
		{
			name: "all options",
			flag: "llama3.1:8b@q4_k=" + gguf + ",engine=vllm,slots=8,ctx=32768,vram=12000,load_ms=250,max_replicas=2,args=--flash-attn --rope-scaling 'linear, x'",
			want: Entry{Name: "llama3.1:8b@q4_k", Path: gguf, Engine: EngineVLLM, Slots: 8, Ctx: 32768, VRAMMB: 12000, LoadMS: 250, MaxReplicas: 2,
				Args: []string{"--flash-attn", "--rope-scaling", "linear, x"}},
		},
		{
			name: "args takes the rest, commas and all",
			flag: "m=" + gguf + ",args=--tensor-split 1,1 --override-kv a=int:1,slots=9",
			want: def(Entry{Name: "m", Path: gguf, Engine: EngineLlamaServer, Args: []string{"--tensor-split", "1,1", "--override-kv", "a=int:1,slots=9"}}),
		},
		{name: "sim needs no path", flag: "fake=,engine=sim,load_ms=0", want: def(Entry{Name: "fake", Engine: EngineSim})},
		{name: "sim path may be anything", flag: "fake=whatever,engine=sim", want: def(Entry{Name: "fake", Path: "whatever", Engine: EngineSim})},
		{name: "empty args", flag: "m=" + gguf + ",args=", want: def(Entry{Name: "m", Path: gguf, Engine: EngineLlamaServer})},

		{name: "no equals", flag: "qwen", wantErr: "want NAME=PATH"},
		{name: "empty name", flag: "=" + gguf, wantErr: "empty name"},
		{name: "bad name", flag: "my model=" + gguf, wantErr: `name may hold only letters, digits and - _ . : @ /, not ' '`},
		{name: "empty path", flag: "m=", wantErr: "empty path"},
		{name: "unknown option", flag: "m=x,gpu=1", wantErr: "option gpu: unknown option"},
		{name: "option without value", flag: "m=x,slots", wantErr: `option "slots": want key=value`},
		{name: "trailing comma", flag: "m=x,", wantErr: `option "": want key=value`},
		{name: "bad number", flag: "m=x,slots=four", wantErr: `option slots: bad number "four"`},
		{name: "zero slots", flag: "m=x,slots=0", wantErr: "option slots: 0 is below the minimum 1"},
		{name: "negative ctx", flag: "m=x,ctx=-1", wantErr: "option ctx: -1 is below the minimum 1"},
		{name: "negative load_ms", flag: "m=x,load_ms=-5", wantErr: "option load_ms"},
		{name: "bad vram", flag: "m=x,vram=12G", wantErr: "option vram"},
		{name: "zero vram", flag: "m=x,vram=0", wantErr: "option vram: must be at least 1 MiB"},
		{name: "bad max_replicas", flag: "m=x,max_replicas=many", wantErr: "option max_replicas"},
		{name: "duplicate key", flag: "m=x,ctx=1,slots=2,ctx=3", wantErr: `duplicate option "ctx"`},
		{name: "empty engine", flag: "m=x,engine=", wantErr: "option engine: empty engine name"},
		{name: "bad args", flag: `m=x,args=--a "b`, wantErr: "option args: split words: unterminated double quote"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			got, err := ParseModelFlag(tt.flag)
			if tt.wantErr != "" {
				if err == nil || !strings.Contains(err.Error(), tt.wantErr) {
					t.Fatalf("ParseModelFlag(%q) error = %v, want one containing %q", tt.flag, err, tt.wantErr)
				}
				return
			}
			if err != nil {
				t.Fatalf("ParseModelFlag(%q): %v", tt.flag, err)
			}
			if !entryEqual(got, tt.want) {
				t.Errorf("ParseModelFlag(%q)\n got %+v\nwant %+v", tt.flag, got, tt.want)
			}
		})
	}
}

func entryEqual(a, b Entry) bool {
	args := slices.Equal(a.Args, b.Args)
	a.Args, b.Args = nil, nil
	return args && a.Name == b.Name && a.Path == b.Path && a.Engine == b.Engine && a.Slots == b.Slots &&
		a.Ctx == b.Ctx && a.VRAMMB == b.VRAMMB && a.LoadMS == b.LoadMS && a.MaxReplicas == b.MaxReplicas
}

// writeTree creates files (with content) and folders (names ending in "/")
// under dir.
func writeTree(t *testing.T, dir string, files map[string]string) {
	t.Helper()
	for name, content := range files {
		path := filepath.Join(dir, filepath.FromSlash(name))
		if strings.HasSuffix(name, "/") {
			if err := os.MkdirAll(path, 0o755); err != nil {
				t.Fatal(err)
			}
			continue
		}
		if err := os.MkdirAll(filepath.Dir(path), 0o755); err != nil {
			t.Fatal(err)
		}
		if err := os.WriteFile(path, []byte(content), 0o644); err != nil {
			t.Fatal(err)
		}
	}
}

func TestScanModelsDir(t *testing.T) {
	dir := t.TempDir()
	writeTree(t, dir, map[string]string{
		"a.gguf":                       "GGUF",
		"notes.txt":                    "not a model",
		"hf/config.json":               "{}",
		"hf/model.safetensors":         "weights",
		"empty/":                       "",
		"noweights/config.json":        "{}",
		"noconfig/model.safetensors":   "weights",
		"deep/inner/config.json":       "{}",
		"deep/inner/model.safetensors": "weights",
		"deep/b.gguf":                  "GGUF",
		"dir.gguf/":                    "",
	})
	// A link to a model counts (the Hugging Face cache is all links); a
	// dangling one does not.
	if err := os.Symlink(filepath.Join(dir, "a.gguf"), filepath.Join(dir, "linked.gguf")); err != nil {
		t.Fatal(err)
	}
	if err := os.Symlink(filepath.Join(dir, "gone.gguf"), filepath.Join(dir, "dangling.gguf")); err != nil {
		t.Fatal(err)
	}

	got, err := ScanModelsDir(dir)
	if err != nil {
		t.Fatal(err)
	}
	want := []Entry{
		{Name: "a", Path: filepath.Join(dir, "a.gguf"), Engine: EngineLlamaServer, Slots: DefaultSlots, Ctx: DefaultCtx},
		{Name: "hf", Path: filepath.Join(dir, "hf"), Engine: EngineVLLM, Slots: DefaultSlots, Ctx: DefaultCtx},
		{Name: "linked", Path: filepath.Join(dir, "linked.gguf"), Engine: EngineLlamaServer, Slots: DefaultSlots, Ctx: DefaultCtx},
	}
	if len(got) != len(want) {
		t.Fatalf("ScanModelsDir = %+v\nwant %+v", got, want)
	}
	for i := range want {
		if !entryEqual(got[i], want[i]) {
			t.Errorf("entry %d = %+v, want %+v", i, got[i], want[i])
		}
	}
}

func TestScanModelsDir_MissingDir(t *testing.T) {
	_, err := ScanModelsDir(filepath.Join(t.TempDir(), "nope"))
	if err == nil || !strings.Contains(err.Error(), "scan models dir") {
		t.Fatalf("error = %v, want a scan models dir error", err)
	}
}

func TestSizeOnDisk(t *testing.T) {
	dir := t.TempDir()
	writeTree(t, dir, map[string]string{
		"one.gguf":               "12345",
		"hf/config.json":         "12",
		"hf/a.safetensors":       "1234567890",
		"hf/sub/tokenizer.model": "123",
		"blobs/big":              "123456789012345678901234567890",
	})
	// A snapshot's files are links to blobs; they count at the blob's size.
	if err := os.Symlink(filepath.Join(dir, "blobs", "big"), filepath.Join(dir, "hf", "b.safetensors")); err != nil {
		t.Fatal(err)
	}
	tests := []struct {
		path    string
		want    int64
		wantErr bool
	}{
		{path: "one.gguf", want: 5},
		{path: "hf", want: 2 + 10 + 3 + 30},
		{path: "missing", wantErr: true},
	}
	for _, tt := range tests {
		t.Run(tt.path, func(t *testing.T) {
			got, err := SizeOnDisk(filepath.Join(dir, tt.path))
			if (err != nil) != tt.wantErr {
				t.Fatalf("SizeOnDisk error = %v, wantErr %v", err, tt.wantErr)
			}
			if got != tt.want {
				t.Errorf("SizeOnDisk = %d, want %d", got, tt.want)
			}
		})
	}
}

func TestEstimateVRAMMB(t *testing.T) {
	const gib = 1 << 30
	tests := []struct {
		name       string
		bytes      int64
		ctx, slots int
		want       uint64
	}{
		{name: "nothing", want: 0},
		{name: "one byte rounds up", bytes: 1, want: 1},
		{name: "1 GiB of weights", bytes: gib, want: 1229}, // 1228.8
		{name: "KV only: 4096 tokens x 128 KiB", ctx: 4096, slots: 1, want: 512},
		{name: "4 GiB Q4 8B at defaults", bytes: 4 * gib, ctx: DefaultCtx, slots: DefaultSlots, want: 4916 + 2048}, // 4915.2 + 2048
		{name: "16 GiB fp16 8B, 32k ctx, 1 slot", bytes: 16 * gib, ctx: 32768, slots: 1, want: 19661 + 4096},       // 19660.8 + 4096
		{name: "negatives count as zero", bytes: -5, ctx: -1, slots: 4, want: 0},
		{name: "overflow saturates", bytes: 1, ctx: 1 << 62, slots: 1 << 62, want: ^uint64(0) >> 20},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			if got := EstimateVRAMMB(tt.bytes, tt.ctx, tt.slots); got != tt.want {
				t.Errorf("EstimateVRAMMB(%d, %d, %d) = %d, want %d", tt.bytes, tt.ctx, tt.slots, got, tt.want)
			}
		})
	}
}

func TestEntryCheck(t *testing.T) {
	dir := t.TempDir()
	gguf := filepath.Join(dir, "m.gguf")
	writeTree(t, dir, map[string]string{"m.gguf": "GGUF"})
	engines := BuiltinEngines()
	engines[EngineLlamaServer].Binary = "/usr/bin/llama-server"
	engines[EngineVLLM].Missing = "vllm: executable file not found in $PATH"
	engines[EngineSim].Binary = "/bin/rbee"

	missing := filepath.Join(dir, "gone.gguf")
	tests := []struct {
		name  string
		entry Entry
		want  string
	}{
		{name: "can start", entry: Entry{Name: "m", Path: gguf, Engine: EngineLlamaServer}},
		{name: "path missing", entry: Entry{Name: "m", Path: missing, Engine: EngineLlamaServer}, want: "model path " + missing + " does not exist"},
		{name: "sim needs no path", entry: Entry{Name: "m", Path: missing, Engine: EngineSim}},
		{name: "unknown engine", entry: Entry{Name: "m", Path: gguf, Engine: "x"}, want: `unknown engine "x" (known: llama-server, ollama, sglang, sim, vllm)`},
		{name: "engine missing", entry: Entry{Name: "m", Path: gguf, Engine: EngineVLLM}, want: "vllm: executable file not found in $PATH"},
		{name: "path is reported before the engine", entry: Entry{Name: "m", Path: missing, Engine: "x"}, want: "model path " + missing + " does not exist"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			if got := tt.entry.Check(engines); got != tt.want {
				t.Errorf("Check = %q, want %q", got, tt.want)
			}
		})
	}
}
