package modelfile

import (
	"bytes"
	"errors"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/rbee/rbee/internal/engines"
)

const gib = 1 << 30

// Published figures of the Q4_K_M files on Hugging Face
// (bartowski/Meta-Llama-3.1-8B-Instruct-GGUF: 4.92 GB;
// Qwen/Qwen2.5-7B-Instruct-GGUF: 4.68 GB) and of the models' parameter
// counts (8.03B; 7.62B).
var wellKnown = []struct {
	name         string
	shape        llamaShape
	fileBytes    float64
	params       float64
	kvBytes4096  uint64 // layers x KV heads x head dim x 2 (K, V) x 2 (f16) x 4096
	contextTrain int
}{
	{"Llama-3.1-8B Q4_K_M", llamaShape{arch: "llama", layers: 32, hidden: 4096, ffn: 14336, vocab: 128256,
		heads: 32, kvHeads: 8, ctxTrain: 131072, rope64: true}, 4.92e9, 8.03e9, 32 * 8 * 128 * 4 * 4096, 131072},
	{"Qwen2.5-7B Q4_K_M", llamaShape{arch: "qwen2", layers: 28, hidden: 3584, ffn: 18944, vocab: 152064,
		heads: 28, kvHeads: 4, ctxTrain: 32768, qkvBias: true}, 4.68e9, 7.62e9, 28 * 4 * 128 * 4 * 4096, 32768},
}

func within(got, want, tol float64) bool { return got >= want*(1-tol) && got <= want*(1+tol) }

func TestReadGGUF_WellKnownShapesMatchPublishedSizes(t *testing.T) {
	for _, tc := range wellKnown {
		t.Run(tc.name, func(t *testing.T) {
			path := writeShape(t, tc.shape)
			fi, err := os.Stat(path)
			if err != nil {
				t.Fatal(err)
			}
			if !within(float64(fi.Size()), tc.fileBytes, 0.02) {
				t.Fatalf("test file is %d bytes, published %.0f: the writer's layout is off", fi.Size(), tc.fileBytes)
			}
			f, err := ReadGGUF(path, Options{Ctx: 4096, Slots: 4})
			if err != nil {
				t.Fatal(err)
			}
			t.Logf("%s: %+v (VRAM %.2f GiB, file %.2f GiB)", tc.name, f, float64(f.VRAMBytes)/gib, float64(fi.Size())/gib)
			if f.Format != FormatGGUF || f.Architecture != tc.shape.arch || f.Quantization != "Q4_K_M" ||
				f.Layers != int(tc.shape.layers) || f.KVHeads != int(tc.shape.kvHeads) || f.HeadDim != 128 ||
				f.ContextLength != tc.contextTrain || !f.ChatTemplate {
				t.Errorf("facts %+v", f)
			}
			if !within(float64(f.Parameters), tc.params, 0.01) {
				t.Errorf("parameters %d, published %.0f", f.Parameters, tc.params)
			}
			// llama.cpp keeps the token embeddings in host memory, so the
			// weights on the GPU are the file less them: within 10%.
			if !within(float64(f.WeightBytes), tc.fileBytes, 0.10) || f.WeightBytes > uint64(fi.Size()) {
				t.Errorf("weights on GPU %d, file %d", f.WeightBytes, fi.Size())
			}
			if f.KVBytes != tc.kvBytes4096 {
				t.Errorf("KV cache %d, want %d", f.KVBytes, tc.kvBytes4096)
			}
			// Compute buffers of a few hundred MiB come on top, never GiBs.
			if low, high := f.WeightBytes+f.KVBytes, f.WeightBytes+f.KVBytes+gib; f.VRAMBytes < low || f.VRAMBytes > high {
				t.Errorf("VRAM %d outside [%d, %d]", f.VRAMBytes, low, high)
			}
		})
	}
}

func TestReadGGUF_ContextScalesKVCacheOnly(t *testing.T) {
	path := writeShape(t, wellKnown[0].shape)
	small, err := ReadGGUF(path, Options{Ctx: 4096, Slots: 1})
	if err != nil {
		t.Fatal(err)
	}
	big, err := ReadGGUF(path, Options{Ctx: 32768, Slots: 1})
	if err != nil {
		t.Fatal(err)
	}
	if big.KVBytes != 8*small.KVBytes || big.WeightBytes != small.WeightBytes || big.VRAMBytes <= small.VRAMBytes {
		t.Fatalf("ctx 4096: %+v; ctx 32768: %+v", small, big)
	}
}

func enginesDir(t *testing.T) string {
	_, tiny := engines.Find(t)
	return filepath.Dir(tiny)
}

func TestReadGGUF_RealTinyModel(t *testing.T) {
	path := filepath.Join(enginesDir(t), "tiny.gguf")
	f, err := ReadGGUF(path, Options{Ctx: 512, Slots: 1})
	if err != nil {
		t.Fatal(err)
	}
	t.Logf("tiny.gguf: %+v", f)
	if f.Architecture != "llama" || f.Layers != 2 || f.KVHeads != 4 || f.HeadDim != 16 || f.ContextLength != 512 ||
		f.Parameters == 0 || f.Quantization == "" || f.VRAMBytes < f.WeightBytes+f.KVBytes || f.WeightBytes == 0 {
		t.Fatalf("facts %+v", f)
	}
	// 2 layers x 4 KV heads x 16 dims x 2 (K, V) x 2 bytes x 512 tokens.
	if want := uint64(2 * 4 * 16 * 4 * 512); f.KVBytes != want {
		t.Errorf("KV cache %d, want %d", f.KVBytes, want)
	}
}

