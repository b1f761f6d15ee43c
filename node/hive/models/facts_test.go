package models

import (
	"encoding/binary"
	"errors"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/rbee/rbee/internal/engines"
	"github.com/rbee/rbee/node/hive/modelfile"
)

// tinyGGUF is the real tiny model of the shared engines.
func tinyGGUF(t *testing.T) string {
	_, tiny := engines.Find(t)
	return tiny
}

// writeHF writes a Hugging Face folder of one BF16 tensor of 4096 x 2048
// and a config of 16 layers, 8 KV heads of 64 dims.
func writeHF(t *testing.T) string {
	t.Helper()
	dir := t.TempDir()
	cfg := `{"model_type":"llama","num_hidden_layers":16,"num_attention_heads":32,"num_key_value_heads":8,"hidden_size":2048,"torch_dtype":"bfloat16"}`
	if err := os.WriteFile(filepath.Join(dir, "config.json"), []byte(cfg), 0o644); err != nil {
		t.Fatal(err)
	}
	hdr := `{"w":{"dtype":"BF16","shape":[4096,2048],"data_offsets":[0,16777216]}}`
	b := binary.LittleEndian.AppendUint64(nil, uint64(len(hdr)))
	path := filepath.Join(dir, "model.safetensors")
	if err := os.WriteFile(path, append(b, hdr...), 0o644); err != nil {
		t.Fatal(err)
	}
	if err := os.Truncate(path, int64(len(b)+len(hdr))+16777216); err != nil {
		t.Fatal(err)
	}
	return dir
}

func TestManager_VRAMFromModelFiles(t *testing.T) {
	tiny := tinyGGUF(t)
	dir := t.TempDir()
	bad := filepath.Join(dir, "bad.gguf")
	if err := os.WriteFile(bad, []byte("\x1b[31mnot a model\x1b[0m\n"), 0o644); err != nil {
		t.Fatal(err)
	}
	hf := writeHF(t)
	exe, _ := os.Executable()
	e := func(name, path string, vram uint64) Entry {
		return Entry{Name: name, Path: path, Engine: "fake", Slots: 2, Ctx: 1024, VRAMMB: vram}
	}
	// A GGUF engine's file must be a GGUF; one merely named *.gguf for an
	// engine of one's own is that engine's business.
	// (llama-server is not installed here, so the GGUF one is the file
	// that starts with GGUF's magic and breaks off.)
	broken := filepath.Join(dir, "broken.gguf")
	if err := os.WriteFile(broken, []byte("GGUF\x03\x00\x00\x00\x1b[31mtruncated"), 0o644); err != nil {
		t.Fatal(err)
	}
	m, _ := newManager(t, Config{}, e("tiny", tiny, 0), e("tiny-configured", tiny, 1000), e("bad", broken, 0), e("bad-own", bad, 0),
		e("hf", hf, 0), e("bin", exe, 0))

	c := catalog(m, "tiny")
	if c.Unavailable != "" || c.VRAMSource != SourceGGUF || c.Facts == nil || c.Facts.Architecture != "llama" ||
		c.Facts.Layers != 2 || c.VRAMMB != c.Facts.EstimateMB || c.VRAMMB == 0 {
		t.Errorf("tiny: %+v facts %+v", c, c.Facts)
	}
	if c := catalog(m, "tiny-configured"); c.VRAMSource != SourceConfigured || c.VRAMMB != 1000 || c.Facts == nil {
		t.Errorf("configured: %+v", c)
	}
	c = catalog(m, "bad")
	if !strings.Contains(c.Unavailable, "not a GGUF model file") || !strings.Contains(c.Unavailable, "unexpected EOF") ||
		strings.ContainsRune(c.Unavailable, 0x1b) {
		t.Errorf("bad: unavailable %q", c.Unavailable)
	}
	if c := catalog(m, "bad-own"); c.VRAMSource != SourceSize || c.Facts != nil {
		t.Errorf("a .gguf name for an engine of one's own was parsed: %+v", c)
	}
	// 16 MiB of weights; K and V x 16 layers x 8 heads x 64 dims x 2 bytes x 1024 tokens x 2 slots = 64 MiB.
	c = catalog(m, "hf")
	if c.VRAMSource != SourceSafetensors || c.VRAMMB != 80 || c.Facts == nil || c.Facts.Quantization != "BF16" ||
		c.Facts.KVCacheMB != 64 || c.Facts.WeightsMB != 16 {
		t.Errorf("hf: %+v facts %+v", c, c.Facts)
	}
	if c := catalog(m, "bin"); c.VRAMSource != SourceSize || c.Facts != nil || c.VRAMMB != EstimateVRAMMB(c.Bytes, 1024, 1) {
		t.Errorf("bin: %+v", c)
	}
	m.mu.Lock()
	for _, it := range m.items {
		if it.Name == "tiny" {
			it.learnedMB = 77
		}
	}
	m.mu.Unlock()
	if c := catalog(m, "tiny"); c.VRAMSource != SourceLearned || c.VRAMMB != 77 || c.Facts == nil {
		t.Errorf("learned: %+v", c)
	}
}

func TestReadFacts_WhichFilesAreRead(t *testing.T) {
	dir := t.TempDir()
	notGGUF := filepath.Join(dir, "model.bin")
	if err := os.WriteFile(notGGUF, []byte("weights"), 0o644); err != nil {
		t.Fatal(err)
	}
	magic := filepath.Join(dir, "model.bin2")
	if err := os.WriteFile(magic, []byte("GGUF\x03\x00\x00\x00"), 0o644); err != nil {
		t.Fatal(err)
	}
	cases := []struct {
		name    string
		e       Entry
		wantErr bool
	}{
		{"other engine's file", Entry{Path: notGGUF, Engine: "custom"}, false},
		{"llama-server's file must be GGUF", Entry{Path: notGGUF, Engine: EngineLlamaServer}, true},
		{"GGUF magic under another name", Entry{Path: magic, Engine: "custom"}, true},
		{"folder of another layout", Entry{Path: dir, Engine: EngineVLLM}, false},
		{"sim", Entry{Path: notGGUF, Engine: EngineSim}, false},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			tc.e.Ctx, tc.e.Slots = 1024, 1
			f, err := ReadFacts(tc.e)
			if tc.wantErr != (err != nil) || f != nil || tc.wantErr && !errors.Is(err, modelfile.ErrNotGGUF) {
				t.Fatalf("facts %v, err %v", f, err)
			}
		})
	}
}