func TestReadGGUF_RefusesWhatIsNotAModel(t *testing.T) {
	dir := t.TempDir()
	good := ggufHeader(wellKnown[0].shape.q4KM())
	cases := []struct {
		name, content, want string
	}{
		{"empty", "", "read magic"},
		{"text", "this is not a model\n", "bad magic"},
		{"html error page", "<html>404</html>", "bad magic"},
		{"version 4", "GGUF\x04\x00\x00\x00" + strings.Repeat("\x00", 16), "unsupported version 4"},
		{"cut header", string(good[:len(good)/2]), "EOF"},
		{"header without data", string(good), "ends before its tensor data"},
		{"huge metadata count", "GGUF\x03\x00\x00\x00" + "\x00\x00\x00\x00\x00\x00\x00\x00" + "\xff\xff\xff\xff\xff\xff\xff\x7f", "header larger than"},
		{"huge string", "GGUF\x03\x00\x00\x00" + "\x00\x00\x00\x00\x00\x00\x00\x00" + "\x01\x00\x00\x00\x00\x00\x00\x00" +
			"\x01\x00\x00\x00\x00\x00\x00\x00k" + "\x08\x00\x00\x00" + "\xff\xff\xff\xff\xff\xff\x00\x00", "header larger than"},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			path := filepath.Join(dir, strings.ReplaceAll(tc.name, " ", "-")+".gguf")
			if err := os.WriteFile(path, []byte(tc.content), 0o644); err != nil {
				t.Fatal(err)
			}
			_, err := ReadGGUF(path, Options{Ctx: 4096, Slots: 1})
			if !errors.Is(err, ErrNotGGUF) || !strings.Contains(err.Error(), tc.want) {
				t.Fatalf("err %v, want ErrNotGGUF and %q", err, tc.want)
			}
		})
	}
}

// A header that claims 2^31 layers made gguf-parser-go allocate a slice
// per layer and loop over them (found by FuzzReadGGUF).
func TestReadGGUF_RefusesAbsurdLayerCount(t *testing.T) {
	s := llamaShape{arch: "llama", layers: 2, hidden: 256, ffn: 512, vocab: 256, heads: 4, kvHeads: 2, ctxTrain: 512}
	kvs, ts := s.q4KM()
	for i := range kvs {
		if kvs[i].key == "llama.block_count" {
			kvs[i].val = uint32(1 << 31)
		}
	}
	path := filepath.Join(t.TempDir(), "m.gguf")
	writeGGUF(t, path, kvs, ts)
	_, err := ReadGGUF(path, Options{Ctx: 512, Slots: 1})
	if !errors.Is(err, ErrNotGGUF) || !strings.Contains(err.Error(), "llama.block_count = 2147483648") {
		t.Fatalf("err %v", err)
	}
}

// gguf-parser-go opens every shard of a split model; each is checked.
func TestReadGGUF_ChecksEveryShard(t *testing.T) {
	dir := t.TempDir()
	first := filepath.Join(dir, "m-00001-of-00002.gguf")
	writeGGUF(t, first, []ggufKV{{"general.architecture", "llama"}}, nil)
	huge := "GGUF\x03\x00\x00\x00" + "\x00\x00\x00\x00\x00\x00\x00\x00" + "\xff\xff\xff\xff\xff\xff\xff\x7f"
	if err := os.WriteFile(filepath.Join(dir, "m-00002-of-00002.gguf"), []byte(huge), 0o644); err != nil {
		t.Fatal(err)
	}
	_, err := ReadGGUF(first, Options{Ctx: 512, Slots: 1})
	if !errors.Is(err, ErrNotGGUF) || !strings.Contains(err.Error(), "shard m-00002-of-00002.gguf: header larger than") {
		t.Fatalf("err %v", err)
	}
}

func TestGGUFHeaderLen_IsTheWriterLength(t *testing.T) {
	b := ggufHeader(wellKnown[1].shape.q4KM())
	n, err := ggufHeaderLen(bytes.NewReader(append(b, make([]byte, 100)...)))
	if err != nil || n != int64(len(b)) {
		t.Fatalf("header length %d, %v; want %d", n, err, len(b))
	}
}

// FuzzReadGGUF feeds mangled headers to the walker and then to
// gguf-parser-go: neither may panic, and a header the walker accepts is
// within MaxGGUFHeaderBytes.
func FuzzReadGGUF(f *testing.F) {
	small := llamaShape{arch: "llama", layers: 1, hidden: 256, ffn: 256, vocab: 256, heads: 4, kvHeads: 2, ctxTrain: 512}
	f.Add(ggufHeader(small.q4KM()))
	small.arch, small.qkvBias = "qwen2", true
	f.Add(ggufHeader(small.q4KM()))
	f.Add([]byte("GGUF\x03\x00\x00\x00"))
	dir := f.TempDir()
	f.Fuzz(func(t *testing.T, b []byte) {
		n, err := ggufHeaderLen(bytes.NewReader(b))
		if err == nil && (n > MaxGGUFHeaderBytes || n > int64(len(b))) {
			t.Fatalf("accepted a header of %d bytes from %d", n, len(b))
		}
		// A sparse MiB of tensor data after the input, so that a header
		// claiming little data gets past the size check to the estimate.
		path := filepath.Join(dir, "f.gguf")
		if err := os.WriteFile(path, b, 0o644); err != nil {
			t.Fatal(err)
		}
		if err := os.Truncate(path, int64(len(b))+1<<20); err != nil {
			t.Fatal(err)
		}
		_, _ = ReadGGUF(path, Options{Ctx: 4096, Slots: 4})
	})
}
